"""Optimal-transport correspondences between two sets of nodes (torch + POT).

The brain-in-the-loop method (arXiv 2505.09085) finds putative correspondences between
brain and model concept nodes with an entropic optimal-transport plan computed by
log-domain Sinkhorn iterations (100 in the paper). Here the iterations are POT's
(``ot.sinkhorn(..., method="sinkhorn_log")``), run in the torch backend, so autograd
unrolls them and the plan is differentiable in the cost matrix.

- :func:`sinkhorn_log_plan`: the log of the plan, differentiable, from POT's dual
  potentials (``log P = log_u 1^T - M / reg + 1 log_v^T``), so no ``log(0)`` appears
  however small an entry.
- :func:`add_dustbin`: SuperGlue's unmatched-node bin (one extra row and column).
- :func:`ot_matching_loss`: negative log conditional plan mass on the true pairs.
- :func:`correspondence_ce`: the row- and column-softmax cross-entropy on the same costs.
- :func:`putative_matches`: mutual row/column argmax pairs of a plan.

Costs are expected in [0, 1] (e.g. ``(1 - cos) / 2``): the regularisation ``reg`` is then
a fraction of the largest cost, and small ``reg`` does not underflow in the log domain.

torch and POT are imported inside the functions so that ``import raybrain.align`` stays
cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["sinkhorn_log_plan", "add_dustbin", "ot_matching_loss", "correspondence_ce",
           "putative_matches"]


def _positive(value, name: str, fn: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{fn}: {name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise SpecError(f"{fn}: {name} must be finite and > 0, got {value!r}")
    return v


def _check_cost(M, fn: str):
    import torch

    if not isinstance(M, torch.Tensor) or M.ndim != 2 or min(M.shape) < 1:
        shape = tuple(M.shape) if hasattr(M, "shape") else type(M).__name__
        raise SpecError(f"{fn}: cost must be a 2-D torch tensor (n, m), got {shape}")
    if not torch.isfinite(M).all():
        raise SpecError(f"{fn}: cost must be finite, got NaN/inf entries")


def sinkhorn_log_plan(M: torch.Tensor, reg: float, a: torch.Tensor | None = None,
                      b: torch.Tensor | None = None, n_iter: int = 100,
                      stop_thr: float = 1e-9) -> torch.Tensor:
    """Log of the entropic OT plan between marginals ``a`` and ``b`` for cost ``M``.

    Solves ``min_P <P, M> - reg * H(P)`` subject to ``P 1 = a``, ``P^T 1 = b`` with POT's
    log-domain Sinkhorn (``ot.sinkhorn(a, b, M, reg, method="sinkhorn_log")``) and
    returns ``log P = log_u[:, None] - M / reg + log_v[None, :]`` from its potentials.
    Autograd differentiates through every iteration (memory O(n_iter * n * m)).

    Parameters
    ----------
    M : torch.Tensor, shape (n, m)
        Cost, finite; best in [0, 1] (see the module docstring).
    reg : float
        Entropic regularisation epsilon > 0, in the units of ``M``.
    a, b : torch.Tensor, shape (n,) and (m,), optional
        Marginals (positive, each summing to 1); uniform when None.
    n_iter : int
        Maximum number of Sinkhorn iterations (the paper: 100).
    stop_thr : float
        POT's stopping threshold on the marginal error, checked every 10 iterations;
        0 runs exactly ``n_iter`` iterations.

    Returns
    -------
    torch.Tensor, shape (n, m)
        ``log P`` in the dtype of ``M``; ``exp`` of it has row sums ``a`` and column sums
        ``b`` up to the Sinkhorn tolerance.

    Raises
    ------
    SpecError
        Non-2-D or non-finite cost, ``reg`` not > 0, ``n_iter`` < 1, marginals of the
        wrong length.
    """
    import ot
    import torch

    fn = "sinkhorn_log_plan"
    _check_cost(M, fn)
    reg = _positive(reg, "reg (Sinkhorn epsilon)", fn)
    if int(n_iter) != n_iter or n_iter < 1:
        raise SpecError(f"{fn}: n_iter must be an integer >= 1, got {n_iter!r}")
    if not stop_thr >= 0:
        raise SpecError(f"{fn}: stop_thr must be >= 0, got {stop_thr!r}")
    n, m = M.shape
    a = torch.full((n,), 1.0 / n, dtype=M.dtype, device=M.device) if a is None else a
    b = torch.full((m,), 1.0 / m, dtype=M.dtype, device=M.device) if b is None else b
    if a.shape != (n,) or b.shape != (m,):
        raise SpecError(f"{fn}: marginals must have shapes ({n},) and ({m},), got "
                        f"{tuple(a.shape)} and {tuple(b.shape)}")
    _, log = ot.sinkhorn(a, b, M, reg, method="sinkhorn_log", numItermax=int(n_iter),
                         stopThr=float(stop_thr), log=True, warn=False)
    return log["log_u"][:, None] - M / reg + log["log_v"][None, :]


def add_dustbin(M: torch.Tensor, dustbin_cost: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a cost matrix with a dustbin row and column (SuperGlue, Sarlin et al. 2020).

    Every real node may send its mass to the other side's dustbin at cost
    ``dustbin_cost``; the dustbins hold the mass of the other side's nodes
    (marginals ``a = [1/(n+m)] * n + [m/(n+m)]``, ``b = [1/(n+m)] * m + [n/(n+m)]``), so
    nodes without a partner are not forced into a match.

    Parameters
    ----------
    M : torch.Tensor, shape (n, m)
    dustbin_cost : torch.Tensor, shape ()
        Usually a learnable parameter; gradients reach it.

    Returns
    -------
    M_aug : torch.Tensor, shape (n + 1, m + 1)
    a, b : torch.Tensor, shapes (n + 1,) and (m + 1,)
        Marginals, each summing to 1.
    """
    import torch

    _check_cost(M, "add_dustbin")
    n, m = M.shape
    d = dustbin_cost.to(M.dtype).reshape(())
    col = d.expand(n, 1)
    row = d.expand(1, m + 1)
    M_aug = torch.cat([torch.cat([M, col], dim=1), row], dim=0)
    norm = 1.0 / (n + m)
    a = torch.cat([M.new_full((n,), norm), M.new_full((1,), m * norm)])
    b = torch.cat([M.new_full((m,), norm), M.new_full((1,), n * norm)])
    return M_aug, a, b


