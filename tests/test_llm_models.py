"""Causal LMs: loading, tokenising problems, scoring, layer states, steering, adapters."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from raybrain.data.reasoning import ProblemSet, generate_problems  # noqa: E402
from raybrain.errors import SpecError  # noqa: E402
from raybrain.models import lm  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def problems():
    ps = generate_problems(12, seed=0)
    # a user-style problem with multi-token, unequal-length options, and three options
    extra = ProblemSet(
        ids=["u1", "u2"],
        texts=["all wug are dax . therefore some dax are wug ?", "if cug then fep . cug ."],
        options=[("it follows", "it does not follow"), ("fep", "not fep", "unknown")],
        correct=[0, 0], types=["syllogism", "conditional"])
    return ps, extra


@pytest.fixture(scope="module")
def tok(problems):
    ps, extra = problems
    return lm.word_tokenizer(ps.texts + extra.texts,
                             extra_words=["yes", "no", "it", "follows", "does", "not", "follow",
                                          "unknown", "fep"])


@pytest.fixture(scope="module")
def model(tok):
    return lm.tiny_lm(tok, n_layers=3, hidden=32, heads=4, seed=0)


def _naive_logprob(model, tok, prompt, option):
    """Sum of the option's token log-probabilities, one unpadded sequence at a time."""
    p_ids = tok(prompt)["input_ids"]
    full = tok(prompt + " " + option)["input_ids"]
    assert full[:len(p_ids)] == p_ids
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[t - 1, full[t]] for t in range(len(p_ids), len(full))))


def test_word_tokenizer_roundtrip(tmp_path, tok):
    from transformers import AutoTokenizer

    ids = tok("all wug are dax ?")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 6
    assert tok("all zzzz")["input_ids"][-1] == tok.unk_token_id
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert back("all wug are dax ?")["input_ids"] == ids
    assert back.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_lm_save_and_load(tmp_path, tok, arch):
    m = lm.tiny_lm(tok, n_layers=2, hidden=16, heads=2, seed=3, arch=arch)
    again = lm.tiny_lm(tok, n_layers=2, hidden=16, heads=2, seed=3, arch=arch)
    other = lm.tiny_lm(tok, n_layers=2, hidden=16, heads=2, seed=4, arch=arch)
    x = torch.tensor([tok("all wug are dax ? yes")["input_ids"]])
    with torch.no_grad():
        ref = m(input_ids=x).logits
        assert torch.equal(ref, again(input_ids=x).logits)
        assert not torch.allclose(ref, other(input_ids=x).logits)
    lm.save_lm(m, tok, tmp_path / "ck")
    loaded, tok2 = lm.load_lm(tmp_path / "ck")
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, ref)
    assert tok2("all wug")["input_ids"] == tok("all wug")["input_ids"]
    assert lm.n_layers(loaded) == 2 and len(lm.decoder_blocks(loaded)) == 2


