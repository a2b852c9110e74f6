"""Concept-level brain and model data for the brain-in-the-loop method (numpy).

One :class:`ConceptData` holds, for ``n_concepts`` concepts:

- the brain side: voxel patterns ``(n_concepts, n_voxels)`` and their RDM, or only an
  RDM ``(n_concepts, n_concepts)`` (then the RDM is the brain graph's structure);
- the model side: frozen backbone features of ``n_items`` exemplars ``(n_items, d)`` and
  the concept each exemplar shows;
- the concept hierarchy where known: superordinate (e.g. living / non-living) and basic
  categories.

Sources:

- :func:`synthetic_concepts`: a generator with a known hierarchy (informative and null);
- :func:`build_concept_data` / :func:`load_concept_data`: user arrays and files through the
  existing loaders (:func:`raybrain.data.embeddings.load_voxels`,
  :func:`raybrain.data.rdm.load_rdm`), with concept labels and a category table;
- :func:`things48`: the 48 THINGS objects (SPoSE rows as model features, the fully sampled
  triplet RDM as the "brain").

Controls for the comparison arms (draw ``rng`` from the sweep's data seed):

- ``shuffled`` -> :func:`shuffle_brain`: brain rows permuted across concepts;
- ``noise`` -> :func:`noise_brain`: a surrogate with the same eigenvalue spectrum and no
  correspondence (:func:`spectrum_surrogate`, :func:`spectrum_surrogate_rdm`).

Splits are over concepts (:func:`split_concepts`): held-out concepts are new concepts of
known categories, never new exemplars of trained ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from raybrain.errors import SpecError

__all__ = ["ConceptData", "ConceptSplit", "synthetic_concepts", "split_concepts",
           "shuffle_brain", "noise_brain", "brain_control", "BRAIN_CONTROLS", "spectrum_surrogate", "spectrum_surrogate_rdm",
           "build_concept_data", "load_concept_data", "read_names", "read_category_table",
           "things48", "THINGS48_FILES"]


@dataclass
class ConceptData:
    """Brain and model data of a set of concepts.

    Attributes
    ----------
    concepts : list of str, length n_concepts
        Concept names, in the row order of the brain arrays.
    brain_rdm : np.ndarray of float64, shape (n_concepts, n_concepts)
        The brain's dissimilarities (symmetric, zero diagonal, >= 0).
    features : np.ndarray of float32, shape (n_items, d)
        Frozen model-side features, one row per exemplar.
    item_concept : np.ndarray of int64, shape (n_items,)
        Index into ``concepts`` of each exemplar; every concept has >= 1 exemplar.
    brain : np.ndarray of float32, shape (n_concepts, n_voxels), or None
        Voxel patterns; None when the user has only an RDM.
    superordinate : np.ndarray of object, shape (n_concepts,), or None
        Superordinate category of each concept (None entries: unknown).
    basic : np.ndarray of object, shape (n_concepts,), or None
        Basic-level category of each concept.
    info : dict
        Provenance (generator settings, which control was applied, ...).
    """

    concepts: list[str]
    brain_rdm: np.ndarray
    features: np.ndarray
    item_concept: np.ndarray
    brain: np.ndarray | None = None
    superordinate: np.ndarray | None = None
    basic: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

    @property
    def brain_kind(self) -> str:
        """``"voxels"`` when patterns are present, else ``"rdm"``."""
        return "voxels" if self.brain is not None else "rdm"

    def items_of(self, concept_idx) -> np.ndarray:
        """Indices of the exemplars (rows of ``features``) of the given concepts."""
        return np.flatnonzero(np.isin(self.item_concept, np.asarray(concept_idx)))

    def brain_inputs(self, concept_idx, anchors) -> np.ndarray:
        """Brain encoder inputs of some concepts, shape (len(concept_idx), brain_dim).

        Voxels: the patterns (``brain_dim = n_voxels``). RDM only: each concept's
        dissimilarities to the ``anchors`` (the training concepts; ``brain_dim =
        len(anchors)``), a dissimilarity-space embedding that exists for held-out
        concepts too without using their dissimilarities to one another. A concept's
        entry for itself (0, present only for anchors) is replaced by the mean of its
        other entries, so a zero cannot identify a training concept.

        Parameters
        ----------
        concept_idx : array_like of int, shape (n,)
        anchors : array_like of int, shape (n_anchors,)

        Returns
        -------
        np.ndarray of float32
        """
        idx = np.asarray(concept_idx, dtype=np.int64)
        if self.brain is not None:
            return np.asarray(self.brain[idx], dtype=np.float32)
        anc = np.asarray(anchors, dtype=np.int64)
        rows = np.asarray(self.brain_rdm, dtype=np.float64)[np.ix_(idx, anc)].copy()
        self_pos = idx[:, None] == anc[None, :]
        if self_pos.any():
            others = np.where(self_pos, np.nan, rows)
            fill = np.nanmean(others, axis=1, keepdims=True)
            rows = np.where(self_pos, fill, rows)
        return rows.astype(np.float32)


@dataclass(frozen=True)
class ConceptSplit:
    """Concept indices of the train / validation / test sets (disjoint, sorted)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def get(self, name: str) -> np.ndarray:
        if name not in ("train", "val", "test"):
            raise SpecError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)


