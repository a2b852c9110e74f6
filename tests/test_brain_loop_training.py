"""Known answer for the whole brain-in-the-loop method, trained in-process on synthetic data.

128 concepts (2 superordinate x 4 basic x 16), 64 trained, 64 held out (val + test). On
the informative generator the brain's structure is that of the concepts' semantic
latents, which the model's features blur; on the null generator the same brain structure
belongs to other concepts. Training alternates step 1 (OT + lambda1 CE) and step 2
(local CE + lambda2 GW) for 60 epochs (one batch of the 64 training concepts each).

Held-out metrics measured over data seeds 0-7 with exactly this procedure (informative ->
null, after training; chance of a top-1 match is 1/64 = 0.016, of a top-5 one 0.078):

- OT-plan matching (top-1): 0.17-0.50 informative, <= 0.062 null (8/8 seeds);
- RSA with the brain RDM: 0.69-0.91 informative, |rsa| <= 0.09 null (8/8);
- GW distance: falls with training on 7/8 informative seeds and ends below the null run of
  the same seed on 8/8; it also falls on 5/8 null seeds: GW compares shapes only, and
  training strips the model's nuisance ("style") structure whatever the brain says, which
  makes any hierarchical brain RDM look closer. The correspondence-aware metrics (the
  matching rates, RSA) are the ones that separate informative from null.

The test uses data seed 6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raybrain.data.concepts import split_concepts, synthetic_concepts
from raybrain.models.brain_loop import BrainLoopConfig, BrainLoopModel

pytestmark = pytest.mark.unit

SEED = 6
EPOCHS = 60
FAST = dict(k1=10, k2=10, sinkhorn_iter=30, brain_depth=1, gnn_layers=2, gnn_heads=2)
CHANCE_TOP1, CHANCE_TOP5 = 1 / 64, 5 / 64


def _train(informative: bool) -> tuple[dict, dict]:
    torch.set_num_threads(1)
    d = synthetic_concepts(SEED, informative=informative)
    sp = split_concepts(d, (0.5, 0.25, 0.25), seed=SEED)
    held = np.concatenate([sp.val, sp.test])
    torch.manual_seed(SEED)
    model = BrainLoopModel.for_data(d, sp.train, BrainLoopConfig(**FAST))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(SEED)
    before = model.evaluate(d, held, sp.train)
    for _ in range(EPOCHS):
        for batch in model.batches(d, sp.train, 256, rng):
            for step in (model.step1_loss, model.step2_loss):
                loss, _ = step(batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return before, model.evaluate(d, held, sp.train)


@pytest.fixture(scope="module")
def informative():
    return _train(True)


@pytest.fixture(scope="module")
def null():
    return _train(False)


def test_informative_brain_gw_falls_and_matching_rises(informative):
    before, after = informative
    assert after["gw_distance"] < 0.7 * before["gw_distance"]
    assert after["ot_match_top1"] >= 8 * CHANCE_TOP1
    assert after["match_top5"] > before["match_top5"]
    assert after["match_top5"] >= 2 * CHANCE_TOP5
    assert after["rsa"] > 0.6 > before["rsa"]


def test_null_brain_matching_stays_at_chance(null, informative):
    before, after = null
    assert after["ot_match_top1"] <= 4 * CHANCE_TOP1
    assert after["match_top5"] <= 2 * CHANCE_TOP5
    assert abs(after["rsa"]) < 0.2
    # GW alone cannot tell the two apart before training; after it, the informative run's
    # structure is the closer one
    assert informative[1]["gw_distance"] < after["gw_distance"]
