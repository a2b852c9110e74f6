"""Neural predictivity of LM layers and joint model-brain directions (numpy + scikit-learn).

Noise ceiling
    Responses come as repeats ``(n_repeats, n_problems, n_voxels)``. The split-half
    reliability of a voxel is the Pearson correlation, across problems, between the mean
    of the even-numbered repeats and the mean of the odd-numbered ones; the
    Spearman-Brown correction ``rho = 2 r / (1 + r)`` turns it into the reliability of the
    mean of all repeats (exact for two repeats; for more, it assumes the halves are of
    equal size). For responses ``Y_j = S + e_j`` it estimates
    ``var(S) / (var(S) + var(e) / n_repeats)``: the share of the averaged response's
    variance that a perfect model could explain (the expected squared correlation between
    the true signal and the averaged data). :func:`noise_ceiling` returns it per voxel.

Predictivity
    :func:`cross_validated_ridge` predicts the repeat-averaged responses from a layer's
    states: an outer ``KFold`` (shuffled, seeded) or ``GroupKFold`` by reasoning type, and
    in every outer training fold a scikit-learn pipeline ``StandardScaler -> RidgeCV``
    whose lambda comes from the efficient leave-one-out (GCV) search of ``RidgeCV``
    *within that training fold only* (nested), per voxel by default. The out-of-fold
    predictions are scored by :func:`predictivity`:

    - per voxel ``r_v``: Pearson correlation between predictions and data across problems,
      and its explained variance ``max(r_v, 0)^2`` (a prediction anti-correlated with the
      data explains nothing; squared correlation, not ``R^2``, so that ridge shrinkage of
      the prediction's scale is not counted as error);
    - the fraction of explainable variance of a set of voxels:
      ``FEV = sum_v max(r_v, 0)^2 / sum_v rho_v`` over the voxels whose ceiling ``rho_v``
      is at least ``min_ceiling`` (a ratio of sums: stable when some ceilings are small;
      it can exceed 1 by chance, and is not clipped);
    - per reasoning type: the same, with ``r_v`` and ``rho_v`` computed across the problems
      of that type only (within-type variation; the type's mean offsets are not credited).

Joint directions
    :func:`joint_directions` fits a rank-``r`` subspace shared by model states ``X``
    (n, hidden) and brain responses ``Y`` (n, n_voxels) over *training* problems:
    ``X`` centred (not scaled, so directions live in the model's own coordinates where the
    steering hook acts), ``Y`` z-scored per voxel; optionally each side reduced by PCA
    first; then ``PLSCanonical`` (``method="pls"``), ``PLSSVD`` (``"plssvd"``) or ``CCA``
    (``"cca"``) from scikit-learn, all with ``scale=False``. The model-side weight vectors,
    mapped back to hidden space and Gram-Schmidt orthonormalised in order (sign kept), are
    the rows of :attr:`JointDirections.basis` (r, hidden); the brain-side rotations give
    :meth:`JointDirections.brain_coordinates`, the brain's score on each direction,
    standardised on the training problems. PLS maximises covariance, so it finds the
    brain's high-variance structure even where the model does not encode it yet (the
    useful case for steering); CCA maximises correlation and needs fewer dimensions on
    each side than training problems (use ``pca``).

    :func:`ridge_directions` reads the joint structure off the encoding model instead:
    reduced-rank ridge regression. The ridge map ``W`` (hidden, n_voxels) from the
    centred states to the z-scored responses (lambda fixed, or chosen by ``RidgeCV``'s
    leave-one-out search on the same training problems) gives predictions ``Xc W``; their
    top ``r`` right singular vectors ``V_r`` (n_voxels, r) are the brain-side directions
    (the responses' components the layer predicts best), and ``W V_r`` mapped to an
    orthonormal basis the model-side ones (the state directions those predictions read).
    The ridge lambda is then a knob of the directions, as it is of the predictivity.

    :func:`random_directions` is the same-rank control: uniformly random orthonormal
    frames on both sides (hidden space and voxel space), nothing learned from the data
    but the centring and the coordinates' standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raybrain.errors import SpecError

__all__ = [
    "JOINT_METHODS",
    "JointDirections",
    "Predictivity",
    "cross_validated_ridge",
    "fraction_explainable",
    "joint_directions",
    "noise_ceiling",
    "pearson_columns",
    "predictivity",
    "random_directions",
    "ridge_directions",
    "spearman_brown",
    "split_half_reliability",
]

JOINT_METHODS = ("pls", "plssvd", "cca", "ridge")
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


# ---------------------------------------------------------------------------- noise ceiling


def _repeats(repeats, who: str) -> np.ndarray:
    arr = np.asarray(repeats, dtype=np.float64)
    if arr.ndim != 3:
        raise SpecError(f"{who} expects responses of shape (n_repeats, n_problems, n_voxels), "
                        f"got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise SpecError(f"{who} needs at least 2 repeats for a split-half noise ceiling, got "
                        f"{arr.shape[0]}")
    if arr.shape[1] < 3:
        raise SpecError(f"{who} needs at least 3 problems, got {arr.shape[1]}")
    return arr


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns, shape (n_cols,); 0 where a column is constant.

    Parameters
    ----------
    a, b : np.ndarray, shape (n, n_cols)
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    num = (a * b).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return r


def spearman_brown(r, factor: float = 2.0):
    """Spearman-Brown prophecy ``factor * r / (1 + (factor - 1) * r)`` (elementwise)."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return factor * r / (1.0 + (factor - 1.0) * r)


