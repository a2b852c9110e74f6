"""Control targets for stimulus-indexed brain data: embeddings (stimuli x dims) and RDMs.

The ``shuffled`` and ``noise`` arms of the CLIP-HBA tasks replace the real targets of the
training (and validation) stimuli; the test stimuli always keep their real targets.

``shuffled`` -> :func:`stimulus_permutation`
    The stimuli's targets are permuted among themselves: an embedding's rows, an RDM's rows
    and columns together (``D'[i, j] = D[perm[i], perm[j]]``). Every value and the whole
    geometry are kept; which stimulus a target belongs to is not.

``noise`` -> :func:`mix_embedding`, :func:`rdm_surrogate`
    Targets with the same second-order statistics and no stimulus correspondence at all (not
    even a permuted one). A random orthogonal ``n x n`` matrix ``O`` that keeps the all-ones
    vector (:func:`centred_orthogonal`; Haar-distributed on the complement of the ones)
    mixes the *stimuli*:

    - embedding ``X`` (n, d): ``X' = mean + O (X - mean)``. Column means and the whole
      d x d covariance (every dimension's variance and the dimensions' correlations, so
      the covariance eigenvalues) are kept exactly; each new row is a random combination of
      all rows, correlated with its own original row by ``O[i, i] ~ 1 / sqrt(n)`` only.
      Values are no longer sparse or non-negative (they are sums of many rows).
    - RDMs ``D_t`` (n, n) per time point: through the double-centred matrix
      ``G_t = -J D_t J / 2`` (``J = I - 11^T / n``), which determines ``D_t`` for any
      symmetric zero-diagonal ``D_t`` (``d_ij = g_ii + g_jj - 2 g_ij``):
      ``G'_t = O G_t O^T`` and ``D'_t`` from ``G'_t``. Because one ``O`` serves every
      time point, each time point keeps its eigenvalue spectrum and its mean
      dissimilarity (``sum_ij d_ij = 2 n tr G``), and every pair of time points keeps
      the Frobenius inner product ``tr(G_t G_s)`` (their time generalisation); for an
      embedding's Pearson-free (Euclidean) RDM this is the RDM of the mixed embedding.
      Mixed slices of ``1 - Pearson`` RDMs spread wider than the real ones (mixing gives
      stimuli unequal norms), so by default each slice then takes the real slice's values
      in the mixed slice's rank order (``match_values``): the exact value distribution of
      every time point is kept, the spectrum and time generalisation approximately.

Draw ``rng`` from the sweep's data seed so every seed of a config sees the same controls.
"""

from __future__ import annotations

import numpy as np

from raybrain.errors import SpecError

__all__ = ["centred_orthogonal", "mix_embedding", "permute_rdms", "rdm_surrogate",
           "stimulus_permutation"]


def stimulus_permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``n`` stimuli with no fixed point when ``n > 1``.

    Returns
    -------
    np.ndarray of int64, shape (n,)
        ``perm[i]``: the stimulus whose target stimulus ``i`` receives.
    """
    if n < 1:
        raise SpecError(f"a stimulus permutation needs n >= 1, got {n}")
    if n == 1:
        return np.zeros(1, np.int64)
    # one random n-cycle: a random order, each stimulus taking the next one's target, so
    # no stimulus keeps its own
    order = rng.permutation(n)
    perm = np.empty(n, np.int64)
    perm[order] = order[np.roll(np.arange(n), -1)]
    return perm


def permute_rdms(rdms: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``D'[..., i, j] = D[..., perm[i], perm[j]]`` (rows and columns together).

    Parameters
    ----------
    rdms : np.ndarray, shape (..., n, n)
    perm : np.ndarray of int, shape (n,)

    Returns
    -------
    np.ndarray, shape (..., n, n)
    """
    p = np.asarray(perm, dtype=np.int64)
    return np.asarray(rdms)[..., p, :][..., :, p]


