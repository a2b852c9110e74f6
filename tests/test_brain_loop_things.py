"""Real-data check: GW between two independent behavioural RDMs of the 48 THINGS objects.

The SPoSE embedding (Hebart et al. 2020, from one set of odd-one-out triplets) and the
fully sampled 48-object triplet RDM (from another) describe the same objects. A
structure-only GW matching between an RDM derived from the SPoSE rows and the triplet RDM
must recover which object is which far above chance. Measured here (solver "best"): top-1
and top-5 matching 48/48 for both SPoSE-derived RDMs, against a permutation null (10,000
random correspondences) of mean 0.021 / 0.104 and maximum 0.146 / 0.271.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from raybrain.align.concept_metrics import cosine_distances, permutation_null, topk_matching_rate
from raybrain.align.gw import gw_distance
from raybrain.data.concepts import THINGS48_FILES, things48
from raybrain.data.embeddings import load_spose, spose_rdm
from tests.conftest import SHARED_DATA

THINGS = SHARED_DATA / "things"
RAW = "spose_embedding_66d_sorted.txt"

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(not all((THINGS / f).exists() for f in (*THINGS48_FILES, RAW)),
                                 reason="THINGS data not present")]


@pytest.fixture(scope="module")
def things():
    d = things48(THINGS)
    with (THINGS / "rdm48_concepts_in_order.tsv").open(encoding="utf-8", newline="") as fh:
        rows = [int(r["things_index0"]) for r in csv.DictReader(fh, delimiter="\t")]
    raw = load_spose(THINGS / RAW).values[rows]
    # the 48-row file is the raw embedding rescaled (an affine map of every value)
    assert np.corrcoef(raw.ravel(), d.features.ravel())[0, 1] > 0.9999
    return d, {"choice rule": spose_rdm(raw), "cosine": cosine_distances(d.features)}


@pytest.mark.parametrize("kind", ["choice rule", "cosine"])
def test_gw_recovers_the_object_correspondence_far_above_chance(things, kind):
    d, spose = things
    _, plan = gw_distance(spose[kind], d.brain_rdm, solver="best")
    truth = np.arange(48)
    top1, top5 = topk_matching_rate(plan, truth, 1), topk_matching_rate(plan, truth, 5)
    null1 = permutation_null(plan, 1, n_perm=10000, seed=0)
    null5 = permutation_null(plan, 5, n_perm=10000, seed=1)
    assert null1.mean() == pytest.approx(1 / 48, abs=0.005)
    assert top1 > null1.max() and top5 > null5.max()  # p < 1e-4 for both
    assert top1 >= 10 / 48 and top5 >= 0.5  # at least ten times chance


def test_matching_follows_a_permutation_of_the_objects(things):
    """Relabel the triplet RDM's objects: the plan follows the relabelling."""
    d, spose = things
    truth = np.arange(48)
    _, plan = gw_distance(spose["choice rule"], d.brain_rdm, solver="best")
    base = topk_matching_rate(plan, truth, 1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        perm = rng.permutation(48)  # row k of the relabelled RDM is object perm[k]
        relabelled = d.brain_rdm[np.ix_(perm, perm)]
        _, plan_p = gw_distance(spose["choice rule"], relabelled, solver="best")
        assert topk_matching_rate(plan_p, np.argsort(perm), 1) == pytest.approx(base, abs=2 / 48)
