"""K-nearest neighbourhoods sampled with Gumbel noise, and the local-structure loss (torch).

The brain-in-the-loop method builds, for every node, a neighbourhood of K other nodes
(paper: K1 = K2 = 20) sampled with the Gumbel-softmax trick, hard in the forward pass and
with straight-through gradients, and then "maximises the number of correct
correspondences within these neighbourhoods".

:func:`gumbel_topk`
    ``K`` neighbours per row drawn without replacement from ``Categorical(softmax(s / tau))``
    (Gumbel-top-k: the ``K`` largest of ``s / tau + g``, ``g`` i.i.d. Gumbel(0, 1); Kool et
    al. 2019). The forward value is the exact 0/1 mask; the backward pass is that of the
    relaxation ``K * softmax(s / tau + g)`` (rows sum to ``K`` like the mask). ``tau``
    therefore sets both how random the neighbourhoods are (tau -> 0: the deterministic
    K nearest) and how sharp the relaxation is; it equals the usual Gumbel-softmax
    ``softmax((s + tau g) / tau)`` with the noise scaled by ``tau``. The authors' code
    adds unscaled Gumbel noise to cosine similarities in [-1, 1] at tau = 1, where the
    noise dominates and the sampled "neighbourhoods" are close to uniform draws.
:func:`local_structure_ce`
    Cross-entropy between one side's sampled neighbourhoods and the other side's neighbour
    distribution, in both directions (definition in its docstring).
:func:`neighbourhood_overlap`
    The fraction of correct correspondences within deterministic K-neighbourhoods (a
    metric).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["gumbel_topk", "neighbour_cross_entropy", "local_structure_ce",
           "neighbourhood_overlap", "check_k"]


def check_k(k, n: int, what: str = "K") -> int:
    """``k`` as an int in [1, n - 1] (a node's neighbours exclude itself), else SpecError."""
    if isinstance(k, bool) or int(k) != k:
        raise SpecError(f"{what} must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise SpecError(f"{what} must be >= 1, got {k}")
    if k >= n:
        raise SpecError(f"{what} must be < the number of concepts ({n}) (a node's neighbours "
                        f"exclude itself), got {k}")
    return k


def _check_scores(s, fn: str):
    import torch

    if not isinstance(s, torch.Tensor) or s.ndim != 2 or s.shape[0] != s.shape[1]:
        shape = tuple(s.shape) if hasattr(s, "shape") else type(s).__name__
        raise SpecError(f"{fn}: scores must be a square torch tensor (n, n), got {shape}")
    if not torch.isfinite(s).all():
        raise SpecError(f"{fn}: scores must be finite, got NaN/inf entries")


def _tau(tau, fn: str) -> float:
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise SpecError(f"{fn}: tau must be a positive number, got {tau!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise SpecError(f"{fn}: tau (Gumbel temperature) must be finite and > 0, got {tau!r}")
    return t


def _self_masked(s, value: float):
    import torch

    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return s.masked_fill(eye, value), eye


def gumbel_topk(scores: torch.Tensor, k: int, tau: float = 1.0,
                generator: torch.Generator | None = None, noise: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample exactly ``k`` neighbours per node; hard mask forward, straight-through backward.

    Parameters
    ----------
    scores : torch.Tensor, shape (n, n)
        Similarities (higher = closer), e.g. cosine similarities or ``-cost``. The diagonal
        is ignored (a node is never its own neighbour).
    k : int
        Neighbours per node, 1 <= k <= n - 1.
    tau : float
        Gumbel temperature > 0 (see the module docstring).
    generator : torch.Generator, optional
        Source of the Gumbel noise, for reproducible draws (on any device; the noise is
        moved to that of ``scores``).
    noise : bool
        False gives the deterministic ``k`` nearest (no Gumbel noise), with the same
        straight-through relaxation.

    Returns
    -------
    mask : torch.Tensor, shape (n, n)
        Forward value exactly 0/1 with ``k`` ones per row and a zero diagonal; its gradient
        is that of ``soft``.
    soft : torch.Tensor, shape (n, n)
        The relaxation ``k * softmax(scores / tau + g)`` over the off-diagonal entries of
        each row.
    """
    import torch

    fn = "gumbel_topk"
    _check_scores(scores, fn)
    t = _tau(tau, fn)
    k = check_k(k, scores.shape[0])
    logits = scores / t
    if noise:
        # draw on the generator's device (a CPU generator may serve CUDA scores)
        where = scores.device if generator is None else generator.device
        u = torch.rand(scores.shape, dtype=scores.dtype, device=where,
                       generator=generator).to(scores.device)
        tiny = torch.finfo(scores.dtype).tiny
        minus_log_u = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)
        logits = logits - torch.log(minus_log_u)  # + Gumbel(0, 1) = -log(-log u)
    logits, _ = _self_masked(logits, float("-inf"))
    soft = k * torch.softmax(logits, dim=1)
    idx = logits.detach().topk(k, dim=1).indices
    hard = torch.zeros_like(soft).scatter_(1, idx, 1.0)
    return hard - soft.detach() + soft, soft


def _log_neighbour_probs(scores, tau: float):
    """Row-wise log softmax of ``scores / tau`` over j != i; the diagonal set to 0."""
    import torch

    masked, eye = _self_masked(scores / tau, float("-inf"))
    return torch.log_softmax(masked, dim=1).masked_fill(eye, 0.0)


def neighbour_cross_entropy(target: torch.Tensor, scores: torch.Tensor,
                            tau: float = 1.0) -> torch.Tensor:
    """Cross-entropy of a neighbour distribution against K-neighbourhoods.

    ``-1/n sum_i sum_j target_ij / k_i * log p(i, j)`` with ``p(i, .) =
    softmax_{j != i}(scores_ij / tau)`` and ``k_i = sum_j target_ij`` (the target row read
    as a uniform distribution over its neighbours). Smooth in ``scores``; linear in
    ``target`` (so a straight-through mask passes its relaxation's gradient).

    Parameters
    ----------
    target : torch.Tensor, shape (n, n)
        Neighbourhood masks (0/1, zero diagonal, >= 1 neighbour per row).
    scores : torch.Tensor, shape (n, n)
        Similarities; the diagonal is ignored.
    tau : float

    Returns
    -------
    torch.Tensor, shape ()
    """
    fn = "neighbour_cross_entropy"
    _check_scores(scores, fn)
    _check_scores(target, fn)
    if target.shape != scores.shape:
        raise SpecError(f"{fn}: target and scores must have the same shape, got "
                        f"{tuple(target.shape)} and {tuple(scores.shape)}")
    k = target.detach().sum(1)
    if (k <= 0).any():
        raise SpecError(f"{fn}: every row of target needs at least one neighbour")
    log_p = _log_neighbour_probs(scores, _tau(tau, fn))
    return -((target * log_p).sum(1) / k).mean()


def local_structure_ce(model_scores: torch.Tensor, brain_scores: torch.Tensor, k_brain: int,
                       k_model: int, tau: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Local-structure cross-entropy between two paired graphs (the CE term of L2).

    Rows ``i`` of both score matrices are the same concept (paired nodes). With
    ``A`` = the brain's sampled ``k_brain``-neighbourhoods and ``H`` = the model's sampled
    ``k_model``-neighbourhoods (:func:`gumbel_topk`, hard forward, straight-through), and
    ``p_M(i, .)``, ``p_B(i, .)`` the neighbour distributions ``softmax_{j != i}(s_ij / tau)``
    of the model and the brain,

        L = 1/2 [ -1/n sum_i 1/k_brain sum_j A_ij log p_M(i, j)
                  -1/n sum_i 1/k_model sum_j H_ij log p_B(i, j) ].

    The first term is the cross-entropy of the model's neighbour distribution against the
    brain's neighbourhoods: minimising it puts the brain's neighbours among the model's
    likely neighbours. The second scores the model's own sampled neighbourhoods under the
    brain's distribution; its gradient reaches the model through the straight-through
    mask ``H``. Both count, in expectation, the correct correspondences within
    neighbourhoods ("maximise correct correspondences within neighbourhoods").

    Parameters
    ----------
    model_scores, brain_scores : torch.Tensor, shape (n, n)
        Similarities of the paired nodes (e.g. ``-C`` for a cost ``C`` normalised to
        [0, 1]). Gradients flow into both when they require them.
    k_brain, k_model : int
        Neighbourhood sizes K1 (brain) and K2 (model), each in [1, n - 1].
    tau : float
        Gumbel temperature (sampling and neighbour distributions).
    generator : torch.Generator, optional
        Noise source of both samples: the brain's neighbourhoods are drawn first, then the
        model's.

    Returns
    -------
    torch.Tensor, shape ()
        Non-negative; ``(neighbour_cross_entropy(A, model_scores, tau) +
        neighbour_cross_entropy(H, brain_scores, tau)) / 2``.
    """
    fn = "local_structure_ce"
    _check_scores(model_scores, fn)
    _check_scores(brain_scores, fn)
    if model_scores.shape != brain_scores.shape:
        raise SpecError(f"{fn}: model and brain scores must pair the same nodes, got shapes "
                        f"{tuple(model_scores.shape)} and {tuple(brain_scores.shape)}")
    t = _tau(tau, fn)
    n = model_scores.shape[0]
    kb = check_k(k_brain, n, "K1 (brain neighbourhood size)")
    km = check_k(k_model, n, "K2 (model neighbourhood size)")
    A, _ = gumbel_topk(brain_scores, kb, t, generator)
    H, _ = gumbel_topk(model_scores, km, t, generator)
    return 0.5 * (neighbour_cross_entropy(A, model_scores, t)
                  + neighbour_cross_entropy(H, brain_scores, t))


def neighbourhood_overlap(model_dist, brain_dist, k: int) -> float:
    """Mean fraction of a node's ``k`` nearest model neighbours that are brain neighbours.

    ``1/n sum_i |N_M(i) ∩ N_B(i)| / k`` with ``N(i)`` the ``k`` nearest other nodes under
    each distance (ties broken by index). Chance level for unrelated structures is
    ``k / (n - 1)``.

    Parameters
    ----------
    model_dist, brain_dist : array_like or torch.Tensor, shape (n, n)
        Dissimilarities of the same (paired) nodes.
    k : int
        1 <= k <= n - 1.

    Returns
    -------
    float in [0, 1]
    """
    import numpy as np

    dm = np.asarray(model_dist.detach().cpu() if hasattr(model_dist, "detach") else model_dist,
                    dtype=np.float64).copy()
    db = np.asarray(brain_dist.detach().cpu() if hasattr(brain_dist, "detach") else brain_dist,
                    dtype=np.float64).copy()
    if dm.ndim != 2 or dm.shape[0] != dm.shape[1] or dm.shape != db.shape:
        raise SpecError(f"neighbourhood_overlap: expects two square matrices of the same shape, "
                        f"got {dm.shape} and {db.shape}")
    n = dm.shape[0]
    k = check_k(k, n)
    np.fill_diagonal(dm, np.inf)
    np.fill_diagonal(db, np.inf)
    nm = np.argsort(dm, axis=1, kind="stable")[:, :k]
    nb = np.argsort(db, axis=1, kind="stable")[:, :k]
    hits = [len(np.intersect1d(nm[i], nb[i], assume_unique=True)) for i in range(n)]
    return float(np.mean(hits) / k)