def _pos_int(v, name: str, low: int = 1) -> int:
    if isinstance(v, bool) or int(v) != v or v < low:
        raise SpecError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _nonneg(v, name: str) -> float:
    if not (np.isfinite(v) and v >= 0):
        raise SpecError(f"{name} must be finite and >= 0, got {v!r}")
    return float(v)


def synthetic_concepts(seed: int, informative: bool = True, n_super: int = 2,
                       n_basic: int = 4, n_per_basic: int = 16, n_exemplars: int = 5,
                       n_voxels: int = 128, feature_dim: int = 48, latent_dim: int = 6,
                       n_styles: int = 4, style_dim: int = 4, brain_noise: float = 0.3,
                       hierarchy_blur: float = 0.5, style_strength: float = 1.0,
                       exemplar_noise: float = 0.2) -> ConceptData:
    """Concepts with a known hierarchy, a brain that shows it and a model that blurs it.

    Hierarchy: ``n_super`` superordinate categories ("living", "non-living" when 2) x
    ``n_basic`` basic categories each x ``n_per_basic`` concepts each. Latent vectors
    (dimension ``latent_dim``): ``s`` ~ N(0, 1) per superordinate, ``b`` ~ N(0, 0.6^2)
    per basic category, ``c`` ~ N(0, sigma_k^2) per concept with a spread ``sigma_k`` ~
    U(0.25, 0.75) drawn per basic category (categories differ in how tightly their
    concepts cluster, so the structure has no exact symmetry that would let a
    structure-only matching swap whole categories); a concept's semantic latent is
    ``z = s + b + c`` with hierarchy part ``h = s + b``.

    Brain: ``pattern_i = z_{pi(i)} W + brain_noise * e`` with ``W`` (latent_dim, n_voxels)
    ~ N(0, 1 / latent_dim) and ``e`` ~ N(0, 1) per voxel; ``pi`` is the identity when
    ``informative`` and a uniform random permutation of all concepts otherwise (the
    *null* variant: the brain shows a hierarchy of the same shape, but which concept sits
    where is unrelated to the model's concepts). ``brain_rdm`` is ``1 - Pearson r``
    (:func:`raybrain.data.rdm_compute.correlation_rdm`).

    Model: a related but distorted view. Concept ``i`` has the code
    ``[hierarchy_blur * h_i, c_i, style_strength * u_{g(i)}]`` where ``u_g`` ~ N(0, 1)
    (``style_dim``) is one of ``n_styles`` "visual styles" assigned at random across
    categories (a strong nuisance grouping); exemplar ``e`` adds
    ``exemplar_noise * N(0, 1)`` to the code, and the features are
    ``tanh(code A)`` with ``A`` ~ N(0, 1 / code_dim) of shape (code_dim, feature_dim) (a
    random linear mix and a saturating warp). The hierarchy is thus present but weak and
    mixed with style, and a reweighting of the code recovers the brain's geometry.

    The defaults were chosen so the known answer is clear on held-out concepts (see
    ``tests/test_brain_loop_training.py``): the features' concept RDM is nearly unrelated
    to the brain's (Pearson r ~ 0.2), a ridge regression from features to voxels fitted
    on half of the concepts predicts the other half's RDM at r ~ 0.9, and the latents'
    cosine RDM matches the brain RDM at r ~ 0.97.

    Every draw comes from ``np.random.default_rng(seed)`` in a fixed order (latents,
    styles, the permutation ``pi``, brain weights and noise, model weights, exemplar
    noise), so the informative and null variants share everything but ``pi`` and the
    draws after it are the same numbers.

    Parameters
    ----------
    seed : int
    informative : bool
    n_super, n_basic, n_per_basic, n_exemplars, n_voxels, feature_dim, latent_dim,
    n_styles, style_dim : int
    brain_noise, hierarchy_blur, style_strength, exemplar_noise : float

    Returns
    -------
    ConceptData
        ``n_concepts = n_super * n_basic * n_per_basic``, ``n_items = n_concepts *
        n_exemplars`` (item ``i`` shows concept ``i // n_exemplars``); ``info`` records
        the settings, ``pi`` (key ``"brain_permutation"``), each concept's style
        (``"style"``), the latents ``z`` (``"semantic_latent"``, (n_concepts, latent_dim))
        and the model codes (``"model_code"``).
    """
    from raybrain.data.rdm_compute import correlation_rdm

    n_super = _pos_int(n_super, "n_super", 2)
    n_basic = _pos_int(n_basic, "n_basic")
    n_per_basic = _pos_int(n_per_basic, "n_per_basic")
    n_exemplars = _pos_int(n_exemplars, "n_exemplars")
    n_voxels = _pos_int(n_voxels, "n_voxels", 2)
    feature_dim = _pos_int(feature_dim, "feature_dim")
    latent_dim = _pos_int(latent_dim, "latent_dim")
    n_styles = _pos_int(n_styles, "n_styles")
    style_dim = _pos_int(style_dim, "style_dim")
    for name, v in (("brain_noise", brain_noise), ("hierarchy_blur", hierarchy_blur),
                    ("style_strength", style_strength), ("exemplar_noise", exemplar_noise)):
        _nonneg(v, name)
    rng = np.random.default_rng(seed)
    n_cat = n_super * n_basic
    n = n_cat * n_per_basic
    super_of = np.repeat(np.arange(n_super), n_basic * n_per_basic)
    basic_of = np.repeat(np.arange(n_cat), n_per_basic)
    s = rng.normal(size=(n_super, latent_dim))
    b = 0.6 * rng.normal(size=(n_cat, latent_dim))
    spread = rng.uniform(0.25, 0.75, size=n_cat)  # how far a category's concepts scatter
    c = spread[basic_of, None] * rng.normal(size=(n, latent_dim))
    h = s[super_of] + b[basic_of]
    z = h + c
    styles = rng.normal(size=(n_styles, style_dim))
    style_of = rng.integers(0, n_styles, size=n)
    perm = rng.permutation(n)
    pi = np.arange(n) if informative else perm
    W = rng.normal(size=(latent_dim, n_voxels)) / np.sqrt(latent_dim)
    patterns = z[pi] @ W + brain_noise * rng.normal(size=(n, n_voxels))
    code = np.concatenate([hierarchy_blur * h, c, style_strength * styles[style_of]], axis=1)
    A = rng.normal(size=(code.shape[1], feature_dim)) / np.sqrt(code.shape[1])
    item_concept = np.repeat(np.arange(n), n_exemplars)
    noisy = code[item_concept] + exemplar_noise * rng.normal(size=(len(item_concept),
                                                                     code.shape[1]))
    features = np.tanh(noisy @ A)
    super_names = (["living", "non-living"] if n_super == 2
                   else [f"super{k}" for k in range(n_super)])
    basic_names = [f"{super_names[k // n_basic]}/basic{k % n_basic}" for k in range(n_cat)]
    return ConceptData(
        concepts=[f"concept{i:03d}" for i in range(n)],
        brain_rdm=correlation_rdm(patterns),
        features=features.astype(np.float32),
        item_concept=item_concept.astype(np.int64),
        brain=patterns.astype(np.float32),
        superordinate=np.array([super_names[k] for k in super_of], dtype=object),
        basic=np.array([basic_names[k] for k in basic_of], dtype=object),
        info={"source": "synthetic", "seed": seed, "informative": bool(informative),
              "brain_permutation": pi, "style": style_of, "semantic_latent": z,
              "model_code": code, "hierarchy_blur": hierarchy_blur,
              "brain_noise": brain_noise, "style_strength": style_strength},
    )