def split_half_reliability(repeats) -> np.ndarray:
    """Per-voxel correlation between the even- and odd-repeat means, shape (n_voxels,).

    Parameters
    ----------
    repeats : array, shape (n_repeats >= 2, n_problems, n_voxels)
    """
    arr = _repeats(repeats, "split_half_reliability")
    return pearson_columns(arr[0::2].mean(0), arr[1::2].mean(0))


def noise_ceiling(repeats) -> np.ndarray:
    """Spearman-Brown-corrected split-half reliability per voxel, shape (n_voxels,).

    The reliability of the mean of all repeats (module docstring); it can be negative
    for voxels without reliable signal.
    """
    return spearman_brown(split_half_reliability(repeats), 2.0)


def fraction_explainable(r: np.ndarray, ceiling: np.ndarray, min_ceiling: float = 0.1) -> float:
    """``sum max(r, 0)^2 / sum ceiling`` over voxels with ``ceiling >= min_ceiling``.

    Parameters
    ----------
    r : np.ndarray, shape (n_voxels,)
        Prediction-data correlations.
    ceiling : np.ndarray, shape (n_voxels,)
        Noise ceilings (explainable variance fractions).
    min_ceiling : float

    Returns
    -------
    float
        NaN when no voxel reaches ``min_ceiling``.
    """
    r = np.asarray(r, dtype=np.float64)
    c = np.asarray(ceiling, dtype=np.float64)
    keep = c >= min_ceiling
    if not keep.any():
        return float("nan")
    return float((np.clip(r[keep], 0.0, None) ** 2).sum() / c[keep].sum())


# ------------------------------------------------------------------------------- predictivity


def _alphas(alphas) -> np.ndarray:
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size < 1 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise SpecError(f"ridge lambdas must be finite numbers > 0, got {alphas!r}")
    return a


def _folds(n: int, n_splits: int, cv: str, groups, seed: int):
    from sklearn.model_selection import GroupKFold, KFold

    if cv == "kfold":
        if not isinstance(n_splits, (int, np.integer)) or not 2 <= n_splits <= n:
            raise SpecError(f"n_splits must be an integer in [2, {n}] (the number of "
                            f"problems), got {n_splits!r}")
        return list(KFold(n_splits=int(n_splits), shuffle=True,
                          random_state=int(seed)).split(np.zeros(n)))
    if cv == "type":
        if groups is None:
            raise SpecError("cv='type' needs the problems' reasoning types")
        g = np.asarray(list(groups))
        k = len(set(g.tolist()))
        if k < 2:
            raise SpecError(f"cv='type' needs at least 2 reasoning types, got {k}")
        return list(GroupKFold(n_splits=min(int(n_splits), k)).split(np.zeros(n), groups=g))
    raise SpecError(f"cv must be 'kfold' or 'type', got {cv!r}")


