"""Deductive-reasoning problems and brain responses per problem (brain-guided LMs).

Problems
--------
A :class:`ProblemSet` holds problems as parallel lists: an id, the prompt text, the answer
options, the index of the correct option and a reasoning type. :func:`generate_problems`
writes four types in one small word-level language (tokens separated by single spaces,
so a word-level tokenizer sees exactly the words; entities are pseudo-words from
:data:`ENTITIES`); every problem asks whether a conclusion follows, options
``("yes", "no")``:

=============== ====================================== =========================
type            premises                               conclusion forms
=============== ====================================== =========================
``syllogism``   ``all x are y . all y are z .``        ``all x are z`` (valid),
                (premise order random)                 ``all z are x``,
                                                       ``all non z are non x`` (valid),
                                                       ``all non x are non z``
``transitive``  ``x is R than y . y is R than z .``   ``x is R than z`` (valid),
                R from :data:`RELATIONS`               ``z is R than x``,
                (order random)                         ``z is not R than x`` (valid),
                                                       ``x is not R than z``
``hypothetical`` ``if x then y . if y then z .``       ``if x then z`` (valid),
                (order random)                         ``if z then x``,
                                                       ``if not z then not x`` (valid),
                                                       ``if not x then not z``
``conditional`` ``if x then y .`` then a minor          modus ponens ``x`` -> ``y`` (valid),
                premise                                affirming the consequent
                                                       ``y`` -> ``x``, modus tollens
                                                       ``not y`` -> ``not x`` (valid),
                                                       denying the antecedent
                                                       ``not x`` -> ``not y``
=============== ====================================== =========================

The prompt is ``"<premise> . <premise> . therefore <conclusion> ?"``.

Every problem has two latent binary features, recorded in :attr:`ProblemSet.features`:

- ``direction``: the conclusion runs along the premises (from the chain's first term to
  its last; for ``conditional``, from antecedent to consequent: modus ponens and denying
  the antecedent) rather than against them;
- ``negation``: the conclusion is negated (contraposed for syllogisms and hypotheticals).

Validity is exactly ``direction XOR negation`` in every type: a linear function of the
two features cannot express it, and neither feature alone says anything about validity.
``negation`` is visible in the conclusion's words (``not``, ``non``); ``direction`` needs
the conclusion's terms bound to their roles in the premises (the premise order is
random, so no fixed position gives it away), unless ``lexical_roles`` makes the words
themselves cue it (:func:`generate_problems`).

Brain responses
---------------
:class:`BrainResponses` holds ``(n_repeats, n_problems, n_voxels)`` responses (voxels or
ROIs) in the problem set's order. :func:`synthetic_brain` makes responses with a known
answer; :func:`load_brain` reads a user's from ``.npy`` (+ an ids file), ``.npz`` or
HDF5 and matches their problem ids to the problem set.

Synthetic brain (``informative=True``): the clean signal of problem ``i`` is
``S_i = f_i @ W`` with ``f_i`` = (``2 * direction - 1``, ``2 * negation - 1``, the one-hot
of the type over :data:`TYPES`), ``W`` standard normal ``(2 + n_types, n_voxels)``; each
of the ``n_repeats`` repeats adds independent Gaussian noise of variance
``var(S) / snr``, with ``var(S)`` the signal's variance across problems averaged over
voxels. The signal tells *what the problem's
structure is* (its direction, its negation, its type), never the answer: validity is
the XOR of the two binary features, which no linear read-out of ``S`` gives. A
language-only learner gets only the XOR; a brain-guided one is also told the two
features the XOR is made of.

Null brain (``informative=False``): the same ``W`` and noise draws for a given ``rng``
state, but ``direction`` and ``negation`` drawn fresh (fair coins) and the type column a
random permutation of the problems' types: the same marginal statistics (type counts
kept exactly) and no information about the actual problems.

Controls for the comparison arms
--------------------------------
:func:`shuffle_responses` permutes whole problems' responses (every repeat the same way)
for the ``shuffled`` arm; :func:`surrogate_responses` makes the ``noise`` arm's Gaussian
surrogates (the same mean and covariance across voxels, no correspondence with any
problem); random directions of the same rank are drawn by
:func:`raybrain.align.predictivity.random_directions`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raybrain.errors import SpecError

__all__ = [
    "ENTITIES",
    "FEATURES",
    "RELATIONS",
    "TYPES",
    "BrainResponses",
    "ProblemSet",
    "generate_problems",
    "load_brain",
    "load_problems",
    "save_problems",
    "shuffle_responses",
    "split_problems",
    "surrogate_responses",
    "synthetic_brain",
]

#: Reasoning types written by :func:`generate_problems`, in the order of the one-hot.
TYPES = ("syllogism", "transitive", "hypothetical", "conditional")

#: Names of the binary latent features (columns of :attr:`ProblemSet.features`).
FEATURES = ("direction", "negation")

#: Entity / proposition words (pseudo-words, so no word carries a meaning of its own).
ENTITIES = (
    "bav", "cug", "dax", "fep", "gorp", "hib", "jul", "kesh", "lom", "mib", "nup", "pim",
    "quax", "rell", "sov", "tam", "vob", "wug", "yat", "zed", "blick", "chab", "drem",
    "flon", "grip", "hux", "jop", "krel", "lunt", "mosk", "nibe", "prot",
)

#: Relations of the ``transitive`` type (strict orders), one word before ``than``.
RELATIONS = ("taller", "older", "heavier", "faster")

OPTIONS = ("yes", "no")


@dataclass
class ProblemSet:
    """Problems with answer options, as parallel sequences.

    Attributes
    ----------
    ids : list of str, length n
        Unique problem ids.
    texts : list of str, length n
        Prompts (the answer follows after one space).
    options : list of tuple of str, length n
        Answer options of each problem (2 or more, distinct).
    correct : np.ndarray of int64, shape (n,)
        Index of the correct option in ``options[i]``.
    types : list of str, length n
        Reasoning type of each problem.
    features : np.ndarray of float64, shape (n, len(FEATURES)) or None
        Latent binary features (``direction``, ``negation``) of generated problems; None
        for user problem sets.
    """

    ids: list[str]
    texts: list[str]
    options: list[tuple[str, ...]]
    correct: np.ndarray
    types: list[str]
    features: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.ids)
        self.correct = np.asarray(self.correct, dtype=np.int64)
        for name, seq in (("texts", self.texts), ("options", self.options),
                          ("types", self.types), ("correct", self.correct)):
            if len(seq) != n:
                raise SpecError(f"problem set: {name} has {len(seq)} entries but there are "
                                f"{n} ids; expected one per problem")
        if len(set(self.ids)) != n:
            dup = next(i for k, i in enumerate(self.ids) if i in self.ids[:k])
            raise SpecError(f"problem set: problem id {dup!r} appears twice; expected unique ids")
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float64)
            if self.features.shape != (n, len(FEATURES)):
                raise SpecError(f"problem set: features must have shape ({n}, {len(FEATURES)}), "
                                f"got {self.features.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def type_names(self) -> list[str]:
        """Distinct types in order of first appearance."""
        return list(dict.fromkeys(self.types))

    def type_mask(self, name: str) -> np.ndarray:
        """Bool array of shape (n,): which problems are of type ``name``."""
        return np.array([t == name for t in self.types], dtype=bool)

    def subset(self, index) -> ProblemSet:
        """Problems at ``index`` (int array or bool mask), in that order."""
        idx = np.arange(len(self))[np.asarray(index)]
        return ProblemSet(
            ids=[self.ids[i] for i in idx], texts=[self.texts[i] for i in idx],
            options=[self.options[i] for i in idx], correct=self.correct[idx],
            types=[self.types[i] for i in idx],
            features=None if self.features is None else self.features[idx])

    def index_of(self, ids) -> np.ndarray:
        """Positions of problem ids in this set, shape (len(ids),) int64.

        Raises
        ------
        SpecError
            Naming the first id that is not in the set.
        """
        pos = {pid: k for k, pid in enumerate(self.ids)}
        out = np.empty(len(ids), dtype=np.int64)
        for k, pid in enumerate(ids):
            if pid not in pos:
                raise SpecError(f"problem id {pid!r} is not in the problem set")
            out[k] = pos[pid]
        return out


def _check_types(types, who: str) -> tuple[str, ...]:
    types = tuple(types)
    if not types:
        raise SpecError(f"{who}: at least one reasoning type is needed, got none")
    for t in types:
        if t not in TYPES:
            raise SpecError(f"{who}: unknown reasoning type {t!r}; expected one of {list(TYPES)}")
    if len(set(types)) != len(types):
        raise SpecError(f"{who}: reasoning types must be distinct, got {list(types)}")
    return types


def _chain(kind: str, x: str, y: str, z: str, direction: int, negation: int,
           rel: str) -> tuple[list[str], str]:
    """Premises (in chain order) and conclusion of a three-term chain problem."""
    a, b = (x, z) if direction else (z, x)
    if kind == "syllogism":
        premises = [f"all {x} are {y}", f"all {y} are {z}"]
        # contraposition with complement terms
        concl = f"all non {a} are non {b}" if negation else f"all {a} are {b}"
    elif kind == "hypothetical":
        premises = [f"if {x} then {y}", f"if {y} then {z}"]
        concl = f"if not {a} then not {b}" if negation else f"if {a} then {b}"
    else:  # transitive (a strict order: "not taller" is "shorter or equal")
        premises = [f"{x} is {rel} than {y}", f"{y} is {rel} than {z}"]
        concl = f"{a} is not {rel} than {b}" if negation else f"{a} is {rel} than {b}"
    return premises, concl


def _conditional(x: str, y: str, direction: int, negation: int) -> tuple[list[str], str]:
    """Modus ponens / tollens and the two fallacies (``if x then y``)."""
    if direction and not negation:  # modus ponens
        minor, concl = x, y
    elif not direction and not negation:  # affirming the consequent
        minor, concl = y, x
    elif not direction and negation:  # modus tollens
        minor, concl = f"not {y}", f"not {x}"
    else:  # denying the antecedent
        minor, concl = f"not {x}", f"not {y}"
    return [f"if {x} then {y}", minor], concl


def generate_problems(n: int, seed: int, types=TYPES, id_prefix: str = "p",
                      n_entities: int = len(ENTITIES), shuffle_premises: bool = True,
                      lexical_roles: float = 0.0) -> ProblemSet:
    """Generate deductive-reasoning problems (module docstring), deterministic in ``seed``.

    Types cycle through ``types`` (so counts per type differ by at most one), and within
    each type the four (direction, negation) forms cycle too, so validity is balanced;
    problem order is then shuffled. Entities are distinct words of the first
    ``n_entities`` of :data:`ENTITIES` (three per chain, two per ``conditional``).

    Parameters
    ----------
    n : int
        Number of problems (>= 1).
    seed : int
        Seed of a ``numpy.random.default_rng``; the same arguments give the same problems.
    types : sequence of str
        Reasoning types to write (a subset of :data:`TYPES`). Held-out types for transfer
        are generated separately, e.g. ``generate_problems(200, 1, types=("transitive",))``
        (with another seed or id prefix), or split off by :func:`split_problems`.
    id_prefix : str
        Ids are ``f"{id_prefix}{k}"``.
    n_entities : int
        Entity words in use (3 to 32): fewer words, every word and pair seen more often.
    shuffle_premises : bool
        Present the two chain premises in random order (True) or in chain order (False:
        the chain's first term is then always the problem's first entity).
    lexical_roles : float
        Fraction of problems (each drawn independently) whose terms come from role pools:
        the entity words in use are dealt into three pools by index (``k % 3``); the term a
        forward conclusion starts from (a chain's first term; a conditional's consequent)
        comes from pool 0, a chain's middle term from pool 1, the other term from pool 2.
        In those problems ``direction`` is also a lexical property (is the conclusion's
        first entity a pool-0 word?), as content can cue logical form in everyday
        arguments; in the others it is carried by the premises' structure alone
        (variable binding). 0 (default): no lexical cue at all.

    Returns
    -------
    ProblemSet
        With ``features`` of shape (n, 2) (direction, negation) and options ("yes", "no");
        ``correct`` is 0 ("yes") when the conclusion follows.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise SpecError(f"number of problems must be an integer >= 1, got {n!r}")
    types = _check_types(types, "generate_problems")
    if (isinstance(n_entities, bool) or not isinstance(n_entities, (int, np.integer))
            or not 3 <= n_entities <= len(ENTITIES)):
        raise SpecError(f"n_entities must be an integer in [3, {len(ENTITIES)}], got "
                        f"{n_entities!r}")
    try:
        lex = float(lexical_roles)
    except (TypeError, ValueError):
        lex = float("nan")
    if not 0.0 <= lex <= 1.0:
        raise SpecError(f"lexical_roles must be a fraction in [0, 1], got {lexical_roles!r}")
    rng = np.random.default_rng(seed)
    kinds = [types[k % len(types)] for k in range(n)]
    forms = np.array([(k // len(types)) % 4 for k in range(n)])
    order = rng.permutation(n)
    pools = [np.arange(int(n_entities))[j::3] for j in range(3)]
    ids, texts, correct, out_types, feats = [], [], [], [], []
    for k, i in enumerate(order):
        kind = kinds[i]
        direction, negation = int(forms[i] // 2), int(forms[i] % 2)
        if rng.random() < lex:
            lead, mid, other = (int(rng.choice(p)) for p in pools)
            words = [lead, mid, other] if kind != "conditional" else [other, lead, mid]
        else:
            words = rng.choice(int(n_entities), size=3, replace=False).tolist()
        x, y, z = (ENTITIES[w] for w in words)
        rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        if kind == "conditional":
            premises, concl = _conditional(x, y, direction, negation)
        else:
            premises, concl = _chain(kind, x, y, z, direction, negation, rel)
            if rng.integers(2) and shuffle_premises:
                premises = premises[::-1]
        valid = direction ^ negation
        ids.append(f"{id_prefix}{k}")
        texts.append(f"{premises[0]} . {premises[1]} . therefore {concl} ?")
        correct.append(0 if valid else 1)
        out_types.append(kind)
        feats.append((direction, negation))
    return ProblemSet(ids=ids, texts=texts, options=[OPTIONS] * n, correct=np.array(correct),
                      types=out_types, features=np.array(feats, dtype=np.float64))


def split_problems(problems: ProblemSet, test_fraction: float, seed: int,
                   held_out_types=()) -> tuple[ProblemSet, ProblemSet, ProblemSet]:
    """Split into training, in-type test and held-out-type test problems.

    Problems of ``held_out_types`` all go to the third set (never trained on, never used
    to fit directions: the transfer test). The others are split per type: a fraction
    ``test_fraction`` of each type (rounded, at least one when the type has two or more
    problems) goes to the in-type test set, drawn with ``numpy.random.default_rng(seed)``.

    Returns
    -------
    train, test, transfer : ProblemSet
        Each keeps the original relative order.
    """
    try:
        frac = float(test_fraction)
    except (TypeError, ValueError):
        frac = float("nan")
    if not 0.0 < frac < 1.0:
        raise SpecError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    held = set(held_out_types)
    unknown = held - set(problems.types)
    if unknown:
        raise SpecError(f"held-out type {sorted(unknown)[0]!r} has no problems in the set; "
                        f"types present: {problems.type_names}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(problems), dtype=bool)
    is_held = np.array([t in held for t in problems.types], dtype=bool)
    for t in problems.type_names:
        if t in held:
            continue
        idx = np.flatnonzero(problems.type_mask(t))
        k = int(round(frac * idx.size))
        if idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        is_test[rng.choice(idx, size=k, replace=False)] = True
    train = ~is_test & ~is_held
    if not train.any():
        raise SpecError("split_problems left no training problems; lower test_fraction or "
                        "hold out fewer types")
    return problems.subset(train), problems.subset(is_test), problems.subset(is_held)


# ----------------------------------------------------------------------------- JSONL files


def load_problems(path: str | os.PathLike) -> ProblemSet:
    """Read a user problem set from JSONL.

    One JSON object per line with keys ``text`` (str), ``options`` (list of >= 2
    distinct str), ``correct`` (int index into ``options``, or the correct option's
    string) and ``type`` (str); an optional ``id`` (str; default ``"line<k>"``, the
    1-based line number). Blank lines are skipped; other keys are errors.

    Raises
    ------
    SpecError
        One line naming the file and the line number of the first malformed row.
    """
    p = Path(path)
    where = f"problem file '{os.fspath(path)}'"
    if not p.is_file():
        raise SpecError(f"{where} not found; expected a JSONL file (one problem per line)")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    ids, texts, options, correct, types = [], [], [], [], []
    allowed = {"id", "text", "options", "correct", "type"}
    for k, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        at = f"{where} line {k}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{at}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise SpecError(f"{at}: expected a JSON object, got {type(row).__name__}")
        extra = sorted(set(row) - allowed)
        if extra:
            raise SpecError(f"{at}: unknown key {extra[0]!r}; expected {sorted(allowed)}")
        for key in ("text", "options", "correct", "type"):
            if key not in row:
                raise SpecError(f"{at}: missing key {key!r}")
        text, opts, corr, typ = row["text"], row["options"], row["correct"], row["type"]
        if not isinstance(text, str) or not text.strip():
            raise SpecError(f"{at}: 'text' must be a non-empty string, got {text!r}")
        if (not isinstance(opts, list) or len(opts) < 2
                or not all(isinstance(o, str) and o.strip() for o in opts)):
            raise SpecError(f"{at}: 'options' must be a list of at least 2 non-empty strings, "
                            f"got {opts!r}")
        if len(set(opts)) != len(opts):
            raise SpecError(f"{at}: 'options' must be distinct, got {opts!r}")
        if isinstance(corr, str):
            if corr not in opts:
                raise SpecError(f"{at}: 'correct' {corr!r} is not one of the options {opts!r}")
            corr = opts.index(corr)
        elif isinstance(corr, bool) or not isinstance(corr, int) or not 0 <= corr < len(opts):
            raise SpecError(f"{at}: 'correct' must be an option index in [0, {len(opts) - 1}] "
                            f"or an option string, got {row['correct']!r}")
        if not isinstance(typ, str) or not typ.strip():
            raise SpecError(f"{at}: 'type' must be a non-empty string, got {typ!r}")
        pid = row.get("id", f"line{k}")
        if not isinstance(pid, str) or not pid:
            raise SpecError(f"{at}: 'id' must be a non-empty string, got {pid!r}")
        if pid in ids:
            raise SpecError(f"{at}: problem id {pid!r} already used on an earlier line")
        ids.append(pid)
        texts.append(text)
        options.append(tuple(opts))
        correct.append(corr)
        types.append(typ)
    if not ids:
        raise SpecError(f"{where} holds no problems; expected one JSON object per line")
    return ProblemSet(ids=ids, texts=texts, options=options, correct=np.array(correct),
                      types=types)


def save_problems(problems: ProblemSet, path: str | os.PathLike) -> None:
    """Write a problem set as JSONL (the layout :func:`load_problems` reads)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(problems)):
            f.write(json.dumps({"id": problems.ids[i], "text": problems.texts[i],
                                "options": list(problems.options[i]),
                                "correct": int(problems.correct[i]),
                                "type": problems.types[i]}) + "\n")


# ------------------------------------------------------------------------- brain responses


@dataclass
class BrainResponses:
    """Brain responses per problem.

    Attributes
    ----------
    repeats : np.ndarray of float32, shape (n_repeats, n_problems, n_voxels)
        Row ``i`` belongs to problem ``ids[i]``. With ``n_repeats >= 2`` the noise
        ceiling can be estimated (:func:`raybrain.align.predictivity.noise_ceiling`).
    ids : list of str, length n_problems
    """

    repeats: np.ndarray
    ids: list[str] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        """Mean over repeats, shape (n_problems, n_voxels), float32."""
        return self.repeats.mean(axis=0, dtype=np.float64).astype(np.float32)

    @property
    def n_voxels(self) -> int:
        return int(self.repeats.shape[2])

    def subset(self, index) -> BrainResponses:
        idx = np.arange(self.repeats.shape[1])[np.asarray(index)]
        return BrainResponses(self.repeats[:, idx], [self.ids[i] for i in idx])


def synthetic_brain(problems: ProblemSet, rng: np.random.Generator, n_voxels: int = 100,
                    snr: float = 0.5, n_repeats: int = 2,
                    informative: bool = True) -> BrainResponses:
    """Synthetic responses with a known problem-structure subspace (module docstring).

    Parameters
    ----------
    problems : ProblemSet
        Generated problems (``features`` set, types within :data:`TYPES`).
    rng : np.random.Generator
        Draws, in this order: ``W`` (2 + len(TYPES), n_voxels), the noise
        (n_repeats, n, n_voxels), then (null only) the surrogate features. The same state
        gives the informative and the null brain the same ``W`` and noise.
    n_voxels : int
        Voxels (or ROIs), >= 1.
    snr : float
        Signal-to-noise variance ratio of a single repeat, > 0. The split-half
        reliability of a voxel is about ``snr / (1 + snr)`` and that of the mean of two
        repeats ``2 snr / (1 + 2 snr)``.
    n_repeats : int
        Repeats (>= 1; 2 or more for a noise ceiling).
    informative : bool
        False: the null brain.

    Returns
    -------
    BrainResponses
        ``repeats`` of shape (n_repeats, n, n_voxels), ids of ``problems``.
    """
    if problems.features is None:
        raise SpecError("synthetic_brain needs generated problems (with latent features); "
                        "user problem sets need the user's brain responses")
    bad = sorted(set(problems.types) - set(TYPES))
    if bad:
        raise SpecError(f"synthetic_brain: unknown reasoning type {bad[0]!r}; expected "
                        f"types in {list(TYPES)}")
    if not isinstance(n_voxels, (int, np.integer)) or n_voxels < 1:
        raise SpecError(f"synthetic brain n_voxels must be an integer >= 1, got {n_voxels!r}")
    if not isinstance(n_repeats, (int, np.integer)) or n_repeats < 1:
        raise SpecError(f"synthetic brain n_repeats must be an integer >= 1, got {n_repeats!r}")
    try:
        snr_f = float(snr)
    except (TypeError, ValueError):
        snr_f = float("nan")
    if not (np.isfinite(snr_f) and snr_f > 0):
        raise SpecError(f"synthetic brain snr must be a finite number > 0, got {snr!r}")
    n = len(problems)
    k = len(FEATURES) + len(TYPES)
    w = rng.standard_normal((k, n_voxels))
    noise = rng.standard_normal((n_repeats, n, n_voxels))
    type_idx = np.array([TYPES.index(t) for t in problems.types])
    if informative:
        binary = problems.features
    else:
        binary = rng.integers(0, 2, size=(n, len(FEATURES))).astype(np.float64)
        type_idx = type_idx[rng.permutation(n)]
    f = np.concatenate([2.0 * binary - 1.0, np.eye(len(TYPES))[type_idx]], axis=1)
    signal = f @ w  # (n, n_voxels)
    s_var, n_var = float(signal.var(axis=0).mean()), float(noise.var())
    s_var, n_var = s_var or 1.0, n_var or 1.0
    noise *= np.sqrt(s_var / (snr_f * n_var))
    return BrainResponses((signal[None] + noise).astype(np.float32), list(problems.ids))


def shuffle_responses(brain: BrainResponses, rng: np.random.Generator,
                      return_permutation: bool = False):
    """The ``shuffled`` arm: permute whole problems' responses across problems.

    Row ``i`` of every repeat becomes row ``perm[i]`` of the input (the same permutation
    for every repeat, so each problem keeps a coherent set of repeats and the noise
    ceiling is unchanged); ids stay in place, so responses no longer belong to their
    problems. ``perm = rng.permutation(n_problems)``.

    Returns
    -------
    BrainResponses, and the permutation (int64, shape (n_problems,)) if asked.
    """
    perm = rng.permutation(brain.repeats.shape[1]).astype(np.int64)
    out = BrainResponses(brain.repeats[:, perm], list(brain.ids))
    return (out, perm) if return_permutation else out


def surrogate_responses(brain: BrainResponses, rng: np.random.Generator) -> BrainResponses:
    """The ``noise`` arm: Gaussian surrogates with the responses' covariance, no problem in them.

    With ``Y_r`` the responses of repeat ``r`` (n_problems, n_voxels), ``m_r`` their mean
    over problems and ``G`` a standard-normal (n_problems, n_problems) matrix drawn once::

        surrogate_r = m_r + G (Y_r - m_r) / sqrt(n_problems - 1)

    Each surrogate row is a random Gaussian mixture of every problem's centred responses,
    so it is Gaussian with expected covariance across voxels equal to the sample
    covariance of ``Y_r`` (``E[x x^T] = (Y_r - m_r)^T (Y_r - m_r) / (n - 1)``), keeps the
    voxel means, and belongs to no problem. The same ``G`` serves every repeat, so a
    surrogate problem is the same mixture in each repeat and the repeats stay as
    reliable as the data's (as :func:`shuffle_responses` keeps them; a permutation is
    the special case of ``G`` with one 1 per row).

    Parameters
    ----------
    brain : BrainResponses
        ``repeats`` of shape (n_repeats, n_problems >= 2, n_voxels).
    rng : np.random.Generator
        Draws ``G``.

    Returns
    -------
    BrainResponses
        Float32 ``repeats`` of the same shape; the ids stay in place.
    """
    arr = np.asarray(brain.repeats, dtype=np.float64)
    n = arr.shape[1]
    if n < 2:
        raise SpecError(f"surrogate responses need at least 2 problems, got {n}")
    g = rng.standard_normal((n, n))
    mean = arr.mean(axis=1, keepdims=True)
    out = mean + np.einsum("ij,rjv->riv", g, arr - mean) / np.sqrt(n - 1)
    return BrainResponses(out.astype(np.float32), list(brain.ids))


def _read_ids(path: Path, where: str) -> list[str]:
    if not path.is_file():
        raise SpecError(f"{where}: problem ids file '{path}' not found; expected one id per "
                        f"line")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def load_brain(path: str | os.PathLike, problems: ProblemSet, *, ids_path=None,
               key: str = "responses", ids_key: str = "problem_ids") -> BrainResponses:
    """Read a user's brain responses per problem and put them in the problem set's order.

    Layouts (responses of shape (n_rows, n_voxels), or (n_repeats, n_rows, n_voxels)
    when repeats are stored for the noise ceiling):

    - ``.npy``: the responses; problem ids in a text file ``ids_path`` (one per line;
      default: the same path with suffix ``.ids.txt``);
    - ``.npz``: arrays ``key`` and ``ids_key`` (ids as a string array);
    - ``.h5``/``.hdf5``: datasets ``key`` and ``ids_key`` (ids as strings or bytes).

    Parameters
    ----------
    path : str or os.PathLike
    problems : ProblemSet
        Every problem needs exactly one row; rows are reordered to ``problems.ids``.
    ids_path, key, ids_key
        As above.

    Returns
    -------
    BrainResponses
        ``repeats`` float32 of shape (n_repeats, len(problems), n_voxels).

    Raises
    ------
    SpecError
        Missing/unreadable file or array, wrong rank, non-finite values, a count of ids
        that differs from the rows, a duplicate id, an id not in the problem set (extra)
        or a problem without a row (missing): one line naming the id.
    """
    p = Path(path)
    where = f"brain file '{os.fspath(path)}'"
    if not p.is_file():
        raise SpecError(f"{where} not found; expected .npy (+ ids file), .npz or .h5/.hdf5")
    name = p.name.lower()
    try:
        if name.endswith(".npy"):
            arr = np.load(p, allow_pickle=False)
            ids = _read_ids(Path(ids_path) if ids_path else p.with_suffix(".ids.txt"), where)
        elif name.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                for k in (key, ids_key):
                    if k not in z.files:
                        raise SpecError(f"{where} has no array {k!r}; it holds {sorted(z.files)}")
                arr, ids = z[key], [str(v) for v in z[ids_key].tolist()]
        elif name.endswith((".h5", ".hdf5")):
            import h5py

            with h5py.File(p, "r") as f:
                for k in (key, ids_key):
                    if k not in f or not isinstance(f[k], h5py.Dataset):
                        raise SpecError(f"{where} has no dataset {k!r}; it holds {sorted(f)}")
                arr = f[key][()]
                ids = [v.decode() if isinstance(v, bytes) else str(v) for v in f[ids_key][()]]
        else:
            raise SpecError(f"{where}: unknown format; expected .npy, .npz or .h5/.hdf5, got "
                            f"'{p.name}'")
    except SpecError:
        raise
    except Exception as exc:  # corrupt files: numpy, zipfile and h5py raise many types
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"{where} could not be read ({type(exc).__name__}: {msg})") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise SpecError(f"{where}: responses must be (n_problems, n_voxels) or (n_repeats, "
                        f"n_problems, n_voxels), got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise SpecError(f"{where}: responses must be numeric, got dtype {arr.dtype}")
    if len(ids) != arr.shape[1]:
        raise SpecError(f"{where}: {len(ids)} problem ids for {arr.shape[1]} rows of responses; "
                        f"expected one id per row")
    bad = ~np.isfinite(arr)
    if bad.any():
        rep, row, vox = (int(v) for v in np.argwhere(bad)[0])
        raise SpecError(f"{where}: repeat {rep}, problem {ids[row]!r}, voxel {vox} is "
                        f"{arr[rep, row, vox]}; expected finite responses")
    row_of: dict[str, int] = {}
    for r, pid in enumerate(ids):
        if pid in row_of:
            raise SpecError(f"{where}: problem id {pid!r} has two rows ({row_of[pid]} and {r}); "
                            f"expected one row per problem")
        row_of[pid] = r
    wanted = set(problems.ids)
    for r, pid in enumerate(ids):
        if pid not in wanted:
            raise SpecError(f"{where}: row {r} has problem id {pid!r}, which is not in the "
                            f"problem set (extra id)")
    for pid in problems.ids:
        if pid not in row_of:
            raise SpecError(f"{where}: problem id {pid!r} of the problem set has no row of "
                            f"responses (missing id)")
    order = np.array([row_of[pid] for pid in problems.ids], dtype=np.int64)
    return BrainResponses(arr[:, order].astype(np.float32), list(problems.ids))