def split_concepts(data: ConceptData, fractions=(0.6, 0.2, 0.2), seed: int = 0
                   ) -> ConceptSplit:
    """Split concepts into train / val / test, stratified by category.

    Within each stratum (basic category if known, else superordinate, else one stratum)
    the concepts are shuffled with ``np.random.default_rng(seed)`` and cut by
    ``fractions`` (rounded; val and test get at least one concept of a stratum when it
    has 3 or more), so every held-out concept has trained siblings of its category.

    Parameters
    ----------
    data : ConceptData
    fractions : tuple of 3 floats
        Train, val, test shares; non-negative, summing to 1.
    seed : int

    Returns
    -------
    ConceptSplit
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise SpecError(f"fractions must be 3 non-negative numbers summing to 1 (train, val, "
                        f"test), got {tuple(fractions)}")
    strata = (data.basic if data.basic is not None and all(v is not None for v in data.basic)
              else data.superordinate
              if data.superordinate is not None and all(v is not None
                                                        for v in data.superordinate)
              else np.zeros(data.n_concepts, dtype=object))
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for key in sorted({str(v) for v in strata}):
        members = np.flatnonzero(np.array([str(v) for v in strata]) == key)
        members = rng.permutation(members)
        m = len(members)
        n_val = int(round(fr[1] * m))
        n_test = int(round(fr[2] * m))
        if m >= 3:
            n_val = max(n_val, 1) if fr[1] > 0 else 0
            n_test = max(n_test, 1) if fr[2] > 0 else 0
        n_train = max(m - n_val - n_test, 0)
        parts[0] += members[:n_train].tolist()
        parts[1] += members[n_train:n_train + n_val].tolist()
        parts[2] += members[n_train + n_val:].tolist()
    train, val, test = (np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
    if len(train) < 3:
        raise SpecError(f"the split leaves {len(train)} training concepts; expected at least 3 "
                        f"(got {data.n_concepts} concepts, fractions {tuple(fractions)})")
    return ConceptSplit(train, val, test)


# ---------------------------------------------------------------------------- controls

def _centred_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random orthogonal (n, n) matrix that fixes the all-ones vector."""
    from scipy.linalg import null_space
    from scipy.stats import ortho_group

    H = null_space(np.ones((1, n)))  # (n, n - 1), orthonormal, orthogonal to 1
    Q = ortho_group.rvs(n - 1, random_state=rng) if n > 2 else \
        np.array([[rng.choice([-1.0, 1.0])]])
    return H @ Q @ H.T + np.full((n, n), 1.0 / n)


