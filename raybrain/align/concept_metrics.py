"""Evaluation metrics of concept representations (numpy / scikit-learn, no gradient).

Used on held-out concepts by the brain-in-the-loop method; each is defined precisely in
its docstring:

- :func:`topk_matching_rate`: how often a plan's (or a score matrix's) top-k entries of a
  row contain the row's true partner. On a GW plan between the model's and the brain's
  RDMs it is the *matching rate*; on a brain-by-model similarity matrix it is the
  *retrieval accuracy*.
- :func:`silhouette_by_category`: silhouette coefficient of the items' superordinate
  categories in a representation (``sklearn.metrics.silhouette_score``).
- :func:`one_shot_accuracy`: nearest-prototype classification from one exemplar per class.
- :func:`category_one_shot_accuracy`: one-shot classification of *new concepts* into
  categories (e.g. living / non-living) from one exemplar of one concept per category.
- :func:`permutation_null`: matching rates of a plan against random correspondences.

Torch tensors are accepted (detached, moved to the CPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

__all__ = ["topk_matching_rate", "silhouette_by_category", "one_shot_accuracy",
           "category_one_shot_accuracy", "permutation_null", "cosine_distances"]


def _np(x: Any, dtype=None):
    import numpy as np

    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=dtype)


def _matrix(x: Any, name: str, fn: str) -> np.ndarray:
    import numpy as np

    a = _np(x, np.float64)
    if a.ndim != 2 or min(a.shape) < 1:
        raise SpecError(f"{fn}: {name} must be 2-D, got shape {a.shape}")
    if np.isnan(a).any():
        raise SpecError(f"{fn}: {name} holds NaN")
    return a


def cosine_distances(x: Any) -> np.ndarray:
    """``1 - cos`` between the rows of ``x``; shape (n, n), zero diagonal, values in [0, 2].

    A zero row has distance 1 to everything else.
    """
    import numpy as np

    a = _matrix(x, "x", "cosine_distances")
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    u = np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)
    d = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def topk_matching_rate(plan: Any, truth: Any, k: int = 1) -> float:
    """Fraction of rows whose ``k`` largest entries include the true partner column.

    ``rate = 1/n sum_i [truth[i] in top_k(plan[i, :])]`` (ties broken towards the lower
    column index). Chance level for a random plan is ``k / m``.

    Parameters
    ----------
    plan : array_like or torch.Tensor, shape (n, m)
        A transport plan, log plan or similarity matrix (larger = more likely partner).
    truth : array_like of int, shape (n,)
        Partner column of each row (e.g. ``arange(n)`` when both sides list the same
        concepts in the same order).
    k : int
        1 <= k <= m.

    Returns
    -------
    float in [0, 1]
    """
    import numpy as np

    fn = "topk_matching_rate"
    p = _matrix(plan, "plan", fn)
    t = _np(truth)
    n, m = p.shape
    if t.shape != (n,) or t.dtype.kind not in "iu":
        raise SpecError(f"{fn}: truth must be int column indices of shape ({n},), got "
                        f"{t.dtype} {t.shape}")
    if t.min() < 0 or t.max() >= m:
        raise SpecError(f"{fn}: truth must index columns in [0, {m}), got "
                        f"[{t.min()}, {t.max()}]")
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= m:
        raise SpecError(f"{fn}: k must be an integer in [1, {m}], got {k!r}")
    top = np.argsort(-p, axis=1, kind="stable")[:, : int(k)]
    return float(np.mean((top == t[:, None]).any(axis=1)))


def permutation_null(plan: Any, k: int = 1, n_perm: int = 1000, seed: int = 0) -> np.ndarray:
    """Top-k matching rates of ``plan`` against ``n_perm`` uniformly random correspondences.

    The null distribution of :func:`topk_matching_rate` when the plan carries no
    information about the truth; its mean is ``k / m``.

    Parameters
    ----------
    plan : array_like, shape (n, m) with n <= m
    k : int
    n_perm : int
    seed : int
        ``np.random.default_rng(seed)`` draws the correspondences (``permutation(m)[:n]``).

    Returns
    -------
    np.ndarray of float64, shape (n_perm,)
    """
    import numpy as np

    p = _matrix(plan, "plan", "permutation_null")
    n, m = p.shape
    if n > m:
        raise SpecError(f"permutation_null: plan needs n <= m rows, got shape {p.shape}")
    rng = np.random.default_rng(seed)
    top = np.argsort(-p, axis=1, kind="stable")[:, : int(k)]
    out = np.empty(int(n_perm))
    for r in range(int(n_perm)):
        t = rng.permutation(m)[:n]
        out[r] = np.mean((top == t[:, None]).any(axis=1))
    return out


def _labels(labels: Any, n: int, fn: str, what: str) -> np.ndarray:
    import numpy as np

    lab = np.asarray(labels, dtype=object)
    if lab.shape != (n,):
        raise SpecError(f"{fn}: {what} must have one entry per item ({n}), got shape "
                        f"{lab.shape}")
    missing = [i for i, v in enumerate(lab) if v is None or (isinstance(v, float) and v != v)
               or (isinstance(v, str) and not v.strip())]
    if missing:
        raise SpecError(f"{fn}: {len(missing)} item(s) have no {what} (first: item "
                        f"{missing[0]}); expected every item to have one")
    return lab


def silhouette_by_category(embeddings: Any, categories: Any, metric: str = "cosine") -> float:
    """Silhouette coefficient of the items' categories in a representation.

    ``sklearn.metrics.silhouette_score(embeddings, categories, metric=metric)``: the mean
    over items of ``(b - a) / max(a, b)`` with ``a`` the mean distance to the other items of
    its category and ``b`` the smallest mean distance to the items of another category.
    In [-1, 1]; higher means the categories form tighter, better separated clusters.

    Parameters
    ----------
    embeddings : array_like, shape (n_items, dim)
    categories : array_like, shape (n_items,)
        Category of each item (e.g. superordinate: living / non-living). None, NaN or an
        empty string is an item without a category, which is an error.
    metric : str
        Distance (scikit-learn name), cosine by default.

    Returns
    -------
    float

    Raises
    ------
    SpecError
        Items without a category; fewer than 2 or as many categories as items.
    """
    import numpy as np
    from sklearn.metrics import silhouette_score

    fn = "silhouette_by_category"
    x = _matrix(embeddings, "embeddings", fn)
    lab = _labels(categories, x.shape[0], fn, "category")
    _, codes = np.unique(lab.astype(str), return_inverse=True)
    n_cat = codes.max() + 1
    if not 2 <= n_cat <= x.shape[0] - 1:
        raise SpecError(f"{fn}: needs between 2 and n_items - 1 ({x.shape[0] - 1}) "
                        f"categories, got {n_cat}")
    return float(silhouette_score(x, codes, metric=metric))


def one_shot_accuracy(embeddings: Any, labels: Any, n_episodes: int = 20,
                      seed: int = 0) -> float:
    """One-shot classification accuracy by nearest class prototype (cosine).

    Each episode draws one *support* exemplar per class uniformly at random; every other
    item (the queries) is assigned the class of its most cosine-similar support
    exemplar (the one-exemplar class prototype). The accuracy is the fraction of correct
    queries, pooled over ``n_episodes`` episodes. Chance level is ``1 / n_classes``.

    Parameters
    ----------
    embeddings : array_like, shape (n_items, dim)
    labels : array_like, shape (n_items,)
        Class of each item (e.g. the held-out concept it shows). Classes with a single
        item serve only as supports.
    n_episodes : int
    seed : int
        ``np.random.default_rng(seed)`` draws the supports: the same inputs and seed give
        the same number.

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    SpecError
        Items without a label, fewer than 2 classes, or no class with 2 or more items
        (nothing to query).
    """
    import numpy as np

    fn = "one_shot_accuracy"
    x = _matrix(embeddings, "embeddings", fn)
    lab = _labels(labels, x.shape[0], fn, "label")
    classes, codes = np.unique(lab.astype(str), return_inverse=True)
    counts = np.bincount(codes)
    if len(classes) < 2 or counts.max() < 2:
        raise SpecError(f"{fn}: needs >= 2 classes and one class with >= 2 items, got "
                        f"{len(classes)} classes of at most {counts.max()} items")
    if isinstance(n_episodes, bool) or int(n_episodes) != n_episodes or n_episodes < 1:
        raise SpecError(f"{fn}: n_episodes must be an integer >= 1, got {n_episodes!r}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    members = [np.flatnonzero(codes == c) for c in range(len(classes))]
    rng = np.random.default_rng(seed)
    correct = total = 0
    for _ in range(int(n_episodes)):
        support = np.array([rng.choice(m) for m in members])
        query = np.setdiff1d(np.arange(x.shape[0]), support)
        pred = np.argmax(u[query] @ u[support].T, axis=1)
        correct += int(np.sum(pred == codes[query]))
        total += len(query)
    return correct / total


def category_one_shot_accuracy(embeddings: Any, concepts: Any, categories: Any,
                               n_episodes: int = 100, seed: int = 0) -> float:
    """One-shot classification of new concepts into categories (cosine nearest support).

    Each episode draws, for every category, one of its concepts uniformly at random and
    one exemplar of that concept uniformly at random: the category's single *support*.
    Every item of the concepts not drawn (the queries) is assigned the category of its
    most cosine-similar support. The accuracy is the fraction of correct queries, pooled
    over ``n_episodes`` episodes. Chance level is ``1 / n_categories`` for balanced
    categories. A query never shares its concept with a support, so the score measures how
    a representation groups *different* concepts by category (e.g. superordinate
    living / non-living: the brain's hierarchy), not how it recognises a concept.

    Parameters
    ----------
    embeddings : array_like, shape (n_items, dim)
    concepts : array_like, shape (n_items,)
        Concept of each item.
    categories : array_like, shape (n_items,)
        Category of each item; must be the same for every item of a concept. None, NaN
        or an empty string is an error.
    n_episodes : int
    seed : int
        ``np.random.default_rng(seed)`` draws the supports (categories in sorted order;
        for each, a concept among its concepts sorted by name, then an exemplar of it in
        item order): the same inputs and seed give the same number.

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    SpecError
        Items without a concept or category, a concept in two categories, fewer than 2
        categories, or no category with 2 or more concepts (nothing to query).
    """
    import numpy as np

    fn = "category_one_shot_accuracy"
    x = _matrix(embeddings, "embeddings", fn)
    con = _labels(concepts, x.shape[0], fn, "concept").astype(str)
    cat = _labels(categories, x.shape[0], fn, "category").astype(str)
    if isinstance(n_episodes, bool) or int(n_episodes) != n_episodes or n_episodes < 1:
        raise SpecError(f"{fn}: n_episodes must be an integer >= 1, got {n_episodes!r}")
    cat_names = sorted(set(cat.tolist()))
    concept_cat: dict[str, str] = {}
    for c, k in zip(con.tolist(), cat.tolist(), strict=True):
        if concept_cat.setdefault(c, k) != k:
            raise SpecError(f"{fn}: concept {c!r} has items in categories "
                            f"{concept_cat[c]!r} and {k!r}; expected one category per concept")
    members = {k: sorted(c for c, kk in concept_cat.items() if kk == k) for k in cat_names}
    if len(cat_names) < 2 or max(len(m) for m in members.values()) < 2:
        raise SpecError(f"{fn}: needs >= 2 categories and one category with >= 2 concepts, "
                        f"got {len(cat_names)} categories of at most "
                        f"{max(len(m) for m in members.values())} concepts")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    items_of = {c: np.flatnonzero(con == c) for c in concept_cat}
    code = np.array([cat_names.index(k) for k in cat.tolist()])
    rng = np.random.default_rng(seed)
    correct = total = 0
    for _ in range(int(n_episodes)):
        chosen, support = [], []
        for k in cat_names:  # per category: a concept, then one of its exemplars
            c = members[k][rng.integers(len(members[k]))]
            chosen.append(c)
            support.append(items_of[c][rng.integers(len(items_of[c]))])
        query = np.flatnonzero(~np.isin(con, chosen))
        pred = np.argmax(u[query] @ u[support].T, axis=1)
        correct += int(np.sum(pred == code[query]))
        total += len(query)
    return correct / total
