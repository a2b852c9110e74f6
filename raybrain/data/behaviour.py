"""Behavioural targets and measures for CLIP-HBA-Behavior (numpy/scipy).

- :func:`rescale_spose`: the CLIP-HBA target scaling ``(raw - lo) / (hi - lo) * 100``, with
  ``lo`` and ``hi`` the global min and max of the full SPoSE embedding (THINGS: -0.00052 and
  2.7415, over all 1,854 x 66 entries), so every split shares one scale.
- :func:`odd_one_out_accuracy`: fraction of triplets whose odd one out an embedding predicts
  (the item outside the pair with the largest dot product, SPoSE's choice rule).
- :func:`restrict_triplets`: the trials whose three items are all in a held-out set,
  re-indexed to positions in that set.
- :func:`behaviour_rdm` and :func:`rdm_spearman`: the RDM of predicted embeddings,
  ``1 - Pearson r`` between rows (diagonal 0, as the CLIP-HBA code's ``1 - np.corrcoef``),
  and its Spearman r with a target RDM over the upper triangles.
"""

from __future__ import annotations

import numpy as np

from raybrain.data.embeddings import spose_predict_odd_one_out
from raybrain.errors import SpecError

__all__ = ["behaviour_rdm", "odd_one_out_accuracy", "rdm_spearman", "rescale_spose",
           "restrict_triplets"]


def rescale_spose(values, lo: float, hi: float, scale: float = 100.0) -> np.ndarray:
    """CLIP-HBA's target scaling ``(values - lo) / (hi - lo) * scale``.

    Parameters
    ----------
    values : array_like, shape (n_items, n_dims)
    lo, hi : float
        Global min and max of the full embedding (``hi > lo``).
    scale : float

    Returns
    -------
    np.ndarray of float64, same shape
    """
    if not (np.isfinite([lo, hi]).all() and hi > lo):
        raise SpecError(f"rescale_spose needs finite lo < hi, got lo={lo!r}, hi={hi!r}")
    return (np.asarray(values, dtype=np.float64) - lo) / (hi - lo) * float(scale)


def odd_one_out_accuracy(values, triplets, odd) -> float:
    """Fraction of triplets whose chosen odd one out the embedding predicts.

    Parameters
    ----------
    values : array_like, shape (n_items, n_dims)
        Predicted (or target) embeddings.
    triplets : array_like of int, shape (n, 3)
        Row indices into ``values``.
    odd : array_like of int, shape (n,)
        Position (0, 1 or 2) of the odd one out chosen by the participant or teacher.

    Returns
    -------
    float
        In [0, 1]; chance is 1/3.
    """
    t = np.asarray(triplets)
    o = np.asarray(odd)
    if o.shape != (len(t),) or o.dtype.kind not in "iu" or (o.size and (o.min() < 0 or
                                                                      o.max() > 2)):
        raise SpecError(f"odd must hold one position in {{0, 1, 2}} per triplet ({len(t)}), got "
                        f"{o.dtype} {o.shape}")
    if len(t) == 0:
        raise SpecError("odd_one_out_accuracy needs at least one triplet")
    return float(np.mean(spose_predict_odd_one_out(np.asarray(values), t) == o))


def restrict_triplets(triplets, odd, items) -> tuple[np.ndarray, np.ndarray]:
    """Trials whose three items all belong to ``items``, indexed by position in ``items``.

    Parameters
    ----------
    triplets : array_like of int, shape (n, 3)
        Item indices (e.g. SPoSE rows or image indices).
    odd : array_like of int, shape (n,)
    items : array_like of int, shape (m,)
        The held-out items, in the order of the predictions that will be scored.

    Returns
    -------
    triplets : np.ndarray of int64, shape (k, 3)
        Positions in ``items``.
    odd : np.ndarray of int64, shape (k,)
    """
    t = np.asarray(triplets, dtype=np.int64)
    o = np.asarray(odd, dtype=np.int64)
    it = np.asarray(items, dtype=np.int64)
    if t.ndim != 2 or t.shape[1] != 3 or o.shape != (len(t),):
        raise SpecError(f"triplets must have shape (n, 3) and odd shape (n,), got {t.shape} and "
                        f"{o.shape}")
    if len(np.unique(it)) != len(it):
        raise SpecError("items must not repeat an index")
    pos = {int(v): k for k, v in enumerate(it)}
    keep = np.isin(t, it).all(axis=1)
    mapped = np.vectorize(pos.__getitem__, otypes=[np.int64])(t[keep]) if keep.any() else (
        np.zeros((0, 3), np.int64))
    return mapped.reshape(-1, 3), o[keep]


def behaviour_rdm(values) -> np.ndarray:
    """``1 - Pearson r`` between embedding rows, diagonal 0.

    Parameters
    ----------
    values : array_like, shape (n_items, n_dims)

    Returns
    -------
    np.ndarray of float64, shape (n_items, n_items)
        A constant row correlates 0 with every row (dissimilarity 1), never NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.isfinite(x).all():
        raise SpecError(f"embeddings must be finite with shape (n_items >= 2, n_dims >= 2), got "
                        f"shape {x.shape}")
    xc = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(xc, axis=1, keepdims=True)
    z = xc / np.where(norm > 0, norm, 1.0)
    d = np.clip(1.0 - z @ z.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def rdm_spearman(values, target_rdm) -> float:
    """Spearman r between the RDM of ``values`` and a target RDM (upper triangles).

    Parameters
    ----------
    values : array_like, shape (n_items, n_dims)
    target_rdm : array_like, shape (n_items, n_items)

    Returns
    -------
    float
    """
    from scipy.stats import spearmanr

    pred = behaviour_rdm(values)
    tgt = np.asarray(target_rdm, dtype=np.float64)
    if tgt.shape != pred.shape:
        raise SpecError(f"target RDM has shape {tgt.shape} but {pred.shape[0]} embeddings were "
                        f"given; expected ({pred.shape[0]}, {pred.shape[0]})")
    i, j = np.triu_indices(len(pred), k=1)
    return float(spearmanr(pred[i, j], tgt[i, j]).statistic)
