"""Time-resolved RDM objectives of CLIP-HBA-MEG (torch) and their evaluation (numpy).

A stack of RDMs has shape (T, N, N): one N x N dissimilarity matrix per time point. Every
term uses the upper triangles (offset 1, row-major order, as ``scipy.spatial.distance.pdist``
and ``np.triu_indices``), ``n_pairs = N (N - 1) / 2`` values per time point.

Losses (torch, differentiable, CLIP-HBA paper eqs. 5-10):

- :func:`pearson_rdm`: ``1 - Pearson r`` between the rows of (..., N, D) -> (..., N, N).
- :func:`rdm_pearson_loss`: ``1 - r`` between the upper triangles of *all* time points
  concatenated into one vector of length ``T * n_pairs`` (eq. 5).
- :func:`rdm_mse_loss`: mean squared difference of the upper triangles, averaged over
  time points (eq. 6; every slice has ``n_pairs`` entries, so this is the mean over all).
- :func:`time_generalization`: the generalisation profile ``g_t``: the row mean of the
  T x T Pearson correlation matrix between the time points' upper triangles (eqs. 7-8).
  The CLIP-HBA code divides z-scores made with the population standard deviation by
  ``n_pairs - 1``, a factor ``n_pairs / (n_pairs - 1)`` away from a correlation; the loss
  below is invariant to that factor, and we use the correlation (equal to ``np.corrcoef``).
- :func:`time_generalization_loss`: ``1 - r`` between the two profiles (eq. 9).
- :class:`MEGLoss`: ``w1 P/P0 + w2 M/M0 + w3 G/G0`` with the terms' initial values
  (eq. 10; the CLIP-HBA code takes them from a first evaluation on validation data).

A slice or a row without variance has no defined correlation; here its correlations are 0
(its RDM entries 1), never NaN: norms are clamped below at ``eps``.

Evaluation (numpy/scipy, no gradient):

- :func:`temporal_rsa`: Spearman r between predicted and target RDMs at each time point.
- :func:`rsa_area`: the area under that curve.
- :func:`individual_differences`: model-to-model vs participant-to-participant
  dissimilarities (paper section 4.5): each participant's (or model's) time-resolved RDMs
  are flattened into one vector (upper triangles of all time points, concatenated), the
  P x P dissimilarity is ``1 - Pearson r`` between those vectors, and the two P x P
  matrices are compared by the Spearman r of their upper triangles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = ["MEGLoss", "MEGLossTerms", "pearson_rdm", "rdm_mse_loss", "rdm_pearson_loss",
           "individual_differences", "rsa_area", "temporal_rsa", "time_generalization",
           "time_generalization_loss", "upper_triangle"]

EPS = 1e-8


def pearson_rdm(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """RDMs ``1 - Pearson r`` between the rows of ``x``, with a zero diagonal.

    Parameters
    ----------
    x : torch.Tensor, shape (..., N, D)
        N items with D features (e.g. (T, B, 66) predicted embeddings).
    eps : float
        Lower bound of the centred row norms; a constant row gets r = 0 with every row.

    Returns
    -------
    torch.Tensor, shape (..., N, N)
        Symmetric, zero diagonal, entries in [0, 2].
    """
    import torch

    xc = x - x.mean(dim=-1, keepdim=True)
    z = xc / xc.norm(dim=-1, keepdim=True).clamp_min(eps)
    r = z @ z.transpose(-1, -2)
    n = x.shape[-2]
    off = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
    return (1.0 - r) * off


def upper_triangle(rdms: torch.Tensor) -> torch.Tensor:
    """Upper triangles (offset 1, row-major): (..., N, N) -> (..., N (N - 1) / 2)."""
    import torch

    n = rdms.shape[-1]
    if rdms.ndim < 2 or rdms.shape[-2] != n or n < 2:
        raise SpecError(f"RDMs must have shape (..., N, N) with N >= 2, got {tuple(rdms.shape)}")
    i, j = torch.triu_indices(n, n, offset=1, device=rdms.device)
    return rdms[..., i, j]


def _pair(pred: torch.Tensor, target: torch.Tensor, who: str) -> None:
    if pred.shape != target.shape or pred.ndim != 3:
        raise SpecError(f"{who}: predicted and target RDMs must both have shape (T, N, N), got "
                        f"{tuple(pred.shape)} and {tuple(target.shape)}")


def _pearson(x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pearson r of two vectors over their last axis."""
    xc = x - x.mean(dim=-1, keepdim=True)
    yc = y - y.mean(dim=-1, keepdim=True)
    return (xc * yc).sum(-1) / (xc.norm(dim=-1).clamp_min(eps) * yc.norm(dim=-1).clamp_min(eps))


