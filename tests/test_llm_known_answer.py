"""Known answer: brain-guided fine-tuning helps with an informative brain, not a null one.

A tiny random Llama is fully fine-tuned on deductive problems whose validity is the XOR
of two latent features (direction, negation). The informative synthetic brain carries
the two features (never their XOR); the null brain has the same statistics and no
information about the problems. Same model initialisation, batches and steps in every
arm; only the brain term differs. Measured on held-out problems of the trained types.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from raybrain.align.predictivity import joint_directions  # noqa: E402
from raybrain.data.reasoning import generate_problems, split_problems, synthetic_brain  # noqa: E402
from raybrain.models import lm  # noqa: E402

pytestmark = pytest.mark.slow

LAYER, POOL, RANK, ALPHA = 2, "mean", 6, 1.0
EPOCHS, BATCH, LR, SNR = 30, 32, 3e-3, 0.5
SEEDS = (0, 1)


def _run(setup, brain, seed):
    train, test, enc_tr, enc_te, tok = setup
    model = lm.tiny_lm(tok, n_layers=4, hidden=64, heads=4, seed=seed)
    basis = targets = None
    alpha = 0.0
    if brain is not None:
        states0 = lm.hidden_states(model, enc_tr, layers=[LAYER], pool=POOL)[0]
        jd = joint_directions(states0, brain.mean, RANK, method="pls")
        basis = torch.tensor(jd.basis, dtype=torch.float32)
        targets = torch.tensor(jd.brain_coordinates(brain.mean), dtype=torch.float32)
        alpha = ALPHA
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = np.random.default_rng(seed)
    for _ in range(EPOCHS):
        lm.finetune_epoch(model, opt, enc_tr, order.permutation(len(train)), BATCH,
                          layer=LAYER, pool=POOL, alpha=alpha, basis=basis, targets=targets)
    return lm.accuracy(lm.score_problems(model, enc_te, 256), test.correct)["accuracy"]


def test_brain_guided_finetuning_beats_language_only_on_informative_not_null():
    torch.set_num_threads(1)
    problems = generate_problems(600, seed=0, lexical_roles=1.0)
    train, test, _ = split_problems(problems, 0.5, seed=0, held_out_types=("transitive",))
    tok = lm.word_tokenizer(problems.texts, extra_words=["yes", "no"])
    setup = (train, test, lm.encode_problems(tok, train), lm.encode_problems(tok, test), tok)
    informative = synthetic_brain(train, np.random.default_rng(1), snr=SNR)
    null = synthetic_brain(train, np.random.default_rng(1), snr=SNR, informative=False)
    acc = {arm: np.mean([_run(setup, brain, s) for s in SEEDS])
           for arm, brain in (("language", None), ("informative", informative),
                              ("null", null))}
    gain_inf = acc["informative"] - acc["language"]
    gain_null = acc["null"] - acc["language"]
    assert acc["informative"] > 0.85, acc
    assert gain_inf > 0.15, acc
    assert acc["informative"] - acc["null"] > 0.15, acc
    assert gain_null < 0.1, acc
