"""open_clip building and checkpoints, label prompts, the behaviour head, a behaviour run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raybrain.errors import SpecError
from raybrain.models.clip import (
    TINY_MODEL,
    CLIPHBABehavior,
    LabelText,
    build_behavior_model,
    build_clip,
    n_blocks,
    tokenize_labels,
)
from raybrain.models.dora import adapter_parameters, apply_dora

pytestmark = pytest.mark.unit

LABELS = ["red object", "round thing", "striped texture"]



@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_tiny_model_builds_random_and_has_the_registered_shape(images):
    torch.manual_seed(0)
    a = build_clip(TINY_MODEL)
    assert not a.training
    assert n_blocks(a) == (4, 2)
    assert a.encode_image(images).shape == (4, 64)
    torch.manual_seed(1)
    b = build_clip(TINY_MODEL)
    assert not torch.equal(a.visual.proj, b.visual.proj)  # random weights follow the seed
    from open_clip.transformer import QuickGELU

    assert not isinstance(a.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    q = build_clip(TINY_MODEL, quick_gelu=True)  # OpenAI weights were trained with QuickGELU
    assert isinstance(q.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_unknown_model_and_missing_checkpoint_are_one_line_errors(tmp_path):
    for name, pattern in [("ViT-Q-99", "unknown CLIP model 'ViT-Q-99'"),
                          ("hf-hub:org/x", "nothing is downloaded")]:
        with pytest.raises(SpecError, match=pattern) as exc:
            build_clip(name)
        assert "\n" not in str(exc.value)
    with pytest.raises(SpecError, match="not found") as exc:
        build_clip(TINY_MODEL, tmp_path / "none.pt")
    assert "\n" not in str(exc.value)
    with pytest.raises(SpecError, match="not found"):
        build_clip("ViT-L-14", "openai")  # a tag is never downloaded


def test_checkpoint_loads_and_reproduces_outputs(tmp_path, images):
    torch.manual_seed(5)
    src = build_clip(TINY_MODEL)
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    loaded = build_clip(TINY_MODEL, path)
    tok = tokenize_labels(TINY_MODEL, LABELS)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), src.encode_image(images))
        assert torch.equal(loaded.encode_text(tok), src.encode_text(tok))
    # {"state_dict": ...} wrappers load too (open_clip's own convention)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "wrapped.pt")
    with torch.no_grad():
        assert torch.equal(build_clip(TINY_MODEL, tmp_path / "wrapped.pt").encode_image(images),
                           src.encode_image(images))


@pytest.mark.filterwarnings("ignore:.*TorchScript:UserWarning", "ignore::FutureWarning")
def test_mismatched_checkpoints_are_one_line_errors(tmp_path):
    sd = build_clip(TINY_MODEL).state_dict()
    wrong_shape = dict(sd)
    wrong_shape["visual.proj"] = torch.zeros(64, 32)
    missing = {k: v for k, v in sd.items() if k != "ln_final.weight"}
    extra = {**sd, "visual.extra.weight": torch.zeros(3)}
    cases = [(wrong_shape, "size mismatch for visual.proj"),
             (missing, "Missing key.*ln_final.weight"),
             (extra, "Unexpected key.*visual.extra.weight")]
    for k, (state, pattern) in enumerate(cases):
        path = tmp_path / f"bad{k}.pt"
        torch.save(state, path)
        with pytest.raises(SpecError, match=pattern) as exc:
            build_clip(TINY_MODEL, path)
        msg = str(exc.value)
        assert "\n" not in msg and "does not fit model 'raybrain-tiny-vit'" in msg
    script = tmp_path / "script.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))
    with pytest.raises(SpecError, match="TorchScript archive.*weights_only=False") as exc:
        build_clip(TINY_MODEL, script)
    assert "\n" not in str(exc.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SpecError, match="garbage.pt") as exc:
        build_clip(TINY_MODEL, garbage)
    assert "\n" not in str(exc.value)


def test_label_prompts_one_per_label_no_template():
    tok = tokenize_labels(TINY_MODEL, LABELS)
    assert tok.shape == (3, 16) and tok.dtype == torch.long
    import open_clip

    raw = open_clip.get_tokenizer(TINY_MODEL)(["red object"])  # the label as it is
    assert torch.equal(tok[0], raw[0])
    with pytest.raises(SpecError, match="non-empty"):
        tokenize_labels(TINY_MODEL, ["ok", "  "])


def test_label_count_must_equal_target_dimension():
    with pytest.raises(SpecError, match=r"number of labels \(3\) must equal the target "
                                        r"dimension \(66\)") as exc:
        build_behavior_model(TINY_MODEL, LABELS, target_dim=66, rank=4)
    assert "\n" not in str(exc.value)
    clip = build_clip(TINY_MODEL)
    with pytest.raises(SpecError, match="must equal the target dimension"):
        CLIPHBABehavior(clip, tokenize_labels(TINY_MODEL, LABELS), target_dim=4)


def test_behaviour_head_is_scaled_cosine(images):
    torch.manual_seed(2)
    clip = build_clip(TINY_MODEL)
    tok = tokenize_labels(TINY_MODEL, LABELS)
    model = CLIPHBABehavior(clip, tok, target_dim=3)
    with torch.no_grad():
        pred = model(images)
        img = clip.encode_image(images).numpy().astype(np.float64)
        txt = clip.encode_text(tok).numpy().astype(np.float64)
        scale = float(clip.logit_scale.exp())
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
        txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    assert pred.shape == (4, 3)
    np.testing.assert_allclose(pred.numpy(), scale * cos, rtol=1e-4, atol=1e-4)


def test_label_text_is_cached_while_frozen_and_refreshed_after_a_change():
    torch.manual_seed(0)
    clip = build_clip(TINY_MODEL)
    apply_dora(clip, placement="attn_out", n_vision=1, n_text=1, rank=4, dropout=0.5)
    with torch.no_grad():
        for n, p in adapter_parameters(clip).items():
            if "dora_B" in n:
                p.normal_()  # so that dropout on the update changes the output
    text = LabelText(clip, tokenize_labels(TINY_MODEL, LABELS))
    clip.eval()
    a = text()
    assert a.requires_grad  # the text adapter trains: no cache
    clip.train()
    assert not torch.allclose(text(), text())  # trainable, training mode: adapter dropout
    for p in clip.parameters():
        p.requires_grad_(False)
    b, c = text(), text()
    assert c is b and not b.requires_grad  # frozen: computed once, without dropout
    torch.testing.assert_close(b, a.detach())
    assert clip.transformer.training  # the mode is restored
    with torch.no_grad():
        next(p for n, p in adapter_parameters(clip).items()
             if n.startswith("transformer.") and "dora_B" in n).mul_(-1.0)
    d = text()
    assert d is not b and not torch.allclose(d, b)  # an in-place change invalidates it


def test_behaviour_route_lowers_its_loss_on_informative_synthetic_data():
    """Tiny-ViT in-process run: MSE to rescaled teacher targets falls within a few steps."""
    from raybrain.data.behaviour import rescale_spose
    from raybrain.data.clip_synthetic import synthetic_clip_data
    from raybrain.data.images import ImageSet

    data = synthetic_clip_data(48, n_triplets=0, seed=0, times_ms=(-100, 100, 100))
    x = torch.from_numpy(ImageSet(data.images, [], "clip").batch(np.arange(48)))
    y = torch.from_numpy(rescale_spose(data.embeddings, data.embeddings.min(),
                                       data.embeddings.max())).float()
    torch.manual_seed(0)
    model, info = build_behavior_model(TINY_MODEL, data.labels, rank=8, n_vision=2, n_text=1,
                                       target_dim=66)
    assert info.n_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.95 * losses[0], losses