def cross_validated_ridge(states, responses, *, alphas=DEFAULT_ALPHAS, n_splits: int = 5,
                          cv: str = "kfold", groups=None, standardize: bool = True,
                          alpha_per_target: bool = True, seed: int = 0):
    """Out-of-fold ridge predictions with lambda chosen inside each training fold.

    Parameters
    ----------
    states : array, shape (n, hidden)
    responses : array, shape (n, n_voxels)
    alphas : float or sequence of float
        Candidate lambdas (sklearn's ``alpha``); a single value fixes lambda.
    n_splits : int
        Outer folds (``cv="type"``: at most the number of types).
    cv : {"kfold", "type"}
        ``"type"``: GroupKFold by ``groups`` (a type is never in both training and test).
    groups : sequence of str, length n, or None
    standardize : bool
        z-score the states with the training fold's mean and standard deviation.
    alpha_per_target : bool
        Choose lambda per voxel (True) or one for all voxels.
    seed : int
        Shuffling of ``KFold``.

    Returns
    -------
    predictions : np.ndarray of float64, shape (n, n_voxels)
    chosen : np.ndarray of float64, shape (n_folds, n_voxels) or (n_folds, 1)
        The lambda chosen in each outer training fold.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(states, dtype=np.float64)
    y = np.asarray(responses, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise SpecError(f"ridge expects states (n, hidden) and responses (n, n_voxels) with the "
                        f"same n, got {x.shape} and {y.shape}")
    a = _alphas(alphas)
    pred = np.zeros_like(y)
    chosen = []
    for train, test in _folds(x.shape[0], n_splits, cv, groups, seed):
        ridge = RidgeCV(alphas=a, alpha_per_target=bool(alpha_per_target) and a.size > 1)
        steps = [StandardScaler(), ridge] if standardize else [ridge]
        model = make_pipeline(*steps).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
        chosen.append(np.broadcast_to(np.atleast_1d(ridge.alpha_),
                                      (y.shape[1] if alpha_per_target and a.size > 1 else 1,)))
    return pred, np.array(chosen, dtype=np.float64)


@dataclass
class Predictivity:
    """Predictivity of each layer.

    Attributes
    ----------
    layers : list of int
    fev : np.ndarray, shape (n_layers,)
        Fraction of explainable variance over all problems.
    fev_by_type : dict of str -> np.ndarray, shape (n_layers,)
        Within each reasoning type.
    r : np.ndarray, shape (n_layers, n_voxels)
        Out-of-fold prediction-data correlation per voxel (all problems).
    ceiling : np.ndarray, shape (n_voxels,)
    ceiling_by_type : dict of str -> np.ndarray, shape (n_voxels,)
    alphas : np.ndarray, shape (n_layers, n_folds, n_voxels or 1)
        Lambdas chosen in each outer training fold.
    """

    layers: list[int]
    fev: np.ndarray
    fev_by_type: dict[str, np.ndarray] = field(default_factory=dict)
    r: np.ndarray | None = None
    ceiling: np.ndarray | None = None
    ceiling_by_type: dict[str, np.ndarray] = field(default_factory=dict)
    alphas: np.ndarray | None = None

    def metrics(self, prefix: str = "predictivity") -> dict[str, float]:
        """Flat ``{f"{prefix}/layer{l}": fev, f"{prefix}/{type}/layer{l}": ...}``."""
        out = {}
        for k, lay in enumerate(self.layers):
            out[f"{prefix}/layer{lay}"] = float(self.fev[k])
            for t, v in self.fev_by_type.items():
                out[f"{prefix}/{t}/layer{lay}"] = float(v[k])
        return out


def predictivity(layer_states, repeats, types=None, *, layers=None, alphas=DEFAULT_ALPHAS,
                 n_splits: int = 5, cv: str = "kfold", standardize: bool = True,
                 alpha_per_target: bool = True, min_ceiling: float = 0.1,
                 seed: int = 0) -> Predictivity:
    """Cross-validated ridge predictivity per layer, as a fraction of explainable variance.

    Parameters
    ----------
    layer_states : array, shape (n_layers, n_problems, hidden)
        E.g. :func:`raybrain.models.lm.hidden_states`.
    repeats : array, shape (n_repeats >= 2, n_problems, n_voxels)
        Responses; ridge fits their mean, the ceiling uses the repeats.
    types : sequence of str (length n_problems) or None
        Reasoning types, for the per-type scores (and for ``cv="type"``).
    layers : sequence of int or None
        Names of the layers in ``layer_states`` (default ``0..n_layers-1``).
    alphas, n_splits, cv, standardize, alpha_per_target, seed
        As in :func:`cross_validated_ridge`.
    min_ceiling : float
        Voxels with a ceiling below it are left out of the FEV (per type: their
        within-type ceiling).

    Returns
    -------
    Predictivity
    """
    xs = np.asarray(layer_states)
    if xs.ndim != 3:
        raise SpecError(f"layer states must have shape (n_layers, n_problems, hidden), got "
                        f"{xs.shape}")
    reps = _repeats(repeats, "predictivity")
    if reps.shape[1] != xs.shape[1]:
        raise SpecError(f"{xs.shape[1]} problems of layer states but {reps.shape[1]} of brain "
                        f"responses; expected the same problems in the same order")
    if types is not None and len(types) != xs.shape[1]:
        raise SpecError(f"{len(types)} reasoning types for {xs.shape[1]} problems")
    layers = list(range(xs.shape[0])) if layers is None else [int(v) for v in layers]
    if len(layers) != xs.shape[0]:
        raise SpecError(f"{len(layers)} layer names for {xs.shape[0]} layers of states")
    y = reps.mean(0)
    ceiling = noise_ceiling(reps)
    tnames = list(dict.fromkeys(types)) if types is not None else []
    tarr = np.asarray(list(types)) if types is not None else None
    ceil_t = {}
    for t in tnames:
        m = tarr == t
        ceil_t[t] = noise_ceiling(reps[:, m]) if m.sum() >= 3 else np.full(y.shape[1], np.nan)
    fev = np.zeros(len(layers))
    fev_t = {t: np.zeros(len(layers)) for t in tnames}
    rs, chosen = [], []
    for k in range(len(layers)):
        pred, ch = cross_validated_ridge(xs[k], y, alphas=alphas, n_splits=n_splits, cv=cv,
                                         groups=types, standardize=standardize,
                                         alpha_per_target=alpha_per_target, seed=seed)
        r = pearson_columns(pred, y)
        rs.append(r)
        chosen.append(ch)
        fev[k] = fraction_explainable(r, ceiling, min_ceiling)
        for t in tnames:
            m = tarr == t
            if m.sum() >= 3:
                fev_t[t][k] = fraction_explainable(pearson_columns(pred[m], y[m]), ceil_t[t],
                                                   min_ceiling)
            else:
                fev_t[t][k] = np.nan
    return Predictivity(layers=layers, fev=fev, fev_by_type=fev_t, r=np.array(rs),
                        ceiling=ceiling, ceiling_by_type=ceil_t, alphas=np.array(chosen))


# ---------------------------------------------------------------------------- joint directions


@dataclass
class JointDirections:
    """A rank-r subspace of the model's hidden space paired with brain coordinates.

    Attributes
    ----------
    basis : np.ndarray of float64, shape (rank, hidden)
        Orthonormal rows (``basis @ basis.T = I``); ``basis.T @ basis`` is the projector.
    brain_weights : np.ndarray of float64, shape (n_voxels, rank)
        Brain coordinate ``k`` of responses ``y`` is
        ``((y - y_mean) / y_scale) @ brain_weights[:, k]``, then standardised.
    x_mean : np.ndarray, shape (hidden,)
        Mean training state (a natural steering centre).
    y_mean, y_scale : np.ndarray, shape (n_voxels,)
    coord_mean, coord_scale : np.ndarray, shape (rank,)
        Mean and standard deviation of the training problems' raw brain coordinates.
    method : str
        ``"pls"``, ``"plssvd"``, ``"cca"``, ``"ridge"`` or ``"random"``.
    ridge_lambda : float or None
        ``"ridge"``: the lambda of the ridge map (fixed or chosen); None otherwise.
    """

    basis: np.ndarray
    brain_weights: np.ndarray
    x_mean: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    coord_mean: np.ndarray
    coord_scale: np.ndarray
    method: str
    ridge_lambda: float | None = None

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    def projector(self) -> np.ndarray:
        """``basis.T @ basis``, shape (hidden, hidden)."""
        return self.basis.T @ self.basis

    def model_coordinates(self, states) -> np.ndarray:
        """``(states - x_mean) @ basis.T``, shape (n, rank)."""
        return (np.asarray(states, dtype=np.float64) - self.x_mean) @ self.basis.T

    def brain_coordinates(self, responses) -> np.ndarray:
        """Standardised brain scores on the directions, shape (n, rank).

        Parameters
        ----------
        responses : array, shape (n, n_voxels)
        """
        y = np.asarray(responses, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != self.brain_weights.shape[0]:
            raise SpecError(f"brain responses must have shape (n, {self.brain_weights.shape[0]}), "
                            f"got {y.shape}")
        raw = ((y - self.y_mean) / self.y_scale) @ self.brain_weights
        return (raw - self.coord_mean) / self.coord_scale


def _check_rank(rank, n: int, hidden: int, voxels: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise SpecError(f"rank must be an integer >= 1, got {rank!r}")
    if rank > n - 1:
        raise SpecError(f"rank must be <= the number of training problems - 1 ({n - 1}; centred "
                        f"data have n - 1 dimensions), got {rank}")
    if rank > voxels:
        raise SpecError(f"rank must be <= the number of voxels ({voxels}), got {rank}")
    if rank > hidden:
        raise SpecError(f"rank must be <= the hidden size ({hidden}), got {rank}")
    return int(rank)


def _gram_schmidt(w: np.ndarray) -> np.ndarray:
    """Orthonormalise columns in order, keeping each one's sign; (d, r) -> (r, d)."""
    q, rr = np.linalg.qr(w)
    s = np.sign(np.diag(rr))
    s[s == 0] = 1.0
    if np.any(np.abs(np.diag(rr)) < 1e-10 * max(1.0, np.abs(rr).max())):
        raise SpecError("joint directions are degenerate (a weight vector lies in the span of "
                        "the previous ones); lower the rank")
    return (q * s).T


