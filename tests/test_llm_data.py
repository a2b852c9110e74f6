"""Reasoning problems, user problem files, synthetic and user brain responses, controls."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from raybrain.data.reasoning import (
    ENTITIES,
    RELATIONS,
    TYPES,
    BrainResponses,
    ProblemSet,
    generate_problems,
    load_brain,
    load_problems,
    save_problems,
    shuffle_responses,
    split_problems,
    surrogate_responses,
    synthetic_brain,
)
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- an independent logic checker


def _atoms(words):
    return [w for w in words if w in ENTITIES]


def _prop_valid(premises, conclusion) -> bool:
    """Brute-force truth tables: premises/conclusion are functions of an assignment."""
    names = sorted({a for f in premises + [conclusion] for a in f[1]})
    for values in itertools.product([False, True], repeat=len(names)):
        v = dict(zip(names, values))
        if all(f[0](v) for f in premises) and not conclusion[0](v):
            return False
    return True


def _parse_literal(words):
    """'x' or 'not x' -> (fn, atoms)."""
    if words[0] == "not":
        a = words[1]
        return (lambda v, a=a: not v[a]), [a]
    a = words[0]
    return (lambda v, a=a: v[a]), [a]


def _parse_clause(words):
    """A premise or conclusion of any type as a propositional formula over one individual.

    'all [non] a are [non] b' (monadic universal: valid over all individuals iff valid for
    one arbitrary individual) and 'if [not] a then [not] b' are implications; atoms are
    the entity words.
    """
    if words[0] in ("all", "if"):
        sep = "are" if words[0] == "all" else "then"
        k = words.index(sep)
        neg = "non" if words[0] == "all" else "not"
        left = ["not" if w == neg else w for w in words[1:k]]
        right = ["not" if w == neg else w for w in words[k + 1:]]
        fa, aa = _parse_literal(left)
        fb, ab = _parse_literal(right)
        return (lambda v: (not fa(v)) or fb(v)), aa + ab
    return _parse_literal(words)


def _order_valid(text: str) -> bool:
    """Transitive problems: valid iff the conclusion holds in every strict order of the
    entities consistent with the premises (brute force over permutations)."""
    body = text.removesuffix(" ?").split(" . ")
    conclusion = body[2].removeprefix("therefore ").split()
    facts = [c.split() for c in body[:2]]
    words = sorted(set(_atoms(text.split())))

    def holds(clause, rank):  # [a, 'is', ('not',) rel, 'than', b]; rank: higher = more
        negated = clause[2] == "not"
        rel, b = clause[-3], clause[-1]
        assert rel in RELATIONS
        return (rank[clause[0]] > rank[b]) != negated

    for perm in itertools.permutations(range(len(words))):
        rank = dict(zip(words, perm))
        if all(holds(f, rank) for f in facts) and not holds(conclusion, rank):
            return False
    return True


def _valid(text: str, kind: str) -> bool:
    if kind == "transitive":
        return _order_valid(text)
    parts = text.removesuffix(" ?").split(" . ")
    premises = [_parse_clause(p.split()) for p in parts[:2]]
    conclusion = _parse_clause(parts[2].removeprefix("therefore ").split())
    return _prop_valid(premises, conclusion)


def test_generated_answers_match_an_independent_logic_checker():
    ps = generate_problems(240, seed=3)
    assert set(ps.types) == set(TYPES)
    for i in range(len(ps)):
        valid = _valid(ps.texts[i], ps.types[i])
        assert ps.correct[i] == (0 if valid else 1), ps.texts[i]
        d, n = ps.features[i]
        assert valid == bool(int(d) ^ int(n))  # validity is direction XOR negation
    # balanced: each type has every (direction, negation) form equally often
    for t in TYPES:
        m = ps.type_mask(t)
        forms = ps.features[m, 0] * 2 + ps.features[m, 1]
        assert np.bincount(forms.astype(int), minlength=4).tolist() == [15, 15, 15, 15]


def test_generator_is_deterministic_and_knobs_act():
    a = generate_problems(50, seed=1)
    b = generate_problems(50, seed=1)
    c = generate_problems(50, seed=2)
    assert a.texts == b.texts and np.array_equal(a.correct, b.correct)
    assert a.texts != c.texts
    only = generate_problems(20, seed=0, types=("transitive",))
    assert set(only.types) == {"transitive"}
    few = generate_problems(200, seed=0, n_entities=4)
    assert set(w for t in few.texts for w in t.split() if w in ENTITIES) <= set(ENTITIES[:4])
    ordered = generate_problems(200, seed=0, types=("syllogism",), shuffle_premises=False)
    # chain order: the first premise always names the chain's first term, which the
    # conclusion starts from exactly when direction = 1 (negation = 0) ...
    for text, (d, n) in zip(ordered.texts, ordered.features):
        w = text.split()
        first = w[1]
        concl = text.split(" . ")[2].split()
        start = concl[3] if n else concl[2]  # "therefore all [non] a ..."
        assert (start == first) == bool(d)
    shuffled = generate_problems(200, seed=0, types=("syllogism",))
    firsts = [t.split()[1] for t in shuffled.texts]
    assert any(f not in t.split(" . ")[2] for f, t in zip(firsts, shuffled.texts))
    lexical = generate_problems(200, seed=0, lexical_roles=1.0, n_entities=12)
    lead = set(ENTITIES[0:12:3])
    for text, (d, _) in zip(lexical.texts, lexical.features):
        concl = text.split(" . ")[2].split()
        first = next(w for w in concl if w in ENTITIES)
        assert (first in lead) == bool(d)  # the conclusion's first word cues direction
    plain = generate_problems(200, seed=0, n_entities=12)
    firsts = [next(w for w in t.split(" . ")[2].split() if w in ENTITIES) for t in plain.texts]
    assert np.mean([(f in lead) == bool(d) for f, (d, _) in zip(firsts, plain.features)]) < 0.8
    with pytest.raises(SpecError, match="lexical_roles"):
        generate_problems(10, seed=0, lexical_roles=1.5)
    with pytest.raises(SpecError, match="unknown reasoning type 'modal'"):
        generate_problems(10, seed=0, types=("modal",))
    with pytest.raises(SpecError, match="n_entities"):
        generate_problems(10, seed=0, n_entities=2)


def test_split_holds_out_types_and_stratifies():
    ps = generate_problems(200, seed=0)
    train, test, transfer = split_problems(ps, 0.25, seed=0, held_out_types=("transitive",))
    assert set(transfer.types) == {"transitive"} and len(transfer) == 50
    assert "transitive" not in set(train.types) | set(test.types)
    assert set(train.ids).isdisjoint(test.ids)
    assert len(train) + len(test) + len(transfer) == 200
    for t in ("syllogism", "hypothetical", "conditional"):
        assert int(test.type_mask(t).sum()) == 12 or int(test.type_mask(t).sum()) == 13
    with pytest.raises(SpecError, match="held-out type 'modal'"):
        split_problems(ps, 0.25, seed=0, held_out_types=("modal",))


# ------------------------------------------------------------------------------ JSONL files


def test_problem_file_roundtrip(tmp_path):
    ps = generate_problems(12, seed=0)
    path = tmp_path / "p.jsonl"
    save_problems(ps, path)
    back = load_problems(path)
    assert back.ids == ps.ids and back.texts == ps.texts and back.types == ps.types
    assert np.array_equal(back.correct, ps.correct) and back.options == ps.options
    assert back.features is None


@pytest.mark.parametrize("row, msg", [
    ("not json", "line 2: not valid JSON"),
    ('["a"]', "line 2: expected a JSON object"),
    ('{"text": "t", "options": ["a", "b"], "type": "x"}', "line 2: missing key 'correct'"),
    ('{"text": "t", "options": ["a"], "correct": 0, "type": "x"}', "line 2: 'options' must"),
    ('{"text": "t", "options": ["a", "a"], "correct": 0, "type": "x"}', "must be distinct"),
    ('{"text": "t", "options": ["a", "b"], "correct": 2, "type": "x"}', "line 2: 'correct'"),
    ('{"text": "t", "options": ["a", "b"], "correct": "c", "type": "x"}', "line 2: 'correct'"),
    ('{"text": "", "options": ["a", "b"], "correct": 0, "type": "x"}', "line 2: 'text'"),
    ('{"text": "t", "options": ["a", "b"], "correct": 0, "type": "x", "w": 1}',
     "line 2: unknown key 'w'"),
    ('{"id": "q1", "text": "t", "options": ["a", "b"], "correct": 0, "type": "x"}',
     "line 2: problem id 'q1' already used"),
])
def test_malformed_problem_rows_name_the_line(tmp_path, row, msg):
    good = json.dumps({"id": "q1", "text": "a b", "options": ["yes", "no"], "correct": "no",
                       "type": "x"})
    path = tmp_path / "p.jsonl"
    path.write_text(good + "\n" + row + "\n")
    with pytest.raises(SpecError, match=msg) as info:
        load_problems(path)
    assert "\n" not in str(info.value)


def test_problem_file_accepts_option_strings_and_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"text": "a", "options": ["x", "y", "z"], "correct": "z",
                                "type": "t"}) + "\n\n")
    ps = load_problems(path)
    assert ps.ids == ["line1"] and ps.correct.tolist() == [2] and ps.options == [("x", "y", "z")]
    with pytest.raises(SpecError, match="not found"):
        load_problems(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- synthetic brain


def _cv_accuracy(x, y, seed=0):
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import cross_val_score

    return float(cross_val_score(RidgeClassifier(alpha=1.0), x, y, cv=5).mean())


def test_synthetic_brain_carries_the_structure_not_the_answer():
    ps = generate_problems(400, seed=0)
    brain = synthetic_brain(ps, np.random.default_rng(0), n_voxels=60, snr=2.0)
    assert brain.repeats.shape == (2, 400, 60) and brain.repeats.dtype == np.float32
    assert brain.ids == ps.ids
    y = brain.mean
    direction, negation = ps.features[:, 0], ps.features[:, 1]
    valid = (ps.correct == 0).astype(int)
    # both latent features are linearly decodable, the answer (their XOR) is not
    assert _cv_accuracy(y, direction) > 0.9
    assert _cv_accuracy(y, negation) > 0.9
    assert _cv_accuracy(y, valid) < 0.62
    null = synthetic_brain(ps, np.random.default_rng(0), n_voxels=60, snr=2.0,
                           informative=False)
    assert _cv_accuracy(null.mean, direction) < 0.62
    assert _cv_accuracy(null.mean, negation) < 0.62
    # same statistics: overall variance and per-voxel variances are close
    assert np.isclose(null.repeats.var(), brain.repeats.var(), rtol=0.1)


def test_synthetic_brain_snr_sets_the_split_half_reliability():
    from raybrain.align.predictivity import split_half_reliability

    ps = generate_problems(1000, seed=0)
    for snr in (0.25, 1.0):
        brain = synthetic_brain(ps, np.random.default_rng(1), n_voxels=100, snr=snr)
        a, b = (brain.repeats[k] - brain.repeats[k].mean(0) for k in (0, 1))
        # pooled over voxels: signal covariance / total variance = snr / (1 + snr)
        pooled = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
        assert abs(pooled - snr / (1 + snr)) < 0.03
        # per voxel, the split-half r tracks that voxel's own signal share
        r = split_half_reliability(brain.repeats)
        assert 0.0 < np.median(r) < 1.0 and np.corrcoef(r, (a * b).mean(0))[0, 1] > 0.8
    with pytest.raises(SpecError, match="snr"):
        synthetic_brain(ps, np.random.default_rng(0), snr=0)
    user = ProblemSet(["a"], ["t"], [("x", "y")], [0], ["t"])
    with pytest.raises(SpecError, match="generated problems"):
        synthetic_brain(user, np.random.default_rng(0))


def test_shuffle_responses_permutes_whole_problems():
    ps = generate_problems(30, seed=0)
    brain = synthetic_brain(ps, np.random.default_rng(0), n_voxels=5)
    out, perm = shuffle_responses(brain, np.random.default_rng(4), return_permutation=True)
    assert sorted(perm.tolist()) == list(range(30)) and not np.array_equal(perm, np.arange(30))
    assert out.ids == brain.ids
    for k in range(30):
        assert np.array_equal(out.repeats[:, k], brain.repeats[:, perm[k]])


def test_surrogate_responses_keep_the_covariance_and_lose_the_problems():
    ps = generate_problems(40, seed=1)
    brain = synthetic_brain(ps, np.random.default_rng(0), n_voxels=6, snr=2.0)
    y = brain.repeats.astype(np.float64)
    out = surrogate_responses(brain, np.random.default_rng(3))
    assert out.repeats.shape == brain.repeats.shape and out.ids == brain.ids
    assert out.repeats.dtype == np.float32
    # known answer: over draws, the surrogate's second moment about the voxel means is the
    # data's sample covariance, per repeat
    draws = [surrogate_responses(brain, np.random.default_rng(100 + k)).repeats
             for k in range(400)]
    for r in range(2):
        want = np.cov(y[r], rowvar=False)
        got = np.mean([np.einsum("iv,iw->vw", d[r] - y[r].mean(0), d[r] - y[r].mean(0)) / 40
                       for d in draws], axis=0)
        np.testing.assert_allclose(got, want, rtol=0.1, atol=0.1 * np.abs(want).max())
    # no correspondence: about the voxel means, a surrogate problem's response does not
    # follow its own problem's (0 on average over draws; the data itself gives 1)
    yc = (y[0] - y[0].mean(0)).ravel()
    r_own = [np.corrcoef((d[0] - y[0].mean(0)).ravel(), yc)[0, 1] for d in draws]
    assert abs(np.mean(r_own)) < 0.03 and np.std(r_own) < 0.3
    # one mixture for every repeat: identical repeats stay identical
    same = synthetic_brain(ps, np.random.default_rng(0), n_voxels=6)
    same.repeats[1] = same.repeats[0]
    twin = surrogate_responses(same, np.random.default_rng(5)).repeats
    np.testing.assert_array_equal(twin[0], twin[1])


# ------------------------------------------------------------------------ user brain files


def _user_files(tmp_path, ps, reps):
    ids = list(ps.ids)
    order = np.random.default_rng(0).permutation(len(ids))
    rows = reps[:, order]
    np.save(tmp_path / "b.npy", rows)
    (tmp_path / "b.ids.txt").write_text("\n".join(ids[i] for i in order) + "\n")
    np.savez(tmp_path / "b.npz", responses=rows, problem_ids=np.array([ids[i] for i in order]))
    import h5py

    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["responses"] = rows
        f["problem_ids"] = np.array([ids[i].encode() for i in order])
    return order


@pytest.mark.parametrize("name", ["b.npy", "b.npz", "b.h5"])
def test_user_brain_is_reordered_to_the_problem_set(tmp_path, name):
    ps = generate_problems(8, seed=0)
    reps = np.random.default_rng(0).standard_normal((2, 8, 3)).astype(np.float32)
    _user_files(tmp_path, ps, reps)
    brain = load_brain(tmp_path / name, ps)
    assert brain.ids == ps.ids
    np.testing.assert_array_equal(brain.repeats, reps)
    two_d = load_brain(tmp_path / name, ps).mean
    assert two_d.shape == (8, 3)


def test_user_brain_ids_must_match(tmp_path):
    ps = generate_problems(6, seed=0)
    arr = np.zeros((6, 2), dtype=np.float32)
    np.save(tmp_path / "b.npy", arr)
    ids = list(ps.ids)
    (tmp_path / "b.ids.txt").write_text("\n".join(ids[:5] + ["zz9"]))
    with pytest.raises(SpecError, match="row 5 has problem id 'zz9'.*extra id"):
        load_brain(tmp_path / "b.npy", ps)
    sub = ps.subset(np.arange(5))
    (tmp_path / "b.ids.txt").write_text("\n".join(ids[:6]))
    big = ProblemSet(ids + ["p99"], ps.texts + ["t"], ps.options + [("yes", "no")],
                     list(ps.correct) + [0], ps.types + ["syllogism"])
    with pytest.raises(SpecError, match="'p99' of the problem set has no row.*missing id"):
        load_brain(tmp_path / "b.npy", big)
    with pytest.raises(SpecError, match="extra id"):
        load_brain(tmp_path / "b.npy", sub)
    (tmp_path / "b.ids.txt").write_text("\n".join(ids[:5] + [ids[0]]))
    with pytest.raises(SpecError, match="two rows"):
        load_brain(tmp_path / "b.npy", ps)
    (tmp_path / "b.ids.txt").write_text("\n".join(ids[:5]))
    with pytest.raises(SpecError, match="5 problem ids for 6 rows"):
        load_brain(tmp_path / "b.npy", ps)
    bad = arr.copy()
    bad[2, 1] = np.nan
    np.save(tmp_path / "c.npy", bad)
    (tmp_path / "c.ids.txt").write_text("\n".join(ids))
    with pytest.raises(SpecError, match=f"problem '{ids[2]}', voxel 1 is nan"):
        load_brain(tmp_path / "c.npy", ps)
    with pytest.raises(SpecError, match="unknown format"):
        (tmp_path / "b.txt").write_text("1")
        load_brain(tmp_path / "b.txt", ps)
    np.savez(tmp_path / "d.npz", data=arr)
    with pytest.raises(SpecError, match="no array 'responses'"):
        load_brain(tmp_path / "d.npz", ps)


def test_brain_responses_subset_and_mean():
    reps = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    b = BrainResponses(reps, ["a", "b", "c", "d"])
    np.testing.assert_allclose(b.mean, reps.mean(0))
    s = b.subset([2, 0])
    assert s.ids == ["c", "a"] and np.array_equal(s.repeats, reps[:, [2, 0]])