def rdm_pearson_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - r`` over the upper triangles of all time points as one long vector.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (T, N, N)

    Returns
    -------
    torch.Tensor, shape ()
        In [0, 2].
    """
    _pair(pred, target, "rdm_pearson_loss")
    return 1.0 - _pearson(upper_triangle(pred).reshape(-1), upper_triangle(target).reshape(-1))


def rdm_mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over time points of the MSE between upper triangles.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (T, N, N)

    Returns
    -------
    torch.Tensor, shape ()
    """
    _pair(pred, target, "rdm_mse_loss")
    return ((upper_triangle(pred) - upper_triangle(target)) ** 2).mean()


def time_generalization(rdms: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Generalisation profile: row means of the T x T correlation of the time points' RDMs.

    Parameters
    ----------
    rdms : torch.Tensor, shape (T, N, N)

    Returns
    -------
    torch.Tensor, shape (T,)
        ``g_t = mean_s corr(rdm_t, rdm_s)`` over the upper triangles (the diagonal term
        ``s = t`` is included, as in the paper).
    """
    u = upper_triangle(rdms)  # (T, P)
    uc = u - u.mean(dim=-1, keepdim=True)
    z = uc / uc.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (z @ z.T).mean(dim=-1)


def time_generalization_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - r`` between the generalisation profiles of predicted and target RDMs.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (T, N, N), T >= 2

    Returns
    -------
    torch.Tensor, shape ()
    """
    _pair(pred, target, "time_generalization_loss")
    if pred.shape[0] < 2:
        raise SpecError(f"time_generalization_loss needs at least 2 time points, got "
                        f"{pred.shape[0]}")
    return 1.0 - _pearson(time_generalization(pred), time_generalization(target))


@dataclass
class MEGLossTerms:
    """The weighted total and the raw terms of :class:`MEGLoss` (0-d tensors)."""

    total: torch.Tensor
    pearson: torch.Tensor
    mse: torch.Tensor
    generalization: torch.Tensor

    def items(self) -> dict[str, float]:
        """Floats for logging."""
        return {"loss": float(self.total.detach()), "pearson_loss": float(self.pearson.detach()),
                "mse_loss": float(self.mse.detach()),
                "generalization_loss": float(self.generalization.detach())}


@dataclass
class MEGLoss:
    """CLIP-HBA-MEG loss ``w1 P/P0 + w2 M/M0 + w3 G/G0`` (paper eq. 10).

    Parameters
    ----------
    weights : (w1, w2, w3)
        Pearson, MSE and time-generalisation weights (group paper values 1, 0.1, 0.15;
        individual 1, 0.15, 0.1). Non-negative, not all zero.
    initial : (P0, M0, G0)
        The terms' initial values; until :meth:`set_initial` (or
        :meth:`set_initial_from`) is called they are 1 (the raw terms are weighted).
    """

    weights: tuple[float, float, float] = (1.0, 0.1, 0.15)
    initial: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))

    def __post_init__(self):
        w = tuple(float(v) for v in self.weights)
        if len(w) != 3 or min(w) < 0 or not sum(w) > 0:
            raise SpecError(f"MEG loss weights must be three non-negative numbers, not all "
                            f"zero (Pearson, MSE, generalisation), got {self.weights!r}")
        self.weights = w
        self.set_initial(*self.initial)

    def set_initial(self, pearson: float, mse: float, generalization: float) -> None:
        """Set the normalisers P0, M0, G0 (each finite and > 0)."""
        vals = (float(pearson), float(mse), float(generalization))
        for name, v in zip(("Pearson", "MSE", "generalisation"), vals):
            if not (v > 0 and v < float("inf")):
                raise SpecError(f"initial {name} loss must be finite and > 0 to normalise by, "
                                f"got {v!r}")
        self.initial = vals

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Raw (Pearson, MSE, generalisation) terms, each shape ()."""
        return (rdm_pearson_loss(pred, target), rdm_mse_loss(pred, target),
                time_generalization_loss(pred, target))

    def set_initial_from(self, pairs) -> tuple[float, float, float]:
        """Set P0, M0, G0 to the mean terms over ``(pred, target)`` pairs (no gradient).

        Parameters
        ----------
        pairs : iterable of (torch.Tensor, torch.Tensor)
            Predicted and target RDMs (T, N, N), e.g. one pair per validation batch.

        Returns
        -------
        (P0, M0, G0)
        """
        import torch

        sums, n = [0.0, 0.0, 0.0], 0
        with torch.no_grad():
            for pred, target in pairs:
                for k, v in enumerate(self.terms(pred, target)):
                    sums[k] += float(v)
                n += 1
        if n == 0:
            raise SpecError("set_initial_from needs at least one (pred, target) pair")
        self.set_initial(*(s / n for s in sums))
        return self.initial

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> MEGLossTerms:
        """Loss of predicted vs target RDMs, both (T, N, N)."""
        p, m, g = self.terms(pred, target)
        (w1, w2, w3), (p0, m0, g0) = self.weights, self.initial
        return MEGLossTerms(w1 * p / p0 + w2 * m / m0 + w3 * g / g0, p, m, g)


def _np_stack(x, name: str) -> np.ndarray:
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[1] < 3:
        raise SpecError(f"temporal_rsa: {name} must have shape (T, N, N) with N >= 3, got "
                        f"{a.shape}")
    return a


def temporal_rsa(pred, target) -> np.ndarray:
    """Spearman r between predicted and target RDMs at every time point.

    Parameters
    ----------
    pred, target : array_like or torch.Tensor, shape (T, N, N)
        ``pred`` may also be one static RDM (N, N), compared with every target slice (a
        behaviour model's RDM against a time-resolved recording).

    Returns
    -------
    np.ndarray of float64, shape (T,)
        NaN where a slice is constant.
    """
    import numpy as np
    from scipy.stats import rankdata

    t = _np_stack(target, "target")
    p = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred,
                   dtype=np.float64)
    if p.ndim == 2:
        p = np.broadcast_to(p, t.shape)
    p = _np_stack(p, "pred")
    if p.shape != t.shape:
        raise SpecError(f"temporal_rsa: pred and target must have the same shape (T, N, N), got "
                        f"{p.shape} and {t.shape}")
    i, j = np.triu_indices(t.shape[1], k=1)
    rp = rankdata(p[:, i, j], axis=1)
    rt = rankdata(t[:, i, j], axis=1)
    rp -= rp.mean(1, keepdims=True)
    rt -= rt.mean(1, keepdims=True)
    den = np.sqrt((rp ** 2).sum(1) * (rt ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rp * rt).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def rsa_area(curve, times=None) -> float:
    """Area under a temporal RSA curve.

    Parameters
    ----------
    curve : array_like, shape (T,)
    times : array_like, shape (T,), or None
        Increasing time points (seconds): the trapezoidal integral over them (units r x s).
        None: the mean of the curve (the area per unit of time, comparable across axes).

    Returns
    -------
    float
        NaN entries are an error (a constant slice has no rank correlation).
    """
    import numpy as np

    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.size < 1:
        raise SpecError(f"rsa_area: curve must be 1-D and non-empty, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise SpecError(f"rsa_area: curve has {int((~np.isfinite(c)).sum())} non-finite "
                        f"value(s); drop constant time points first")
    if times is None:
        return float(c.mean())
    t = np.asarray(times, dtype=np.float64)
    if t.shape != c.shape or (t.size > 1 and not (np.diff(t) > 0).all()):
        raise SpecError(f"rsa_area: times must be increasing with the curve's shape {c.shape}, "
                        f"got shape {t.shape}")
    return float(np.trapezoid(c, t)) if c.size > 1 else 0.0


def individual_differences(model_rdms, participant_rdms) -> tuple[np.ndarray, np.ndarray, float]:
    """Model-to-model and participant-to-participant dissimilarities, and their agreement.

    Parameters
    ----------
    model_rdms : array_like, shape (P, T, N, N)
        Time-resolved RDMs of the P personalised models on the same N held-out stimuli.
    participant_rdms : array_like, shape (P, T, N, N)
        The P participants' target RDMs on those stimuli, in the same order.

    Returns
    -------
    model_dissim : np.ndarray, shape (P, P)
        ``1 - Pearson r`` between the models' flattened RDM time courses.
    participant_dissim : np.ndarray, shape (P, P)
        The same for the participants.
    spearman : float
        Spearman r between the upper triangles of the two matrices (NaN when P < 3).
    """
    import numpy as np
    from scipy.stats import spearmanr

    out = []
    for name, x in (("model_rdms", model_rdms), ("participant_rdms", participant_rdms)):
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 4 or a.shape[2] != a.shape[3] or a.shape[0] < 2 or a.shape[2] < 2:
            raise SpecError(f"individual_differences: {name} must have shape (P, T, N, N) with "
                            f"P >= 2 and N >= 2, got {a.shape}")
        i, j = np.triu_indices(a.shape[2], k=1)
        out.append(a[:, :, i, j].reshape(a.shape[0], -1))
    if out[0].shape != out[1].shape:
        raise SpecError(f"individual_differences: models and participants must have the same "
                        f"(P, T, N, N), got {np.shape(model_rdms)} and "
                        f"{np.shape(participant_rdms)}")
    mats = [1.0 - np.corrcoef(v) for v in out]
    p = mats[0].shape[0]
    if p < 3:
        return mats[0], mats[1], float("nan")
    iu = np.triu_indices(p, k=1)
    return mats[0], mats[1], float(spearmanr(mats[0][iu], mats[1][iu]).statistic)
