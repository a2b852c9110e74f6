"""Brain-in-the-loop model pieces: kNN graphs, GNN, encoders, backbones, the model's steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raybrain.data.concepts import split_concepts, synthetic_concepts
from raybrain.errors import SpecError
from raybrain.models.backbones import backbone_features, load_features
from raybrain.models.brain_loop import (METRIC_DIRECTIONS, BrainLoopConfig, BrainLoopModel,
                                        MultiplexGNN, VoxelTransformerEncoder, make_batch)
from raybrain.models.graphs import cross_knn_edges, knn_graph

pytestmark = pytest.mark.unit

SMALL = dict(k1=5, k2=5, embed_dim=16, brain_width=16, brain_depth=1, brain_heads=2,
             gnn_layers=2, gnn_heads=2, adaptor_hidden=32, brain_hidden=32, sinkhorn_iter=20)


@pytest.fixture(scope="module")
def small_data():
    d = synthetic_concepts(0, n_per_basic=4, n_exemplars=3, n_voxels=40, feature_dim=12)
    return d, split_concepts(d, (0.5, 0.25, 0.25), seed=0)


# ---------------------------------------------------------------------------------- graphs

def test_knn_graph_equals_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3))
    ei = knn_graph(3, x=torch.tensor(x), metric="euclidean")
    assert ei.shape == (2, 27)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    for i in range(9):
        sources = sorted(ei[0, ei[1] == i].tolist())
        assert sources == sorted(np.argsort(d[i])[:3].tolist())
    assert not (ei[0] == ei[1]).any()


def test_cross_knn_edges_point_into_both_sets():
    d = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])  # 2 rows x 3 columns
    ei = cross_knn_edges(d, 1)
    # row i receives from its nearest column (stacked at 2 + j); column j from its nearest row
    assert ei.T.tolist() == [[2, 0], [3, 1], [0, 2], [1, 3], [1, 4]]
    with pytest.raises(SpecError, match="k must be"):
        cross_knn_edges(d, 3)


def test_knn_graph_refuses_k_at_or_above_n():
    with pytest.raises(SpecError, match=r"k must be an integer in \[1, n - 1 = 3\], got 4"):
        knn_graph(4, x=torch.randn(4, 2))


# ------------------------------------------------------------------------------- modules

@pytest.mark.parametrize("conv", ["gatv2", "transformer"])
def test_multiplex_gnn_uses_both_relations_and_passes_gradients(conv):
    torch.manual_seed(0)
    gnn = MultiplexGNN(8, layers=2, heads=2, conv=conv)
    x = torch.randn(10, 8, requires_grad=True)
    intra = torch.cat([knn_graph(2, x=x[:5]), knn_graph(2, x=x[5:]) + 5], dim=1)
    cross = cross_knn_edges(torch.rand(5, 5), 2)
    out = gnn(x, intra, cross)
    assert out.shape == (10, 8)
    assert not torch.allclose(out, gnn(x, intra))  # the cross relation changes the output
    out.pow(2).sum().backward()
    for name, p in gnn.named_parameters():
        if "cross" in name or "intra" in name:
            assert p.grad is not None, name
    assert x.grad.abs().max() > 0


def test_voxel_transformer_pads_and_encodes():
    enc = VoxelTransformerEncoder(n_voxels=13, out_dim=6, n_tokens=4, width=8, depth=1, heads=2)
    assert enc.chunk == 4  # 13 voxels -> 4 tokens of 4 (3 zero-padded)
    x = torch.randn(5, 13)
    y = enc(x)
    assert y.shape == (5, 6)
    y.sum().backward()
    assert enc.token_weight.grad.abs().max() > 0


# ------------------------------------------------------------------------------- backbones

def test_load_features_formats_and_errors(tmp_path):
    import h5py

    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    np.savez(tmp_path / "f.npz", feats=x)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["feats"] = x
    for name in ("f.npy", "f.npz", "f.h5"):
        np.testing.assert_array_equal(load_features(tmp_path / name), x)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(SpecError, match="holds 2 arrays"):
        load_features(tmp_path / "two.npz")
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
    with pytest.raises(SpecError, match=r"2-D \(n_items, d\), got shape \(2, 3, 4\)"):
        load_features(tmp_path / "bad.npy")
    x[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(SpecError, match="item 1, dim 2 is nan"):
        load_features(tmp_path / "nan.npy")


def test_torchvision_backbone_random_and_checkpoint(tmp_path):
    import torchvision

    images = np.random.default_rng(0).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None)
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    feats = backbone_features(images, "resnet18", library="torchvision",
                              checkpoint=tmp_path / "r18.pt", image_size=32)
    assert feats.shape == (3, 512)
    # the same weights by hand: resize, ImageNet normalisation, head removed
    x = torch.tensor(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        np.testing.assert_allclose(feats, model.eval()(x).numpy(), atol=1e-5)
    torch.save(torchvision.models.get_model("resnet34", weights=None).state_dict(),
               tmp_path / "r34.pt")
    with pytest.raises(SpecError) as err:
        backbone_features(images, "resnet18", library="torchvision",
                          checkpoint=tmp_path / "r34.pt", image_size=32)
    msg = str(err.value)
    assert "does not fit torchvision model 'resnet18'" in msg and "\n" not in msg


def test_open_clip_backbone_random_and_checkpoint(tmp_path):
    import open_clip

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                          "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                        "layers": 1}}
    (tmp_path / "rb-tiny-vit.json").write_text(json.dumps(cfg))
    cfg["vision_cfg"]["width"] = 64
    (tmp_path / "rb-tiny-vit-wide.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    images = np.random.default_rng(1).random((2, 3, 32, 32)).astype(np.float32)
    torch.manual_seed(0)
    model = open_clip.create_model("rb-tiny-vit", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    feats = backbone_features(images, "rb-tiny-vit", checkpoint=tmp_path / "tiny.pt")
    with torch.no_grad():
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        ref = model.eval().encode_image((torch.tensor(images) - mean) / std).numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    assert backbone_features(images, "rb-tiny-vit").shape == (2, 16)  # random weights
    with pytest.raises(SpecError) as err:
        backbone_features(images, "rb-tiny-vit-wide", checkpoint=tmp_path / "tiny.pt")
    assert "does not fit open_clip model 'rb-tiny-vit-wide'" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="not found"):
        backbone_features(images, "rb-tiny-vit", checkpoint=tmp_path / "missing.pt")


# --------------------------------------------------------------------------------- model

def _model(data, split, **kw):
    torch.manual_seed(0)
    return BrainLoopModel.for_data(data, split.train, BrainLoopConfig(**{**SMALL, **kw}))


def _grad_norms(model):
    return {name: p.grad.norm().item() / (p.norm().item() + 1e-12)
            for name, p in model.named_parameters() if p.grad is not None}


def _check_moves(model, loss, groups):
    """Backward, check each group's relative gradient size, step, check it moved."""
    model.zero_grad()
    loss.backward()
    rel = _grad_norms(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    for group in groups:
        names = [n for n in rel if n.startswith(group)]
        assert names, f"no gradient reached {group}"
        assert max(rel[n] for n in names) > 1e-4, group
        moved = [n for n in names if not torch.equal(before[n], dict(model.named_parameters())[n])]
        assert moved, f"{group} did not move"


def test_step1_gradients_reach_encoders_and_gnn(small_data):
    d, sp = small_data
    m = _model(d, sp)
    b = m.batches(d, sp.train, 64, np.random.default_rng(0))[0]
    loss, parts = m.step1_loss(b)
    assert set(parts) == {"ot", "ce", "self"} and all(np.isfinite(list(parts.values())))
    _check_moves(m, loss, ["adaptor", "brain_encoder", "gnn.intra", "gnn.cross"])


def test_step2_gradients_reach_the_adaptor_and_in_encoder_mode_the_brain_encoder(small_data):
    d, sp = small_data
    m = _model(d, sp, self_weight=0.0)
    b = m.batches(d, sp.train, 64, np.random.default_rng(0))[0]
    loss, parts = m.step2_loss(b)
    assert set(parts) == {"gw", "local"}
    _check_moves(m, loss, ["adaptor"])
    assert not any(n.startswith(("brain_encoder", "gnn")) for n in _grad_norms(m))
    m = _model(d, sp, self_weight=0.0, structure_source="encoder")
    loss, _ = m.step2_loss(b)
    _check_moves(m, loss, ["adaptor", "brain_encoder"])


def test_dustbin_cost_is_learned(small_data):
    d, sp = small_data
    m = _model(d, sp, dustbin=True)
    b = m.batches(d, sp.train, 64, np.random.default_rng(0))[0]
    loss, _ = m.step1_loss(b)
    _check_moves(m, loss, ["dustbin_cost"])


def test_brain_weight_zero_is_the_own_task_only(small_data):
    """The none/l2 arms: no brain term is computed, only the exemplar-contrastive task."""
    d, sp = small_data
    m = _model(d, sp, brain_weight=0.0)
    b = m.batches(d, sp.train, 64, np.random.default_rng(0))[0]
    for step in (m.step1_loss, m.step2_loss):
        loss, parts = step(b)
        assert set(parts) == {"self"}
        assert loss.item() == pytest.approx(m.self_loss(b).item())
    loss, _ = m.step1_loss(b)
    _check_moves(m, loss, ["adaptor"])
    assert not any(n.startswith(("brain_encoder", "gnn")) for n in _grad_norms(m))


def test_no_gw_ablation_leaves_l1_only(small_data):
    d, sp = small_data
    m = _model(d, sp, lambda2=0.0, local_weight=0.0, self_weight=0.0)
    b = m.batches(d, sp.train, 64, np.random.default_rng(0))[0]
    loss2, parts2 = m.step2_loss(b)
    assert parts2 == {} and loss2.item() == 0.0
    _, parts1 = m.step1_loss(b)
    assert set(parts1) == {"ot", "ce"}


def test_same_seed_same_losses_and_batches(small_data):
    d, sp = small_data
    out = []
    for _ in range(2):
        m = _model(d, sp)
        b = m.batches(d, sp.train, 64, np.random.default_rng(3))[0]
        out.append((m.step1_loss(b)[0].item(), m.step2_loss(b)[0].item()))
    assert out[0] == out[1]


def test_rdm_only_brain_uses_rows_against_training_anchors(small_data):
    d, sp = small_data
    from dataclasses import replace

    rdm_only = replace(d, brain=None)
    m = _model(rdm_only, sp)
    assert m.brain_kind == "rdm"
    b = make_batch(rdm_only, sp.train[:6], sp.train, np.random.default_rng(0))
    assert b.brain.shape == (6, len(sp.train))
    # a training concept's own (zero) entry is replaced by its row's mean
    own = int(np.flatnonzero(sp.train == sp.train[0])[0])
    others = np.delete(d.brain_rdm[sp.train[0], sp.train], own)
    assert b.brain[0, own].item() == pytest.approx(others.mean(), rel=1e-5)
    loss, _ = m.step1_loss(b)
    _check_moves(m, loss, ["brain_encoder", "adaptor"])


def test_evaluate_returns_the_declared_metrics(small_data):
    d, sp = small_data
    m = _model(d, sp)
    held = np.concatenate([sp.val, sp.test])
    ev = m.evaluate(d, held, sp.train)
    assert list(ev) == BrainLoopModel.metric_names(d)
    assert set(ev) <= set(METRIC_DIRECTIONS)
    assert all(isinstance(v, float) and np.isfinite(v) for v in ev.values())
    assert 0 <= ev["match_top1"] <= ev["match_top5"] <= 1
    assert ev == m.evaluate(d, held, sp.train)  # deterministic


@pytest.mark.parametrize("kw, message", [
    (dict(k1=16), r"K1 must be < the number of concepts per training batch \(16\), got 16"),
    (dict(k2=40), r"K2 must be < the number of concepts per training batch \(16\), got 40"),
    (dict(lambda1=-0.1), r"lambda1 must be a finite number >= 0, got -0.1"),
    (dict(lambda2=-1.0), r"lambda2 must be a finite number >= 0, got -1.0"),
    (dict(tau=0.0), r"tau must be a finite number > 0, got 0.0"),
    (dict(gnn_conv="gcn"), r"gnn_conv must be one of \['gatv2', 'transformer'\], got 'gcn'"),
    (dict(embed_dim=10, gnn_heads=4), r"embed_dim \(10\) must be divisible by gnn_heads \(4\)"),
])
def test_config_errors_are_one_line(small_data, kw, message):
    d, sp = small_data
    with pytest.raises(SpecError, match=message) as err:
        BrainLoopModel.for_data(d, sp.train, BrainLoopConfig(**{**SMALL, **kw}))
    assert "\n" not in str(err.value)


def test_resume_from_model_optimiser_and_rng_state_equals_uninterrupted(small_data):
    import copy

    d, sp = small_data

    def epoch(m, opt, rng):
        for b in m.batches(d, sp.train, 64, rng):
            for step in (m.step1_loss, m.step2_loss):
                loss, _ = step(b)
                opt.zero_grad()
                loss.backward()
                opt.step()

    m = _model(d, sp)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    rng = np.random.default_rng(5)
    epoch(m, opt, rng)
    saved = (copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict()),
             copy.deepcopy(rng.bit_generator.state))
    epoch(m, opt, rng)
    m2 = _model(d, sp)
    m2.load_state_dict(saved[0])
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-3)
    opt2.load_state_dict(saved[1])
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = saved[2]
    epoch(m2, opt2, rng2)
    for (name, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
