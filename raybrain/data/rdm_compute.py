"""RDMs computed from data, per time point.

:func:`correlation_rdm`: ``1 - Pearson r`` between condition patterns.
:func:`decoding_rdm`: cross-validated pairwise decoding accuracy minus chance, from epochs
(stratified folds, nearest class mean). File reading and validation are in
:mod:`raybrain.data.rdm`.
"""

from __future__ import annotations

import numpy as np

from raybrain.errors import SpecError

__all__ = ["correlation_rdm", "decoding_rdm"]


def correlation_rdm(patterns: np.ndarray) -> np.ndarray:
    """``1 - Pearson r`` between condition patterns.

    Parameters
    ----------
    patterns : np.ndarray, shape (n_conditions, n_features) or (n_times, n_conditions, n_features)
        Finite; every condition pattern must vary across features.

    Returns
    -------
    np.ndarray of float64, shape (n, n) or (n_times, n, n)
        Symmetric, diagonal exactly 0, values in [0, 2].

    Raises
    ------
    SpecError
        Wrong dimensionality, non-finite values, or a constant pattern.
    """
    x = np.asarray(patterns, dtype=np.float64)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[1] < 2 or x.shape[2] < 2:
        raise SpecError(f"correlation_rdm expects (n_conditions, n_features) or (n_times, "
                        f"n_conditions, n_features) with >= 2 conditions and >= 2 features, "
                        f"got shape {np.shape(patterns)}")
    if not np.isfinite(x).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise SpecError(f"correlation_rdm: patterns must be finite, got a NaN/inf at "
                        f"(time, condition, feature) {first}")
    x = x - x.mean(axis=2, keepdims=True)
    norm = np.linalg.norm(x, axis=2, keepdims=True)
    if (norm == 0).any():
        t, i, _ = (int(v) for v in np.argwhere(norm == 0)[0])
        raise SpecError(f"correlation_rdm: condition {i} (time {t}) has a constant pattern "
                        f"(zero variance), so its correlation is undefined")
    x = x / norm
    rdm = 1.0 - np.einsum("tif,tjf->tij", x, x)
    rdm = (rdm + rdm.transpose(0, 2, 1)) / 2
    idx = np.arange(rdm.shape[1])
    rdm[:, idx, idx] = 0.0
    return rdm[0] if single else rdm


def decoding_rdm(epochs: np.ndarray, labels: np.ndarray, n_folds: int = 5,
                 rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated pairwise decoding distance per time point.

    Epochs are split into ``n_folds`` stratified folds (each condition's epochs dealt
    round-robin after a random permutation). For each fold and time point the class means
    come from the training folds, and a held-out epoch of class ``a`` counts as decoded in
    the pair (a, b) when it is nearer (Euclidean, across channels) to mean ``a`` than to
    mean ``b`` (an exact tie counts one half). The distance of (a, b) is the accuracy over
    the held-out epochs of both classes, pooled over folds, minus chance (0.5): about 0 for
    indistinguishable conditions (negative values are noise), up to 0.5. Distances of every
    held-out epoch to every class mean are computed at once; there is no loop over pairs.

    Parameters
    ----------
    epochs : np.ndarray, shape (n_epochs, n_channels, n_times)
        Finite.
    labels : np.ndarray, shape (n_epochs,)
        Condition of each epoch; at least 2 conditions, each with >= ``n_folds`` epochs.
    n_folds : int
        >= 2.
    rng : np.random.Generator, int or None
        Fold assignment (None: ``default_rng(0)``, deterministic).

    Returns
    -------
    rdm : np.ndarray of float64, shape (n_times, n_conditions, n_conditions)
        Symmetric, zero diagonal.
    conditions : np.ndarray, shape (n_conditions,)
        The condition of each row, sorted.

    Raises
    ------
    SpecError
        Wrong shapes, non-finite epochs, fewer than 2 conditions, ``n_folds < 2``, or a
        condition with fewer epochs than folds.
    """
    x = np.asarray(epochs, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 3 or y.shape != (x.shape[0],):
        raise SpecError(f"decoding_rdm expects epochs (n_epochs, n_channels, n_times) and one "
                        f"label per epoch, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise SpecError(f"decoding_rdm: epochs must be finite, got a NaN/inf at (epoch, "
                        f"channel, time) {first}")
    if int(n_folds) != n_folds or n_folds < 2:
        raise SpecError(f"decoding_rdm: n_folds must be an integer >= 2, got {n_folds!r}")
    n_folds = int(n_folds)
    conds, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(conds) < 2:
        raise SpecError(f"decoding_rdm needs at least 2 conditions, got {conds.tolist()}")
    if counts.min() < n_folds:
        worst = int(np.argmin(counts))
        raise SpecError(f"decoding_rdm: every condition needs >= n_folds = {n_folds} epochs, "
                        f"but condition {conds[worst].item()!r} has {int(counts[worst])}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
        0 if rng is None else rng)
    fold = np.empty(len(y), dtype=int)
    for c in range(len(conds)):
        members = rng.permutation(np.flatnonzero(y_idx == c))
        fold[members] = np.arange(len(members)) % n_folds
    k, n_times = len(conds), x.shape[2]
    hits = np.zeros((n_times, k, k))
    tested = np.zeros(k)
    onehot = np.eye(k)[y_idx]  # (n_epochs, k)
    for f in range(n_folds):
        train, test = fold != f, fold == f
        w = onehot[train] / onehot[train].sum(0)  # (n_train, k): averaging weights
        means = np.einsum("nk,nct->tkc", w, x[train])  # (t, k, c)
        xt = x[test].transpose(2, 0, 1)  # (t, n_test, c)
        dist = (np.einsum("tnc,tnc->tn", xt, xt)[:, :, None]
                - 2 * np.einsum("tnc,tkc->tnk", xt, means)
                + np.einsum("tkc,tkc->tk", means, means)[:, None, :])  # (t, n_test, k)
        own = np.take_along_axis(dist, np.broadcast_to(y_idx[test][None, :, None],
                                                       (n_times, int(test.sum()), 1)), axis=2)
        correct = (own < dist) + 0.5 * (own == dist)  # (t, n_test, j): nearer own than j
        hits += np.einsum("tnj,ni->tij", correct, onehot[test])
        tested += onehot[test].sum(0)
    rdm = (hits + hits.transpose(0, 2, 1)) / (tested[:, None] + tested[None, :])[None] - 0.5
    idx = np.arange(k)
    rdm[:, idx, idx] = 0.0
    return rdm, conds