def _targets(target, n: int, m: int, device, fn: str):
    import torch

    t = torch.as_tensor(target, device=device)
    if t.dtype == torch.bool:
        if t.shape != (n, m):
            raise SpecError(f"{fn}: a bool target must have shape ({n}, {m}), got "
                            f"{tuple(t.shape)}")
        if not t.any(dim=1).all():
            raise SpecError(f"{fn}: every row of the bool target needs a True entry")
        return t
    if t.shape != (n,) or t.dtype not in (torch.int32, torch.int64):
        raise SpecError(f"{fn}: target must be int column indices of shape ({n},) or a bool "
                        f"({n}, {m}) mask, got {t.dtype} {tuple(t.shape)}")
    if n and (t.min() < 0 or t.max() >= m):
        raise SpecError(f"{fn}: target column indices must lie in [0, {m}), got "
                        f"[{int(t.min())}, {int(t.max())}]")
    mask = torch.zeros(n, m, dtype=torch.bool, device=device)
    mask[torch.arange(n, device=device), t.long()] = True
    return mask


def ot_matching_loss(log_plan: torch.Tensor, target, log_a: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Negative log conditional plan mass on the true pairs (the OT term of L1).

    ``L = -mean_{(i, j) true} log(P_ij / a_i)``: ``P_ij / a_i`` is the probability that
    row node ``i`` is sent to column node ``j``; the loss is 0 exactly when every row puts
    all its mass on its partner. With uniform ``a`` this is the authors'
    ``mean(-scores[labels])`` (their ``scores`` are ``log P + log(n + m)``) up to the
    additive constant ``log((n + m) / n)``.

    Parameters
    ----------
    log_plan : torch.Tensor, shape (n, m)
        From :func:`sinkhorn_log_plan` (the real block, when a dustbin was added).
    target : array_like of int, shape (n,), or bool, shape (n, m)
        Partner column of each row, or a mask of the true pairs (several per row allowed;
        every row needs at least one).
    log_a : torch.Tensor, shape (n,), optional
        Log row marginals; uniform ``-log n`` when None.

    Returns
    -------
    torch.Tensor, shape ()
        >= 0 up to the Sinkhorn tolerance.
    """
    fn = "ot_matching_loss"
    _check_cost(log_plan.clamp_min(-1e30), fn)  # -inf is allowed in a log plan
    n, m = log_plan.shape
    mask = _targets(target, n, m, log_plan.device, fn)
    cond = log_plan + (math.log(n) if log_a is None else -log_a[:, None])
    return -cond[mask].mean()


def correspondence_ce(M: torch.Tensor, reg: float, target) -> torch.Tensor:
    """Cross-entropy of the correspondences from the costs (the CE term of L1).

    Logits ``-M / reg``: each row is a softmax over the columns and each column a softmax
    over the rows (one half-step of Sinkhorn each); the loss is the mean of the row-wise
    and column-wise cross-entropies of the true pairs (a symmetric InfoNCE whose
    temperature is the Sinkhorn epsilon). Where several columns are true for a row the
    target distribution is uniform over them.

    Parameters
    ----------
    M : torch.Tensor, shape (n, m)
        Cost, e.g. ``(1 - cos) / 2``.
    reg : float
        Temperature > 0 (the Sinkhorn epsilon).
    target : array_like of int, shape (n,), or bool, shape (n, m)
        As in :func:`ot_matching_loss`; with a bool mask every column needs a True too.

    Returns
    -------
    torch.Tensor, shape ()
    """
    import torch

    fn = "correspondence_ce"
    _check_cost(M, fn)
    reg = _positive(reg, "reg (temperature)", fn)
    n, m = M.shape
    mask = _targets(target, n, m, M.device, fn)
    if not mask.any(dim=0).all():
        raise SpecError(f"{fn}: every column of the target needs a True entry (a partner)")
    logits = -M / reg
    w = mask.to(M.dtype)
    rows = -(torch.log_softmax(logits, dim=1) * w).sum(1) / w.sum(1)
    cols = -(torch.log_softmax(logits, dim=0) * w).sum(0) / w.sum(0)
    return 0.5 * (rows.mean() + cols.mean())


def putative_matches(plan) -> tuple:
    """Mutual best matches of a transport plan (or score matrix).

    Pair ``(i, j)`` is kept when ``j = argmax_j' P[i, j']`` and ``i = argmax_i' P[i', j]``.

    Parameters
    ----------
    plan : np.ndarray or torch.Tensor, shape (n, m)
        Plan, log plan or similarity scores (any monotone transform gives the same pairs).

    Returns
    -------
    rows, cols : np.ndarray of int64, shape (n_matches,)
        Matched row and column indices, sorted by row.
    """
    import numpy as np

    p = np.asarray(plan.detach().cpu() if hasattr(plan, "detach") else plan, dtype=np.float64)
    if p.ndim != 2 or min(p.shape) < 1:
        raise SpecError(f"putative_matches: plan must be 2-D (n, m), got shape {p.shape}")
    best_col = p.argmax(axis=1)
    best_row = p.argmax(axis=0)
    rows = np.flatnonzero(best_row[best_col] == np.arange(p.shape[0]))
    return rows.astype(np.int64), best_col[rows].astype(np.int64)