def test_load_lm_errors(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        lm.load_lm(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"")
    with pytest.raises(SpecError, match="has no config.json") as info:
        lm.load_lm(tmp_path / "empty")
    assert "\n" not in str(info.value)


def test_option_logprobs_match_a_naive_loop(model, tok, problems):
    ps, extra = problems
    for pset in (ps.subset(np.arange(5)), extra):
        enc = lm.encode_problems(tok, pset)
        lp = lm.score_problems(model, enc, batch_size=2)
        for i in range(len(pset)):
            for j, opt in enumerate(pset.options[i]):
                assert lp[i, j] == pytest.approx(
                    _naive_logprob(model, tok, pset.texts[i], opt), abs=1e-4)
    # padding options (problem u1 has two of three) score -inf and are never predicted
    lp = lm.score_problems(model, lm.encode_problems(tok, extra))
    assert lp.shape == (2, 3) and lp[0, 2] == -np.inf


def test_single_token_fast_path_equals_the_general_path(model, tok, problems):
    ps, _ = problems
    enc = lm.encode_problems(tok, ps)
    fast, states_fast = lm.forward_problems(model, enc, [1, 3], "mean")
    # the same problems with a second, two-token option forces the general path
    enc2 = lm.encode_problems(tok, ProblemSet(ps.ids, ps.texts,
                                              [o + ("not yes",) for o in ps.options],
                                              ps.correct, ps.types))
    general, states_gen = lm.forward_problems(model, enc2, [1, 3], "mean")
    torch.testing.assert_close(fast, general[:, :2], atol=1e-5, rtol=1e-5)
    for lay in (1, 3):
        torch.testing.assert_close(states_fast[lay], states_gen[lay], atol=1e-5, rtol=1e-5)


def test_accuracy_overall_and_per_type():
    lp = np.array([[0.0, -1.0], [-2.0, -1.0], [0.0, -3.0], [-1.0, -1.0]])
    acc = lm.accuracy(lp, [0, 0, 1, 0], ["a", "b", "a", "b"])
    assert acc == {"accuracy": 0.5, "accuracy/a": 0.5, "accuracy/b": 0.5}


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_hidden_states_match_transformers(model, tok, problems, pool):
    ps, _ = problems
    sub = ps.subset(np.arange(4))
    enc = lm.encode_problems(tok, sub)
    hs = lm.hidden_states(model, enc, pool=pool, batch_size=3)
    assert hs.shape == (4, 4, 32)  # layers 0..3
    for i in range(4):
        ids = torch.tensor([tok(sub.texts[i])["input_ids"]])
        with torch.no_grad():
            ref = model(input_ids=ids, output_hidden_states=True).hidden_states
        for lay in range(3):  # transformers' last entry is after the final norm
            h = ref[lay][0, 1:] if pool == "mean" else ref[lay][0, -1:]
            np.testing.assert_allclose(hs[lay, i], h.mean(0).numpy(), atol=1e-5)
    with pytest.raises(SpecError, match="layer must be an integer in \\[0, 3\\]"):
        lm.hidden_states(model, enc, layers=[4])
    with pytest.raises(SpecError, match="pool"):
        lm.hidden_states(model, enc, pool="max")


def _capture(model, layer):
    """Register a hook recording the layer's full output (after any earlier hooks)."""
    store = {}
    mod = lm.decoder_blocks(model)[layer - 1]

    def hook(_m, _i, out):
        store["h"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
    return store, mod.register_forward_hook(hook)


def _basis(hidden, rank, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((hidden, rank)))
    return q.T


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_steering_changes_states_only_within_the_subspace(tok, problems, arch):
    ps, _ = problems
    m = lm.tiny_lm(tok, n_layers=3, hidden=32, heads=4, seed=1, arch=arch)
    enc = lm.encode_problems(tok, ps)
    ids = enc.input_ids[:, 0]
    b = _basis(32, 3, 0)
    p = torch.tensor(b.T @ b, dtype=torch.float32)
    alpha, layer = 1.5, 2
    store, cap = _capture(m, layer)
    with torch.no_grad():
        m(input_ids=ids)
        h = store["h"]
        with lm.steer(m, layer, b, alpha):
            cap.remove()  # re-register after the steering hook
            store, cap = _capture(m, layer)
            m(input_ids=ids)
        hs = store["h"]
    cap.remove()
    d = hs - h
    eye = torch.eye(32)
    # the component orthogonal to the subspace is unchanged, to float tolerance
    torch.testing.assert_close(d @ (eye - p), torch.zeros_like(d), atol=1e-5, rtol=0)
    # inside the subspace the state is scaled by 1 + alpha
    torch.testing.assert_close(hs @ p, (1 + alpha) * (h @ p), atol=1e-5, rtol=1e-5)
    # a centre c: h + alpha P (h - c)
    c = np.random.default_rng(1).standard_normal(32)
    store, cap = _capture(m, layer)
    with torch.no_grad(), lm.steer(m, layer, b, alpha, center=c):
        cap.remove()
        store, cap = _capture(m, layer)
        m(input_ids=ids)
    cap.remove()
    expect = h + alpha * (h - torch.tensor(c, dtype=torch.float32)) @ p
    torch.testing.assert_close(store["h"], expect, atol=1e-5, rtol=1e-5)


def test_steering_end_to_end_changes_outputs_and_removal_restores_them(model, tok, problems):
    ps, _ = problems
    enc = lm.encode_problems(tok, ps)
    before = lm.score_problems(model, enc)
    b = _basis(32, 4, 2)
    with lm.steer(model, 2, b, 4.0) as hook:
        steered = lm.score_problems(model, enc)
        assert hook.layer == 2 and hook.alpha == 4.0
    after = lm.score_problems(model, enc)
    assert np.abs(steered - before).max() > 1e-3
    np.testing.assert_array_equal(after, before)  # exactly restored
    hook = lm.add_steering_hook(model, 0, b, -1.0)  # layer 0: the embeddings
    zeroed = lm.score_problems(model, enc)
    hook.remove()
    hook.remove()  # idempotent
    assert np.abs(zeroed - before).max() > 1e-3
    np.testing.assert_array_equal(lm.score_problems(model, enc), before)
    # alpha = 0 is the identity
    with lm.steer(model, 3, b, 0.0):
        np.testing.assert_array_equal(lm.score_problems(model, enc), before)


def test_steering_errors(model):
    b = _basis(32, 2, 0)
    with pytest.raises(SpecError, match="layer must be an integer in \\[0, 3\\].*got 4"):
        lm.add_steering_hook(model, 4, b, 1.0)
    with pytest.raises(SpecError, match="layer"):
        lm.add_steering_hook(model, -1, b, 1.0)
    with pytest.raises(SpecError, match="orthonormal"):
        lm.add_steering_hook(model, 1, 2 * b, 1.0)
    with pytest.raises(SpecError, match="shape \\(rank, 32\\)"):
        lm.add_steering_hook(model, 1, b[:, :10], 1.0)
    with pytest.raises(SpecError, match="alpha"):
        lm.add_steering_hook(model, 1, b, float("nan"))


def _adapter_params(m):
    return {n: p for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adapters_train_and_base_weights_stay_frozen(tok, problems, method, arch):
    ps, _ = problems
    base = lm.tiny_lm(tok, n_layers=2, hidden=32, heads=4, seed=0, arch=arch)
    enc = lm.encode_problems(tok, ps)
    with torch.no_grad():
        ref = lm.forward_problems(base, enc)[0].clone()
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    m = lm.add_adapters(base, method=method, rank=4)
    with torch.no_grad():  # B starts at zero: the wrapped model equals the base model
        torch.testing.assert_close(lm.forward_problems(m, enc)[0], ref)
    params = _adapter_params(m)
    assert params and all(("lora_" in n) for n in params)
    kinds = {"lora_A", "lora_B"} | ({"lora_magnitude_vector"} if method == "dora" else set())
    assert kinds == {k for k in kinds if any(k in n for n in params)}
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    b = torch.tensor(_basis(32, 2, 0), dtype=torch.float32)
    targets = torch.randn(len(ps), 2, generator=torch.Generator().manual_seed(0))
    for step in range(2):  # B = 0 gives A no gradient on the first step; both move by the 2nd
        out = lm.finetune_loss(m, enc, layer=1, alpha=1.0, basis=b, targets=targets)
        opt.zero_grad()
        out["loss"].backward()
        if step == 1:
            for n, p in params.items():
                assert p.grad is not None and torch.isfinite(p.grad).all(), n
                rel = float(p.grad.norm() / (p.detach().norm() + 1e-12))
                assert rel > 1e-6, (n, rel)  # A sees B ~ lr after one step
        opt.step()
    for n, p in params.items():
        assert not torch.equal(p.detach(), start[n]), f"{n} did not move"
    base_now = dict(m.get_base_model().named_parameters())
    for n, p in base_now.items():
        if "lora_" in n:
            continue
        key = n.replace(".base_layer", "")
        assert not p.requires_grad and torch.equal(p.detach(), frozen[key]), n


def test_finetune_loss_is_task_plus_alpha_brain(model, tok, problems):
    from raybrain.align.steering import direction_alignment_loss

    ps, _ = problems
    enc = lm.encode_problems(tok, ps)
    b = torch.tensor(_basis(32, 2, 3), dtype=torch.float32)
    y = torch.randn(len(ps), 2, generator=torch.Generator().manual_seed(1))
    lang = lm.finetune_loss(model, enc, layer=2, alpha=0.0, basis=b, targets=y)
    naive = lm.score_problems(model, enc)
    ce = -np.mean([naive[i, c] - np.logaddexp(*naive[i]) for i, c in enumerate(ps.correct)])
    assert lang["loss"].item() == pytest.approx(ce, abs=1e-5)
    assert np.isnan(lang["brain_loss"])
    out = lm.finetune_loss(model, enc, layer=2, alpha=0.7, basis=b, targets=y, pool="last")
    states = torch.tensor(lm.hidden_states(model, enc, layers=[2], pool="last")[0])
    brain = float(direction_alignment_loss(states, b, y))
    assert out["brain_loss"] == pytest.approx(brain, abs=1e-5)
    assert out["loss"].item() == pytest.approx(ce + 0.7 * brain, abs=1e-5)
    with pytest.raises(SpecError, match="alpha"):
        lm.finetune_loss(model, enc, layer=2, alpha=-1.0, basis=b, targets=y)
    with pytest.raises(SpecError, match="targets"):
        lm.finetune_loss(model, enc, layer=2, alpha=1.0, basis=b)


def test_brain_term_alone_reaches_the_adapters(tok, problems):
    from raybrain.align.steering import direction_alignment_loss

    ps, _ = problems
    m = lm.add_adapters(lm.tiny_lm(tok, n_layers=2, hidden=32, heads=4, seed=0), rank=4)
    enc = lm.encode_problems(tok, ps)
    b = torch.tensor(_basis(32, 2, 0), dtype=torch.float32)
    y = torch.randn(len(ps), 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # give B non-zero values so A's gradient is not zero by design
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    _, states = lm.forward_problems(m, enc, [2])
    direction_alignment_loss(states[2], b, y).backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    # every adapter below or at layer 2 feeds the layer-2 states
    assert all(g is not None and float(g.norm()) > 1e-6 for g in grads.values())
