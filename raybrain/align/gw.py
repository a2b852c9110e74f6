"""Gromov-Wasserstein (GW) discrepancy between two intra-domain cost matrices (torch + POT).

GW compares the *structure* of two sets: with ``C1`` (n, n) the dissimilarities inside
one set and ``C2`` (m, m) inside the other, and a coupling ``T`` with marginals ``p, q``,

    GW(C1, C2) = min_T sum_{i,j,k,l} (C1[i, k] - C2[j, l])^2 T[i, j] T[k, l]

(square loss). No correspondence between the sets is needed: ``T`` is a soft matching
that preserves pairwise dissimilarities. The brain-in-the-loop method minimises it
between the brain's and the model's concept graphs (its ``L2``) and reports it between
their RDMs (lower is better; the paper's r = -0.93 with downstream accuracy).

Costs are normalised by their largest entry (max 1) before anything else
(:func:`normalise_cost`): GW then compares shapes, not scales, and small entropic
epsilons do not underflow (POT's entropic GW on unnormalised costs returns ~1e-136).

Two differentiable routes (:func:`gw_loss`):

``"envelope"`` (default)
    The plan is computed under ``no_grad`` by POT (``solver="exact"``: the
    conditional-gradient ``ot.gromov.gromov_wasserstein``, O(n^3) per iteration in numpy;
    ``solver="entropic"``: ``ot.gromov.entropic_gromov_wasserstein`` at a small
    ``epsilon``), then the value ``ot.gromov.gwloss`` at that plan is evaluated on the
    differentiable costs. By the envelope theorem this is the gradient of the optimum
    (``dGW/dC1 = 2 (C1 * p p^T - T C2 T^T)`` for the exact plan), which is what POT's
    ``gromov_wasserstein2`` attaches too. Memory is O(n^2); time is the solver's.
    ``bench/gw_step.py`` at n = 256 (one thread, forward + backward): the same cost as
    POT's ``gromov_wasserstein2`` (ratio 0.95-1.05; 0.45-1.06 s by problem, ~30 MB);
    started from a known pairing (``G0 = I / n``) on a model whose structure already
    resembles the brain's, 0.13 s (0.12x), but 1.4x slower from an unrelated structure.
``"entropic"``
    POT's ``entropic_gromov_wasserstein2`` in the torch backend: autograd unrolls every
    outer (projected-gradient) and inner (Sinkhorn) iteration, so memory grows with
    ``max_iter * inner_iter * n * m``. At n = 256, epsilon 0.01 and POT's default 1000
    inner iterations this took 2.6 s forward and ~2 GB; with 20 x 100 iterations
    (``bench/gw_step.py``) 3.1-3.5 s forward + backward and ~110 MB, 3-7x the exact
    route. Use it on small problems or with few iterations. It gives the gradient of the
    entropic value, including how the plan moves.

torch and POT are imported inside the functions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

__all__ = ["GW_MODES", "GW_SOLVERS", "GW_DISTANCE_SOLVERS", "normalise_cost", "gw_plan",
           "gw_loss", "gw_distance"]

GW_MODES = ("envelope", "entropic")
GW_SOLVERS = ("exact", "entropic")
#: Solvers of :func:`gw_distance`: also ``"best"``, both solvers and the lower value kept.
GW_DISTANCE_SOLVERS = ("exact", "entropic", "best")


def _check_square(C, name: str, fn: str) -> None:
    shape = tuple(C.shape) if hasattr(C, "shape") else None
    if shape is None or len(shape) != 2 or shape[0] != shape[1] or shape[0] < 2:
        raise SpecError(f"{fn}: {name} must be a square cost matrix (n, n) with n >= 2, got "
                        f"shape {shape}")


def normalise_cost(C):
    """``C / max(C)``: a cost matrix scaled to a largest entry of 1.

    Parameters
    ----------
    C : torch.Tensor or np.ndarray, shape (n, m)
        Non-negative, finite, not all zero. A tensor keeps its graph (the max is
        differentiated too).

    Returns
    -------
    Same type as ``C``, shape (n, m), entries in [0, 1].

    Raises
    ------
    SpecError
        NaN/inf, a negative entry, or an all-zero matrix (no structure to compare).
    """
    import numpy as np

    is_tensor = hasattr(C, "detach")
    vals = np.asarray(C.detach().cpu() if is_tensor else C, dtype=np.float64)
    if not np.isfinite(vals).all():
        raise SpecError("normalise_cost: cost matrix must be finite, got NaN/inf entries")
    if vals.size == 0 or vals.min() < -1e-12:
        got = vals.min() if vals.size else "an empty matrix"
        raise SpecError(f"normalise_cost: cost matrix must be non-empty and >= 0, got {got}")
    top = vals.max()
    if top <= 0:
        raise SpecError("normalise_cost: cost matrix is all zero; expected some positive "
                        "dissimilarity (every item identical?)")
    return C / C.max() if is_tensor else C / top


def _marginals(p, q, n: int, m: int, like, fn: str):
    import torch

    p = torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device) if p is None \
        else torch.as_tensor(p, dtype=like.dtype, device=like.device)
    q = torch.full((m,), 1.0 / m, dtype=like.dtype, device=like.device) if q is None \
        else torch.as_tensor(q, dtype=like.dtype, device=like.device)
    if p.shape != (n,) or q.shape != (m,):
        raise SpecError(f"{fn}: marginals must have shapes ({n},) and ({m},), got "
                        f"{tuple(p.shape)} and {tuple(q.shape)}")
    return p, q


def _check_solver(solver: str, epsilon: float, fn: str) -> None:
    if solver not in GW_SOLVERS:
        raise SpecError(f"{fn}: solver must be one of {list(GW_SOLVERS)}, got {solver!r}")
    if solver == "entropic" and not (math.isfinite(float(epsilon)) and epsilon > 0):
        raise SpecError(f"{fn}: epsilon must be finite and > 0, got {epsilon!r}")


def gw_plan(C1, C2, p=None, q=None, solver: str = "exact", epsilon: float = 5e-3,
            max_iter: int | None = None, G0=None) -> np.ndarray:
    """An optimal GW coupling between two cost matrices, computed by POT without gradient.

    Parameters
    ----------
    C1, C2 : torch.Tensor or np.ndarray, shapes (n, n) and (m, m)
        Used as given (normalise them first, see :func:`normalise_cost`).
    p, q : array_like, shapes (n,) and (m,), optional
        Marginals; uniform when None.
    solver : {"exact", "entropic"}
        ``"exact"``: ``ot.gromov.gromov_wasserstein`` (conditional gradient with exact OT
        steps; a local optimum from ``G0``). ``"entropic"``:
        ``ot.gromov.entropic_gromov_wasserstein`` (projected gradient, 100 Sinkhorn
        iterations per step) at ``epsilon``; on normalised costs ``epsilon <= 0.005``
        recovers permutations that larger values blur (DESIGN.md section 7).
    epsilon : float
        Entropic regularisation (``solver="entropic"`` only).
    max_iter : int, optional
        Outer iterations of the solver (None: 1000 for ``"exact"``, which usually stops
        far earlier at its tolerance, and 100 for ``"entropic"``, whose steps cost 100
        Sinkhorn iterations each; at n = 64 that is ~0.1 s and gave the same matching as
        1000 x 200).
    G0 : array_like, shape (n, m), optional
        Initial coupling (``solver="exact"``; e.g. a known pairing / n); ``p q^T`` when
        None.

    Returns
    -------
    np.ndarray of float64, shape (n, m)
        Non-negative, row sums ``p``, column sums ``q`` (up to the solver's tolerance).
    """
    import numpy as np
    import ot

    fn = "gw_plan"
    _check_square(C1, "C1", fn)
    _check_square(C2, "C2", fn)
    _check_solver(solver, epsilon, fn)

    def _np(x):
        return None if x is None else np.asarray(
            x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)

    c1, c2 = _np(C1), _np(C2)
    n, m = c1.shape[0], c2.shape[0]
    pp = ot.unif(n) if p is None else _np(p)
    qq = ot.unif(m) if q is None else _np(q)
    if pp.shape != (n,) or qq.shape != (m,):
        raise SpecError(f"{fn}: marginals must have shapes ({n},) and ({m},), got "
                        f"{pp.shape} and {qq.shape}")
    if solver == "exact":
        g0 = _np(G0)
        if g0 is not None and g0.shape != (n, m):
            raise SpecError(f"{fn}: G0 must have shape ({n}, {m}), got {g0.shape}")
        return ot.gromov.gromov_wasserstein(c1, c2, pp, qq, "square_loss", G0=g0,
                                            max_iter=int(max_iter or 1000))
    # warn=False: a Sinkhorn step that has not met POT's tight default tolerance still
    # gives a coupling (marginals within ~0.5%, see the tests)
    return ot.gromov.entropic_gromov_wasserstein(
        c1, c2, pp, qq, "square_loss", epsilon=float(epsilon),
        max_iter=int(max_iter or 100), tol=1e-7, numItermax=100, warn=False)


def gw_loss(C1: torch.Tensor, C2: torch.Tensor, p=None, q=None, mode: str = "envelope",
            solver: str = "exact", epsilon: float = 5e-3, max_iter: int | None = None,
            inner_iter: int = 100, normalise: bool = True, G0=None) -> torch.Tensor:
    """Differentiable GW discrepancy between two cost matrices (the GW term of L2).

    Parameters
    ----------
    C1, C2 : torch.Tensor, shapes (n, n) and (m, m)
        Intra-domain dissimilarities (e.g. cosine distances of the model's embeddings and
        the brain's RDM); non-negative. Gradients flow into whichever requires them.
    p, q : array_like, shapes (n,) and (m,), optional
        Marginals; uniform when None.
    mode : {"envelope", "entropic"}
        See the module docstring: plan without gradient + ``gwloss`` (cheap), or POT's
        fully unrolled ``entropic_gromov_wasserstein2`` (memory grows with iterations).
    solver : {"exact", "entropic"}
        Plan solver of the envelope route (ignored by ``mode="entropic"``).
    epsilon : float
        Entropic regularisation (``solver="entropic"`` or ``mode="entropic"``).
    max_iter : int, optional
        Outer iterations of the solver (None: :func:`gw_plan`'s defaults; 100 for
        ``mode="entropic"``).
    inner_iter : int
        Sinkhorn iterations per outer iteration of ``mode="entropic"``.
    normalise : bool
        Divide each cost by its maximum first (recommended; see the module docstring).
    G0 : array_like, shape (n, m), optional
        Initial coupling of the exact envelope solver.

    Returns
    -------
    torch.Tensor, shape ()
        ``sum (C1[i,k] - C2[j,l])^2 T[i,j] T[k,l]`` at the plan, in the costs' dtype.
    """
    import ot
    import torch

    fn = "gw_loss"
    for name, C in (("C1", C1), ("C2", C2)):
        if not isinstance(C, torch.Tensor):
            raise SpecError(f"{fn}: {name} must be a torch tensor, got {type(C).__name__}")
        _check_square(C, name, fn)
    if mode not in GW_MODES:
        raise SpecError(f"{fn}: mode must be one of {list(GW_MODES)}, got {mode!r}")
    _check_solver(solver if mode == "envelope" else "entropic", epsilon, fn)
    dtype = torch.promote_types(C1.dtype, C2.dtype)
    C1, C2 = C1.to(dtype), C2.to(dtype)
    if normalise:
        C1, C2 = normalise_cost(C1), normalise_cost(C2)
    p, q = _marginals(p, q, C1.shape[0], C2.shape[0], C1, fn)
    if mode == "entropic":
        return ot.gromov.entropic_gromov_wasserstein2(
            C1, C2, p, q, "square_loss", epsilon=float(epsilon), max_iter=int(max_iter or 100),
            tol=1e-9, numItermax=int(inner_iter), stopThr=0.0, warn=False)
    with torch.no_grad():
        T = gw_plan(C1, C2, p, q, solver=solver, epsilon=epsilon, max_iter=max_iter, G0=G0)
    T = torch.as_tensor(T, dtype=dtype, device=C1.device)
    constC, hC1, hC2 = ot.gromov.init_matrix(C1, C2, p, q, "square_loss")
    return ot.gromov.gwloss(constC, hC1, hC2, T)


def gw_distance(C1: Any, C2: Any, solver: str = "best", epsilon: float = 5e-3,
                max_iter: int | None = None, normalise: bool = True) -> tuple[float, np.ndarray]:
    """GW discrepancy and plan between two RDMs (a metric: numpy, no gradient).

    Both solvers return local optima: the exact conditional-gradient solver started at
    ``p q^T`` often stops in a poor one (on the THINGS 48-object RDMs it matched 23% of
    the objects where the entropic solver at epsilon 0.005 matched all of them), so the
    default ``"best"`` runs both and keeps the plan with the lower value.

    Parameters
    ----------
    C1, C2 : array_like or torch.Tensor, shapes (n, n) and (m, m)
        Dissimilarity matrices (e.g. the model's and the brain's RDMs of the same
        held-out concepts); non-negative.
    solver : {"best", "exact", "entropic"}
    epsilon, max_iter :
        As in :func:`gw_plan`.
    normalise : bool
        Divide each by its maximum first.

    Returns
    -------
    value : float
        ``sum (C1[i,k] - C2[j,l])^2 T[i,j] T[k,l]`` at the plan, uniform marginals (lower
        is more similar; 0 for identical structures up to a permutation). GW is blind to
        which item is which: two RDMs of the same shape have a low value whatever their
        correspondence; compare the plan with a known correspondence for that.
    plan : np.ndarray of float64, shape (n, m)
        The coupling ``T``; see :func:`raybrain.align.concept_metrics.topk_matching_rate`.
    """
    import numpy as np
    import ot

    fn = "gw_distance"
    if solver not in GW_DISTANCE_SOLVERS:
        raise SpecError(f"{fn}: solver must be one of {list(GW_DISTANCE_SOLVERS)}, got "
                        f"{solver!r}")
    c1 = np.asarray(C1.detach().cpu() if hasattr(C1, "detach") else C1, dtype=np.float64)
    c2 = np.asarray(C2.detach().cpu() if hasattr(C2, "detach") else C2, dtype=np.float64)
    _check_square(c1, "C1", fn)
    _check_square(c2, "C2", fn)
    if normalise:
        c1, c2 = normalise_cost(c1), normalise_cost(c2)
    p, q = ot.unif(c1.shape[0]), ot.unif(c2.shape[0])
    constC, hC1, hC2 = ot.gromov.init_matrix(c1, c2, p, q, "square_loss")
    best = None
    for s in (("exact", "entropic") if solver == "best" else (solver,)):
        T = gw_plan(c1, c2, solver=s, epsilon=epsilon, max_iter=max_iter)
        value = float(ot.gromov.gwloss(constC, hC1, hC2, T))
        if best is None or value < best[0]:
            best = (value, T)
    return best