def spectrum_surrogate(patterns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patterns with the same covariance spectrum and no concept identity.

    ``X_s = 1 mu^T + R (X - 1 mu^T)`` with ``mu`` the column means and ``R`` a uniformly
    random rotation of item space that fixes the all-ones vector. Column means, the
    voxel-by-voxel covariance ``Xc^T Xc`` (hence its eigenvalues) and the eigenvalues of
    the centred Gram matrix ``Xc Xc^T`` are exactly those of ``X``; which row shows which
    concept is randomised (the rows are random mixtures of all concepts' centred
    patterns, so nothing of the concept-to-pattern correspondence survives).

    Parameters
    ----------
    patterns : np.ndarray, shape (n_concepts, n_voxels), n_concepts >= 2
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of float64, shape (n_concepts, n_voxels)
    """
    X = np.asarray(patterns, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2 or not np.isfinite(X).all():
        raise SpecError(f"spectrum_surrogate expects finite patterns (n_concepts >= 2, "
                        f"n_voxels), got shape {X.shape}")
    mu = X.mean(axis=0, keepdims=True)
    R = _centred_rotation(X.shape[0], rng)
    return mu + R @ (X - mu)


def spectrum_surrogate_rdm(rdm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RDM with the same classical-MDS spectrum and no concept identity.

    With ``B = -1/2 J D^2 J`` (``J`` the centring matrix, ``D^2`` the squared entries), the
    surrogate Gram is ``B_s = R B R^T`` for a random rotation ``R`` fixing the all-ones
    vector, and ``D_s[i, j] = sqrt(max(B_s[i,i] + B_s[j,j] - 2 B_s[i,j], 0))``. ``B_s`` has
    exactly the eigenvalues of ``B``; when ``D`` is Euclidean (``B`` positive
    semi-definite) no entry is clipped and double-centring ``D_s^2`` gives ``B_s`` back, so
    the spectrum of the surrogate RDM equals the original's. For a non-Euclidean ``D``
    negative squared entries are clipped to 0 (``info`` of :func:`noise_brain` counts them).

    Parameters
    ----------
    rdm : np.ndarray, shape (n, n)
        Symmetric, zero diagonal.
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of float64, shape (n, n)
        Symmetric, zero diagonal, >= 0.
    """
    D = _check_rdm(rdm, "spectrum_surrogate_rdm")
    n = D.shape[0]
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (D ** 2) @ J
    R = _centred_rotation(n, rng)
    Bs = R @ B @ R.T
    d = np.diag(Bs)
    sq = d[:, None] + d[None, :] - 2.0 * Bs
    out = np.sqrt(np.maximum(sq, 0.0))
    out = (out + out.T) / 2
    np.fill_diagonal(out, 0.0)
    return out


def _check_rdm(rdm, what: str) -> np.ndarray:
    D = np.asarray(rdm, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise SpecError(f"{what}: the RDM must be square (n, n), got shape {D.shape}")
    if D.shape[0] < 3:
        raise SpecError(f"{what}: the RDM needs >= 3 concepts, got {D.shape[0]}")
    if not np.isfinite(D).all():
        raise SpecError(f"{what}: the RDM must be finite, got NaN/inf")
    scale = max(float(np.abs(D).max()), 1e-300)
    if np.abs(D - D.T).max() > 1e-5 * scale or np.abs(np.diag(D)).max() > 1e-5 * scale:
        raise SpecError(f"{what}: the RDM must be symmetric with a zero diagonal")
    if D.min() < -1e-5 * scale:
        raise SpecError(f"{what}: the RDM must be >= 0, got {D.min():.4g}")
    return np.maximum((D + D.T) / 2, 0.0)


def shuffle_brain(data: ConceptData, rng: np.random.Generator) -> ConceptData:
    """The ``shuffled`` control: brain rows permuted across concepts.

    Concept ``i`` gets the brain data of concept ``perm[i]`` (``perm =
    rng.permutation(n_concepts)``): patterns ``brain[perm]`` and RDM
    ``brain_rdm[perm][:, perm]``. The brain's own structure is unchanged (the same
    hierarchy, up to relabelling); its correspondence with the model's concepts is gone.
    The model side is untouched. ``info["control"] = "shuffled"``, ``info["brain_permutation"]``
    records ``perm``.
    """
    perm = rng.permutation(data.n_concepts)
    return replace(data, brain=None if data.brain is None else data.brain[perm],
                   brain_rdm=data.brain_rdm[np.ix_(perm, perm)],
                   info={**data.info, "control": "shuffled", "brain_permutation": perm})


def noise_brain(data: ConceptData, rng: np.random.Generator) -> ConceptData:
    """The ``noise`` control: a brain surrogate with the same spectrum, no correspondence.

    Voxels: :func:`spectrum_surrogate` of the patterns, and the RDM recomputed from it
    (``1 - Pearson r``). RDM only: :func:`spectrum_surrogate_rdm`. ``info["control"] =
    "noise"``.
    """
    from raybrain.data.rdm_compute import correlation_rdm

    if data.brain is not None:
        X = spectrum_surrogate(data.brain, rng)
        return replace(data, brain=X.astype(np.float32), brain_rdm=correlation_rdm(X),
                       info={**data.info, "control": "noise"})
    return replace(data, brain_rdm=spectrum_surrogate_rdm(data.brain_rdm, rng),
                   info={**data.info, "control": "noise"})


#: Brain sources of the arms: the real data and the two controls.
BRAIN_CONTROLS = ("real", "shuffled", "noise")


def brain_control(data: ConceptData, source: str, rng: np.random.Generator) -> ConceptData:
    """The training data of an arm: ``"real"`` (unchanged), ``"shuffled"``
    (:func:`shuffle_brain`) or ``"noise"`` (:func:`noise_brain`).

    Only the brain side changes. Evaluate every arm against the *real* data (the held-out
    concepts' true brain RDM), never against its control.
    """
    if source == "real":
        return data
    if source == "shuffled":
        return shuffle_brain(data, rng)
    if source == "noise":
        return noise_brain(data, rng)
    raise SpecError(f"brain source must be one of {list(BRAIN_CONTROLS)}, got {source!r}")


# ----------------------------------------------------------------------- user data glue

def _names_list(names, what: str) -> list[str]:
    out = [str(v).strip() for v in names]
    if any(not v for v in out):
        raise SpecError(f"{what}: entry {[not v for v in out].index(True)} is empty; expected "
                        f"a concept name")
    return out


def build_concept_data(brain_concepts, item_concepts, features, *, brain=None,
                       brain_rdm=None, categories: dict | None = None,
                       basic: dict | None = None, require_categories: bool = False,
                       info: dict | None = None) -> ConceptData:
    """Assemble and check user data into a :class:`ConceptData`.

    Parameters
    ----------
    brain_concepts : sequence of str, length n_concepts
        Concept of each brain row (voxel pattern or RDM row); no duplicates.
    item_concepts : sequence of str, length n_items
        Concept of each feature row.
    features : array_like, shape (n_items, d)
        Frozen model-side features.
    brain : array_like, shape (n_concepts, n_voxels), optional
        Voxel patterns; their RDM is ``1 - Pearson r``.
    brain_rdm : array_like, shape (n_concepts, n_concepts), optional
        Given RDM (used as is, even when ``brain`` is also given).
    categories : dict str -> str, optional
        Superordinate category of each concept (a concept absent or mapped to None or ""
        has none).
    basic : dict str -> str, optional
        Basic-level category of each concept.
    require_categories : bool
        True when a superordinate category is needed for every concept (the silhouette
        metric): a concept without one is an error.

    Raises
    ------
    SpecError
        One line each: no brain data; an RDM that is not square or does not match the
        brain concepts; duplicate brain concepts; brain and model concept sets that
        differ (names the first concept on each side only); features that are not
        2-D/finite; concepts without a category when required.
    """
    from raybrain.data.rdm_compute import correlation_rdm

    bc = _names_list(brain_concepts, "brain concepts")
    ic = _names_list(item_concepts, "item concepts")
    if len(set(bc)) != len(bc):
        dup = next(v for v in bc if bc.count(v) > 1)
        raise SpecError(f"brain concepts must be unique, got {dup!r} {bc.count(dup)} times")
    only_brain = sorted(set(bc) - set(ic))
    only_model = sorted(set(ic) - set(bc))
    if only_brain or only_model:
        raise SpecError(f"brain and model concept lists differ: {len(only_brain)} only on the "
                        f"brain side (e.g. {only_brain[:3]}), {len(only_model)} only on the "
                        f"model side (e.g. {only_model[:3]}); expected the same concepts")
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != len(ic) or x.shape[1] < 1:
        raise SpecError(f"features must have shape (n_items={len(ic)}, d), got {x.shape}")
    if not np.isfinite(x).all():
        r, col = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise SpecError(f"features must be finite, got {x[r, col]} at item {r}, dim {col}")
    if brain is None and brain_rdm is None:
        raise SpecError("no brain data: expected voxel patterns (brain) or an RDM (brain_rdm)")
    patterns = None
    if brain is not None:
        patterns = np.asarray(brain, dtype=np.float32)
        if patterns.ndim != 2 or patterns.shape[0] != len(bc):
            raise SpecError(f"voxel patterns must have shape (n_concepts={len(bc)}, n_voxels), "
                            f"got {patterns.shape}")
    if brain_rdm is not None:
        D = np.asarray(brain_rdm)
        if D.ndim != 2 or D.shape[0] != D.shape[1]:
            raise SpecError(f"the brain RDM must be square (n_concepts, n_concepts), got shape "
                            f"{D.shape}")
        if D.shape[0] != len(bc):
            raise SpecError(f"the brain RDM has {D.shape[0]} rows but {len(bc)} brain concepts "
                            f"were named; expected one name per row")
        D = _check_rdm(D, "brain RDM")
    else:
        D = correlation_rdm(patterns)
    index = {name: i for i, name in enumerate(bc)}
    item_concept = np.array([index[v] for v in ic], dtype=np.int64)
    sup = None
    if categories is not None or require_categories:
        cats = categories or {}
        sup = np.array([(str(cats[c]).strip() or None) if cats.get(c) is not None else None
                        for c in bc], dtype=object)
        if require_categories and any(v is None for v in sup):
            missing = [c for c, v in zip(bc, sup) if v is None]
            raise SpecError(f"{len(missing)} concept(s) have no superordinate category (e.g. "
                            f"{missing[:3]}); the silhouette metric needs one for every "
                            f"concept")
    bas = None
    if basic is not None:
        bas = np.array([(str(basic[c]).strip() or None) if basic.get(c) is not None else None
                        for c in bc], dtype=object)
    return ConceptData(concepts=bc, brain_rdm=D, features=x, item_concept=item_concept,
                       brain=patterns, superordinate=sup, basic=bas, info=dict(info or {}))


def read_names(path: str | os.PathLike, what: str) -> list[str]:
    """One name per line (trailing blank lines ignored; a blank line inside is an error)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{what} file '{p}' not found; expected a text file, one name per line")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise SpecError(f"{what} file '{p}': line {lines.index('') + 1} is empty; expected one "
                        f"name per line")
    return lines


def read_category_table(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """A category table: ``concept``, ``superordinate`` and optional ``basic`` columns.

    Tab-separated (``.tsv``) or comma-separated (otherwise), with a header row naming the
    columns. Empty cells mean "no category".

    Returns
    -------
    superordinate : dict str -> str or None
    basic : dict str -> str or None, or None when the table has no ``basic`` column
    """
    import csv

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"category table '{p}' not found; expected a CSV/TSV file with "
                        f"columns concept, superordinate[, basic]")
    delim = "\t" if p.suffix.lower() == ".tsv" else ","
    with p.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delim))
    cols = set(rows[0]) if rows else set()
    if not {"concept", "superordinate"} <= cols:
        raise SpecError(f"category table '{p}' has columns {sorted(cols)}; expected "
                        f"'concept' and 'superordinate' (and optionally 'basic')")
    sup = {r["concept"].strip(): (r["superordinate"] or "").strip() or None for r in rows}
    bas = ({r["concept"].strip(): (r["basic"] or "").strip() or None for r in rows}
           if "basic" in cols else None)
    return sup, bas


def load_concept_data(*, features_path, item_concepts_path, brain_concepts_path,
                      voxels_path=None, rdm_path=None, categories_path=None,
                      require_categories: bool = False, features_key: str | None = None,
                      brain_key: str | None = None) -> ConceptData:
    """Read user files into a :class:`ConceptData` (see :func:`build_concept_data`).

    Parameters
    ----------
    features_path : path
        Model-side features ``(n_items, d)``: ``.npy``, ``.npz`` or ``.h5``
        (:func:`raybrain.models.backbones.load_features`).
    item_concepts_path, brain_concepts_path : path
        Text files, one concept name per line: per feature row, per brain row.
    voxels_path : path, optional
        Voxel patterns ``(n_concepts, n_voxels)`` (:func:`raybrain.data.embeddings.load_voxels`).
    rdm_path : path, optional
        RDM ``(n_concepts, n_concepts)`` (:func:`raybrain.data.rdm.load_rdm`; a stack is
        refused).
    categories_path : path, optional
        :func:`read_category_table`.
    require_categories : bool
    features_key, brain_key : str, optional
        Array names inside ``.npz``/``.h5``/``.mat`` files.
    """
    from raybrain.data.embeddings import load_voxels
    from raybrain.data.rdm import load_rdm
    from raybrain.models.backbones import load_features

    features = load_features(features_path, key=features_key)
    brain = None if voxels_path is None else np.asarray(load_voxels(voxels_path, key=brain_key))
    rdm = None
    if rdm_path is not None:
        arr, check = load_rdm(rdm_path, key=brain_key, return_check=True)
        rdm = np.asarray(arr)
        if rdm.ndim != 2:
            how = (f" (read as condensed: a last axis of {check.condensed_from[-1]} is "
                   f"n(n-1)/2 for n = {rdm.shape[-1]}; a matrix must be square)"
                   if getattr(check, "condensed_from", None) else "")
            raise SpecError(f"RDM file '{rdm_path}' holds a stack of shape {rdm.shape}"
                            f"{how}; expected one (n_concepts, n_concepts) matrix")
    sup = bas = None
    if categories_path is not None:
        sup, bas = read_category_table(categories_path)
    return build_concept_data(read_names(brain_concepts_path, "brain concepts"),
                              read_names(item_concepts_path, "item concepts"), features,
                              brain=brain, brain_rdm=rdm, categories=sup, basic=bas,
                              require_categories=require_categories,
                              info={"source": "files"})


# -------------------------------------------------------------------------------- THINGS

#: Files of ``things48`` inside the THINGS folder.
THINGS48_FILES = ("RDM48_triplet.mat", "spose_embedding66d_rescaled_48val_reordered.csv",
                  "rdm48_concepts_in_order.tsv", "animacy.csv")


def things48(root: str | os.PathLike) -> ConceptData:
    """The 48 THINGS objects: SPoSE rows as model features, the triplet RDM as the brain.

    Two independent behavioural measurements of the same objects (Hebart et al. 2020):
    ``features`` are the 66 SPoSE dimensions of each object (one item per concept, from
    ``spose_embedding66d_rescaled_48val_reordered.csv``, row order = RDM order) and
    ``brain_rdm`` is ``RDM48_triplet`` (1 - p(pair chosen together), every triplet
    sampled). ``brain`` is None (RDM only). ``superordinate`` is "natural" when the
    object's mean naturalness rating (``animacy.csv``, 1-7 scale) is at least 4, else
    "manmade".

    Parameters
    ----------
    root : path
        Folder holding :data:`THINGS48_FILES`.
    """
    import csv

    from raybrain.data.rdm import load_rdm

    r = Path(root)
    missing = [f for f in THINGS48_FILES if not (r / f).is_file()]
    if missing:
        raise SpecError(f"THINGS folder '{r}' lacks {missing}; expected {list(THINGS48_FILES)}")
    rdm = np.asarray(load_rdm(r / "RDM48_triplet.mat", key="RDM48_triplet"), dtype=np.float64)
    with (r / "rdm48_concepts_in_order.tsv").open(encoding="utf-8", newline="") as fh:
        order = list(csv.DictReader(fh, delimiter="\t"))
    names = [row["uniqueID"] for row in order]
    with (r / "spose_embedding66d_rescaled_48val_reordered.csv").open(encoding="utf-8",
                                                                       newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    if [int(row[0]) for row in rows] != [int(row["things_index0"]) for row in order]:
        raise SpecError("THINGS SPoSE rows are not in the RDM48 order of "
                        "rdm48_concepts_in_order.tsv")
    spose = np.array([[float(v) for v in row[2:]] for row in rows], dtype=np.float32)
    with (r / "animacy.csv").open(encoding="utf-8", newline="") as fh:
        natural = {row["uniqueID"]: float(row["natural_mean"]) for row in csv.DictReader(fh)}
    sup = {c: ("natural" if natural[c] >= 4.0 else "manmade") for c in names}
    return build_concept_data(names, names, spose, brain_rdm=rdm, categories=sup,
                              info={"source": "things48"})