def centred_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal ``n x n`` matrix ``O`` with ``O 1 = 1``.

    ``O = 11^T / n + H Q H^T`` with ``H`` (n, n - 1) an orthonormal basis of the complement
    of the ones and ``Q`` Haar-distributed on O(n - 1) (QR of a Gaussian matrix with the
    signs of R's diagonal fixed, Mezzadri 2007).

    Returns
    -------
    np.ndarray of float64, shape (n, n)
    """
    if n < 2:
        raise SpecError(f"stimulus mixing needs n >= 2 stimuli, got {n}")
    ones = np.ones((n, 1)) / np.sqrt(n)
    # complement basis: QR of [1, I] keeps the first column along the ones
    basis, _ = np.linalg.qr(np.hstack([ones, np.eye(n)[:, : n - 1]]))
    h = basis[:, 1:]
    q, r = np.linalg.qr(rng.normal(size=(n - 1, n - 1)))
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    return ones @ ones.T + h @ q @ h.T


def mix_embedding(values, rng: np.random.Generator) -> np.ndarray:
    """Noise surrogate of an embedding: ``mean + O (X - mean)`` (see the module docstring).

    Parameters
    ----------
    values : array_like, shape (n, d)
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of float64, shape (n, d)
        Same column means and same (d x d) covariance as ``values``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SpecError(f"mix_embedding needs an embedding of shape (n >= 2, d), got {x.shape}")
    mean = x.mean(axis=0, keepdims=True)
    return mean + centred_orthogonal(x.shape[0], rng) @ (x - mean)


def rdm_surrogate(rdms, rng: np.random.Generator, *, index=None, out=None,
                  match_values: bool = True) -> np.ndarray:
    """Noise surrogate of time-resolved RDMs (see the module docstring).

    Parameters
    ----------
    rdms : array_like, shape (T, N, N) or (P, T, N, N)
        May be memory-mapped: one (index x index) slice is read at a time.
    rng : np.random.Generator
        Draws the one mixing matrix shared by every participant and time point.
    index : array_like of int, shape (n,), or None
        Stimuli to mix among themselves (None: all N); the output is indexed by position
        in ``index``.
    out : np.ndarray or None
        Array of the output shape to fill (e.g. a ``np.lib.format.open_memmap``); None:
        a new float32 array.
    match_values : bool
        Give each surrogate slice the real slice's values: the real upper-triangle values,
        sorted, are placed in the rank order of the mixed slice's upper triangle (ties by
        position). Each slice then keeps its exact value distribution (so the scale the
        MSE term sees, and the mean dissimilarity); the mixed geometry decides only which
        pair gets which value.

    Returns
    -------
    np.ndarray, shape (T, n, n) or (P, T, n, n)
        Symmetric with a zero diagonal.
    """
    shape = np.shape(rdms)
    if len(shape) not in (3, 4) or shape[-1] != shape[-2]:
        raise SpecError(f"rdm_surrogate: expected RDMs of shape (T, N, N) or (P, T, N, N), got "
                        f"{shape}")
    stack = rdms if len(shape) == 4 else rdms[None]
    idx = np.arange(shape[-1]) if index is None else np.asarray(index, dtype=np.int64)
    n = len(idx)
    o = centred_orthogonal(n, rng)
    want = (*shape[:-2], n, n)
    if out is None:
        out = np.empty(want, np.float32)
    elif tuple(out.shape) != want:
        raise SpecError(f"rdm_surrogate: out has shape {tuple(out.shape)}, expected {want}")
    view = out if len(shape) == 4 else out[None]
    order = np.argsort(idx)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    rows = idx[order]
    for p in range(stack.shape[0]):
        for t in range(stack.shape[1]):
            d = np.asarray(stack[p, t][rows], dtype=np.float64)[inverse][:, idx]
            d = 0.5 * (d + d.T)
            np.fill_diagonal(d, 0.0)
            dc = d - d.mean(axis=0, keepdims=True)
            g = -0.5 * (dc - dc.mean(axis=1, keepdims=True))       # -J D J / 2
            g = o @ g @ o.T
            diag = np.diag(g)
            new = diag[:, None] + diag[None, :] - 2.0 * g
            if match_values:
                iu = np.triu_indices(n, k=1)
                vals = np.empty(len(iu[0]))
                vals[np.argsort(new[iu], kind="stable")] = np.sort(d[iu])
                new = np.zeros((n, n))
                new[iu] = vals
                new = new + new.T
            else:
                new = 0.5 * (new + new.T)
                np.fill_diagonal(new, 0.0)
            view[p, t] = new
    return out