def _prepare(states, responses, rank):
    x = np.asarray(states, dtype=np.float64)
    y = np.asarray(responses, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise SpecError(f"joint directions expect states (n, hidden) and responses (n, n_voxels) "
                        f"with the same n, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise SpecError("joint directions: states and responses must be finite")
    n = x.shape[0]
    rank = _check_rank(rank, n, x.shape[1], y.shape[1])
    x_mean = x.mean(0)
    y_mean = y.mean(0)
    y_scale = y.std(0)
    y_scale[y_scale == 0] = 1.0
    return x - x_mean, (y - y_mean) / y_scale, x_mean, y_mean, y_scale, rank


def _finish(basis, bw, yz, x_mean, y_mean, y_scale, method) -> JointDirections:
    raw = yz @ bw
    cm = raw.mean(0)
    cs = raw.std(0)
    cs[cs == 0] = 1.0
    return JointDirections(basis=basis, brain_weights=bw, x_mean=x_mean, y_mean=y_mean,
                           y_scale=y_scale, coord_mean=cm, coord_scale=cs, method=method)


def joint_directions(states, responses, rank: int, method: str = "pls",
                     pca: int | None = None, ridge_lambda: float | None = None
                     ) -> JointDirections:
    """Fit the joint model-brain subspace on training problems (module docstring).

    Parameters
    ----------
    states : array, shape (n, hidden)
        Pooled layer states of the training problems.
    responses : array, shape (n, n_voxels)
        Their (repeat-averaged) brain responses, rows matching ``states``.
    rank : int
        ``1 <= rank <= min(n - 1, n_voxels, hidden)``.
    method : {"pls", "plssvd", "cca", "ridge"}
        ``"ridge"``: :func:`ridge_directions` with ``ridge_lambda`` (``pca`` is not used).
    pca : int or None
        Reduce each side to at most this many principal components (fitted on these
        problems) before the fit; CCA needs each side below ``n`` dimensions.
    ridge_lambda : float or None
        Only for ``"ridge"``: see :func:`ridge_directions`.

    Returns
    -------
    JointDirections
    """
    from sklearn.cross_decomposition import CCA, PLSSVD, PLSCanonical
    from sklearn.decomposition import PCA

    if method not in JOINT_METHODS:
        raise SpecError(f"joint-direction method must be one of {list(JOINT_METHODS)}, got "
                        f"{method!r}")
    if method == "ridge":
        return ridge_directions(states, responses, rank, ridge_lambda)
    xc, yz, x_mean, y_mean, y_scale, rank = _prepare(states, responses, rank)
    n = xc.shape[0]
    x_map = y_map = None  # (reduced dims, original dims) with orthonormal rows
    xr, yr = xc, yz
    if pca is not None:
        if isinstance(pca, bool) or not isinstance(pca, (int, np.integer)) or pca < rank:
            raise SpecError(f"pca must be an integer >= rank ({rank}), got {pca!r}")
        if xc.shape[1] > pca:
            p = PCA(n_components=min(int(pca), n - 1)).fit(xc)
            x_map, xr = p.components_, xc @ p.components_.T
        if yz.shape[1] > pca:
            p = PCA(n_components=min(int(pca), n - 1)).fit(yz)
            y_map, yr = p.components_, yz @ p.components_.T
        if rank > min(xr.shape[1], yr.shape[1]):
            raise SpecError(f"rank ({rank}) exceeds the dimensions left after pca "
                            f"({min(xr.shape[1], yr.shape[1])})")
    if method == "cca" and max(xr.shape[1], yr.shape[1]) >= n:
        raise SpecError(f"CCA needs fewer dimensions than training problems ({n}) on each side, "
                        f"got states {xr.shape[1]} and responses {yr.shape[1]}; set pca "
                        f"(e.g. {max(rank, n // 4)})")
    if method == "pls":
        est = PLSCanonical(n_components=rank, scale=False, max_iter=1000).fit(xr, yr)
        wx, wy = est.x_weights_, est.y_rotations_
    elif method == "plssvd":
        est = PLSSVD(n_components=rank, scale=False).fit(xr, yr)
        wx, wy = est.x_weights_, est.y_weights_
    else:
        est = CCA(n_components=rank, scale=False, max_iter=1000).fit(xr, yr)
        wx, wy = est.x_weights_, est.y_rotations_
    if x_map is not None:
        wx = x_map.T @ wx
    if y_map is not None:
        wy = y_map.T @ wy
    basis = _gram_schmidt(wx)
    return _finish(basis, wy, yz, x_mean, y_mean, y_scale, method)


def ridge_directions(states, responses, rank: int, ridge_lambda: float | None = None,
                     alphas=DEFAULT_ALPHAS) -> JointDirections:
    """Joint directions by reduced-rank ridge regression (module docstring).

    Parameters
    ----------
    states : array, shape (n, hidden)
        Pooled layer states of the training problems (centred here, not scaled).
    responses : array, shape (n, n_voxels)
        Their responses (z-scored per voxel here).
    rank : int
        ``1 <= rank <= min(n - 1, n_voxels, hidden)``.
    ridge_lambda : float or None
        The ridge penalty (sklearn's ``alpha``) on the centred states; None or 0: chosen
        from ``alphas`` by ``RidgeCV``'s leave-one-out search on these problems (one
        lambda for all voxels).
    alphas : sequence of float
        Candidates when the lambda is chosen.

    Returns
    -------
    JointDirections
        ``method="ridge"``; ``ridge_lambda`` holds the lambda used. ``brain_weights`` are
        ``V_r`` (orthonormal columns), the basis the orthonormalised ``W V_r``.
    """
    from sklearn.linear_model import Ridge, RidgeCV

    xc, yz, x_mean, y_mean, y_scale, rank = _prepare(states, responses, rank)
    lam = None if ridge_lambda is None or float(ridge_lambda) == 0 else float(ridge_lambda)
    if lam is not None and not (np.isfinite(lam) and lam > 0):
        raise SpecError(f"ridge lambda must be a finite number > 0 (or 0: chosen by "
                        f"leave-one-out), got {ridge_lambda!r}")
    if lam is None:
        est = RidgeCV(alphas=_alphas(alphas), fit_intercept=False).fit(xc, yz)
        lam = float(est.alpha_)
    else:
        est = Ridge(alpha=lam, fit_intercept=False).fit(xc, yz)
    w = np.atleast_2d(est.coef_).T  # (hidden, n_voxels)
    _, s, vt = np.linalg.svd(xc @ w, full_matrices=False)
    if s.size < rank or s[rank - 1] <= 1e-12 * max(float(s[0]), 1e-300):
        raise SpecError(f"the ridge predictions have fewer than rank ({rank}) non-zero "
                        f"singular values; lower the rank")
    v = vt[:rank].T  # (n_voxels, rank)
    basis = _gram_schmidt(w @ v)
    out = _finish(basis, v, yz, x_mean, y_mean, y_scale, "ridge")
    out.ridge_lambda = lam
    return out


def random_directions(states, responses, rank: int, rng: np.random.Generator) -> JointDirections:
    """The same-rank control: random orthonormal frames in hidden and in voxel space.

    Both frames are the Q factor (signs fixed by R's diagonal) of a standard-normal
    matrix, i.e. uniform on the Stiefel manifold; ``states`` and ``responses`` only give
    the centring, the voxel z-scoring and the coordinates' standardisation, exactly as in
    :func:`joint_directions`.

    Parameters
    ----------
    states : array, shape (n, hidden)
    responses : array, shape (n, n_voxels)
    rank : int
    rng : np.random.Generator
        Draws the hidden-space frame, then the voxel-space frame.
    """
    xc, yz, x_mean, y_mean, y_scale, rank = _prepare(states, responses, rank)
    basis = _gram_schmidt(rng.standard_normal((xc.shape[1], rank)))
    bw = _gram_schmidt(rng.standard_normal((yz.shape[1], rank))).T
    return _finish(basis, bw, yz, x_mean, y_mean, y_scale, "random")
