"""Alignment diagnostics between a model's representation and the brain's.

Both representations describe the same items (time points, steps or stimuli) in rows;
their feature counts may differ (hidden units vs. voxels, channels or embedding
dimensions). These are measurements, not losses: they work in numpy/scipy float64 and
carry no gradient. Torch tensors are accepted and converted with
``np.asarray(x.detach().cpu())``.

- :func:`rdm`: representational dissimilarity matrix (items x items).
- :func:`rsa`: representational similarity analysis, the Spearman correlation between the
  upper triangles of the model's and the brain's RDMs.
- :func:`linear_cka`: linear centred kernel alignment (Kornblith et al., 2019).
- :func:`subsample_items`: a sorted random subset of item indices, so that the O(n^2)
  RDMs stay cheap on long recordings.

Invariances (what each measure ignores):

- ``rdm(metric="euclidean")`` is unchanged by any orthogonal transform of the features,
  a translation, and (up to a common factor) isotropic scaling; RSA, which only uses
  ranks, is therefore unchanged by all three.
- ``rdm(metric="correlation")`` is unchanged by a per-item positive affine map
  ``x_i -> a_i x_i + b_i`` (``a_i > 0``) and by orthogonal transforms of the features
  that fix the all-ones direction (e.g. feature permutations); it is *not* invariant to
  general rotations, because each item is centred across its features.
- ``linear_cka`` is unchanged by orthogonal transforms, isotropic scaling and
  translations of either side, but not by non-isotropic scaling of features.

numpy and scipy are imported inside the functions so that ``import raybrain.align``
stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

__all__ = ["linear_cka", "rdm", "rsa", "subsample_items"]

RDM_METRICS: tuple[str, ...] = ("correlation", "euclidean")
"""Dissimilarity metrics accepted by :func:`rdm` and :func:`rsa`."""


def _as_items(x: Any, name: str, fn: str, min_items: int) -> np.ndarray:
    """Convert ``x`` to a finite float64 array of shape (n_items, n_features).

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n_items, n_features)
        Representation, one row per item.
    name, fn : str
        Argument and function names, used in error messages.
    min_items : int
        Smallest accepted number of rows.

    Returns
    -------
    np.ndarray of float64, shape (n_items, n_features)
    """
    import numpy as np

    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError(
            f"{fn}: {name} must be a real numeric array of shape (n_items, n_features), "
            f"but got {type(x).__name__} ({exc})"
        ) from None
    if arr.ndim != 2:
        raise SpecError(
            f"{fn}: {name} must be 2-D with shape (n_items, n_features), but got shape "
            f"{arr.shape}"
        )
    if arr.shape[0] < min_items or arr.shape[1] < 1:
        raise SpecError(
            f"{fn}: {name} must have at least {min_items} items (rows) and 1 feature "
            f"(column), but got shape {arr.shape}"
        )
    n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if n_bad:
        raise SpecError(
            f"{fn}: {name} must be finite, but got {n_bad} NaN/inf value(s) in an array "
            f"of shape {arr.shape}"
        )
    return arr


def _check_metric(metric: str, fn: str) -> str:
    if metric not in RDM_METRICS:
        raise SpecError(f"{fn}: metric must be one of {RDM_METRICS}, but got {metric!r}")
    return metric


def _condensed_rdm(x: np.ndarray, metric: str) -> np.ndarray:
    """Upper triangle (k=1, row-major, as ``scipy.spatial.distance.pdist``) of the RDM.

    Parameters
    ----------
    x : np.ndarray of float64, shape (n_items, n_features)
        Already validated.
    metric : {"correlation", "euclidean"}

    Returns
    -------
    np.ndarray of float64, shape (n_items * (n_items - 1) // 2,)
    """
    import numpy as np
    from scipy.spatial.distance import pdist

    with np.errstate(invalid="ignore", divide="ignore"):
        dist = pdist(x, metric=metric)
    if metric == "correlation":
        constant = np.ptp(x, axis=1) == 0  # (n_items,)
        if constant.any():
            rows, cols = np.triu_indices(x.shape[0], k=1)
            dist[constant[rows] | constant[cols]] = 1.0
        # 1 - r lies in [0, 2]; remove rounding excursions such as -2e-16.
        np.clip(dist, 0.0, 2.0, out=dist)
    return dist


def rdm(x: Any, metric: str = "correlation") -> np.ndarray:
    """Representational dissimilarity matrix of the items in ``x``.

    Entry ``(i, j)`` is the dissimilarity between the activity patterns of items ``i``
    and ``j`` (rows of ``x``), computed with ``scipy.spatial.distance.pdist`` and
    ``squareform``:

    - ``"correlation"``: ``1 - r``, with ``r`` the Pearson correlation between the two
      patterns across features; in [0, 2].
    - ``"euclidean"``: Euclidean distance between the two patterns.

    A constant pattern (zero variance across features) has no defined correlation with
    anything; under ``"correlation"`` every pair involving such an item (including two
    identical constant items) gets dissimilarity 1.0, the value of uncorrelated
    patterns ("no information"), instead of scipy's NaN. The diagonal is always 0.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n_items, n_features)
        One activity pattern per item. Tensors are detached and moved to the CPU.
    metric : {"correlation", "euclidean"}, default "correlation"
        Dissimilarity between two patterns.

    Returns
    -------
    np.ndarray of float64, shape (n_items, n_items)
        Symmetric, zero diagonal, no NaN.

    Raises
    ------
    SpecError
        If ``x`` is not 2-D, has fewer than 2 items or no feature, contains NaN/inf,
        or ``metric`` is unknown.
    """
    from scipy.spatial.distance import squareform

    metric = _check_metric(metric, "rdm")
    arr = _as_items(x, "x", "rdm", min_items=2)
    return squareform(_condensed_rdm(arr, metric), checks=False)


def rsa(model: Any, brain: Any, metric: str = "correlation") -> float:
    """Representational similarity between a model and the brain on the same items.

    The Spearman rank correlation (``scipy.stats.spearmanr``) between the upper
    triangles (k=1, diagonal excluded) of ``rdm(model, metric)`` and
    ``rdm(brain, metric)``. Being rank-based, it is unchanged by any monotone increasing
    transform of either RDM.

    The result is never NaN: if either triangle is constant (e.g. all items identical,
    or every pattern constant under ``"correlation"``), the rank correlation is
    undefined and 0.0 ("no measurable similarity") is returned.

    Parameters
    ----------
    model : array_like or torch.Tensor, shape (n_items, n_model_features)
        Model representation, one row per item.
    brain : array_like or torch.Tensor, shape (n_items, n_brain_features)
        Brain representation of the same items in the same order; the feature count may
        differ from the model's.
    metric : {"correlation", "euclidean"}, default "correlation"
        Dissimilarity used for both RDMs (see :func:`rdm`).

    Returns
    -------
    float
        Spearman correlation in [-1, 1].

    Raises
    ------
    SpecError
        If either input is malformed (see :func:`rdm`), has fewer than 3 items (fewer
        than 3 pairs), the item counts differ, or ``metric`` is unknown.
    """
    import numpy as np
    from scipy.stats import spearmanr

    metric = _check_metric(metric, "rsa")
    m = _as_items(model, "model", "rsa", min_items=3)
    b = _as_items(brain, "brain", "rsa", min_items=3)
    if m.shape[0] != b.shape[0]:
        raise SpecError(
            f"rsa: model and brain must have the same number of items (rows), but got "
            f"{m.shape[0]} and {b.shape[0]}"
        )
    m_tri = _condensed_rdm(m, metric)
    b_tri = _condensed_rdm(b, metric)
    if np.ptp(m_tri) == 0 or np.ptp(b_tri) == 0:
        return 0.0
    r = float(spearmanr(m_tri, b_tri).statistic)
    return r if math.isfinite(r) else 0.0


def _centred_unit(x: np.ndarray) -> np.ndarray | None:
    """Centre the columns of ``x`` and scale to unit Frobenius norm.

    Columns that are exactly constant are set to exactly 0 (plain centring can leave
    rounding residue such as 1e-17 in them). Returns None if nothing is left (every
    column constant).

    Parameters
    ----------
    x : np.ndarray of float64, shape (n_items, n_features)

    Returns
    -------
    np.ndarray of float64, shape (n_items, n_features), or None
    """
    import numpy as np

    varying = np.ptp(x, axis=0) > 0  # (n_features,)
    if not varying.any():
        return None
    xc = x[:, varying] - x[:, varying].mean(axis=0, keepdims=True)
    norm = np.linalg.norm(xc)
    if norm == 0:  # pragma: no cover - varying columns cannot centre to exactly 0
        return None
    return xc / norm


def linear_cka(x: Any, y: Any) -> float:
    """Linear centred kernel alignment between two representations of the same items.

    With ``X`` and ``Y`` the column-centred inputs (Kornblith et al., 2019, eq. 5)::

        CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

    which equals the normalised HSIC of the linear kernels ``K = X X^T`` and
    ``L = Y Y^T``. It lies in [0, 1], is 1 when ``y`` is an orthogonal transform,
    isotropic scaling and/or translation of ``x``, and is unchanged by those transforms
    of either side; it does change under non-isotropic scaling of features.

    The computation uses the feature-space form when there are more items than
    features, and the equivalent item-space (Gram) form ``<K, L>_F / (||K||_F ||L||_F)``
    otherwise, so neither a (n_features, n_features) nor a (n_items, n_items) matrix
    larger than needed is built. Inputs are scaled to unit norm first (CKA is
    scale-invariant), which avoids overflow.

    Note that linear CKA between independent random representations is biased upward
    when the feature counts are not small compared with the item count.

    If either input is constant across items (every column constant), CKA is undefined
    and 0.0 is returned.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n_items, n_x_features)
        First representation (e.g. the model's), one row per item.
    y : array_like or torch.Tensor, shape (n_items, n_y_features)
        Second representation (e.g. the brain's) of the same items; the feature count
        may differ.

    Returns
    -------
    float
        Linear CKA in [0, 1].

    Raises
    ------
    SpecError
        If either input is not 2-D, has fewer than 2 items or no feature, contains
        NaN/inf, or the item counts differ.
    """
    import numpy as np

    xa = _as_items(x, "x", "linear_cka", min_items=2)
    ya = _as_items(y, "y", "linear_cka", min_items=2)
    if xa.shape[0] != ya.shape[0]:
        raise SpecError(
            f"linear_cka: x and y must have the same number of items (rows), but got "
            f"{xa.shape[0]} and {ya.shape[0]}"
        )
    xc = _centred_unit(xa)
    yc = _centred_unit(ya)
    if xc is None or yc is None:
        return 0.0
    n_items = xc.shape[0]
    if n_items > max(xc.shape[1], yc.shape[1]):
        cross = np.sum((yc.T @ xc) ** 2)
        denom = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    else:
        k = xc @ xc.T  # (n_items, n_items)
        l_ = yc @ yc.T
        cross = np.sum(k * l_)
        denom = np.linalg.norm(k) * np.linalg.norm(l_)
    if denom == 0:  # pragma: no cover - unit-norm inputs have non-zero Gram norms
        return 0.0
    return float(np.clip(cross / denom, 0.0, 1.0))


def subsample_items(n_items: int, max_items: int, rng: Any) -> np.ndarray:
    """Sorted indices of at most ``max_items`` items, drawn without replacement.

    Use it to keep RDM-based diagnostics (O(n_items^2) memory and time) cheap on long
    recordings: index the model and the brain representation with the same result.

    Parameters
    ----------
    n_items : int
        Number of items available (>= 0).
    max_items : int
        Largest number of items to keep (>= 1).
    rng : numpy.random.Generator or int
        Source of randomness; an int >= 0 is a seed for ``numpy.random.default_rng``. The same
        seed (or a generator in the same state) gives the same indices. Not consumed
        when ``n_items <= max_items``.

    Returns
    -------
    np.ndarray of int64, shape (min(n_items, max_items),)
        Strictly increasing indices into ``range(n_items)``; all of them
        (``arange(n_items)``) when ``n_items <= max_items``.

    Raises
    ------
    SpecError
        If ``n_items`` is not an int >= 0, ``max_items`` is not an int >= 1, or ``rng``
        is neither a ``numpy.random.Generator`` nor an int >= 0.
    """
    import numbers

    import numpy as np

    def _is_int(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not _is_int(n_items) or n_items < 0:
        raise SpecError(f"subsample_items: n_items must be an int >= 0, but got {n_items!r}")
    if not _is_int(max_items) or max_items < 1:
        raise SpecError(
            f"subsample_items: max_items must be an int >= 1, but got {max_items!r}"
        )
    if not (isinstance(rng, np.random.Generator) or (_is_int(rng) and rng >= 0)):
        raise SpecError(
            f"subsample_items: rng must be a numpy.random.Generator or an int seed >= 0, "
            f"but got {rng!r}"
        )
    n_items, max_items = int(n_items), int(max_items)
    if n_items <= max_items:
        return np.arange(n_items, dtype=np.int64)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    idx = gen.choice(n_items, size=max_items, replace=False)
    return np.sort(idx).astype(np.int64, copy=False)
