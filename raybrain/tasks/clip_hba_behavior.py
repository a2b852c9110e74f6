"""CLIP-HBA-Behavior: CLIP with DoRA adapters fitted to behavioural (SPoSE) embeddings.

Protocol (CLIP-HBA paper, sections 4.3.2-4.3.3): each target dimension's label is a text
prompt; an image's prediction is ``exp(logit_scale) * cos(image embedding, label text)``
for every label (:class:`~raybrain.models.clip.CLIPHBABehavior`), fitted to the rescaled
SPoSE rows by MSE (``F.mse_loss``: the mean over items and dimensions, the paper's sum over
dimensions divided by their number). DoRA adapters (:mod:`raybrain.models.dora`) on the last
``n_vision`` vision and ``n_text`` text blocks are the only trained parameters (AdamW);
checkpoints hold the adapters only. Objects are split into training, validation and test
sets; early stopping watches the validation RDM Spearman (``patience`` epochs) and the run
ends on the adapters of its best validation epoch.

Evaluation on held-out objects (every arm, always against the *real* targets):

- ``test_rdm_spearman`` (primary): Spearman r between the RDM of the predicted
  embeddings (``1 - Pearson``) of the test objects and their behavioural RDM (THINGS: the
  fully sampled 48-object RDM; synthetic: the teacher embeddings' RDM);
- ``test_triplet_accuracy``: odd-one-out accuracy (the most similar pair by dot product
  stays) on the trials whose three objects were all held out from training (THINGS: the
  20,000 human test trials; synthetic: trials drawn from the teacher);
- ``test_mse``: MSE to the test objects' targets; ``align_cka``: linear CKA between
  predicted and target embeddings of the test objects;
- ``test_feature_rdm_spearman``: the RDM of the image embeddings themselves (the paper's
  CLIP-ViT baseline measure) against the behavioural RDM;
- ``val_rdm_spearman``, ``val_mse``: on the validation objects, against the run's own
  targets (real, shuffled or noise), for early stopping.

Arms: ``brain`` (real targets), ``shuffled`` (targets permuted across the training and
validation objects), ``noise`` (targets mixed across those objects by a random orthogonal
matrix: same column means and covariance, no object correspondence; see
:mod:`raybrain.data.stimulus_controls`) and ``none`` (the untouched backbone: no training).
There is no task loss besides the targets, so the task has no brain weight
(``brain_weight = None``) and no L2 arm (``l2_param = None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from raybrain.errors import SpecError
from raybrain.tasks import register
from raybrain.tasks._clip_common import (
    BACKBONE_PATHS,
    BackboneImages,
    CLIPRun,
    absolute_paths,
    batches,
    check_adapters,
    check_backbone,
    chunks,
    count_images,
    load_images,
    model_geometry,
    split_stimuli,
)
from raybrain.tasks.base import GENERATOR_NOT_BARE_NULL, Param, Task


class BehaviorData(BackboneImages):
    """The ``data:`` section of a ``clip-hba-behavior`` spec.

    ``source: synthetic``: procedural images whose targets come from a hidden teacher
    network (``generator: informative``) or from the same teacher looking at unrelated
    images (``null``; :mod:`raybrain.data.clip_synthetic`). ``source: things``: SPoSE
    targets, labels, the 48-object RDM and the human test triplets from ``things_dir``
    (:mod:`raybrain.data.things`), with the user's THINGS images (one per SPoSE row, in
    row order; the 48 test objects must be the RDM's images).
    """

    source: Literal["synthetic", "things"] = "synthetic"
    generator: Literal["informative", "null"] = "informative"
    n_images: int = Field(240, ge=12)
    n_dims: int = Field(66, ge=2, le=72)
    #: synthetic odd-one-out trials drawn from the teacher (scored on held-out objects)
    n_triplets: int = Field(20000, ge=0)
    things_dir: str | None = None
    #: label prompts, one per target column (default: things_dir/labels_66.txt)
    labels_file: str | None = None
    val_fraction: float = Field(0.2, gt=0, lt=1)
    #: synthetic only (THINGS tests on its 48 fully sampled objects)
    test_fraction: float = Field(0.2, gt=0, lt=1)

    _bare_null = GENERATOR_NOT_BARE_NULL

    @model_validator(mode="after")
    def _check(self):
        if self.source == "things" and not self.things_dir:
            raise ValueError("data.source 'things' needs data.things_dir (SPoSE, labels, RDM48, "
                             "test triplets)")
        if self.source == "things" and not (self.images_dir or self.images_file):
            raise ValueError("data.source 'things' needs the THINGS images: data.images_dir "
                             "with data.order_file (one image per SPoSE row), or "
                             "data.images_file")
        if self.source == "synthetic" and (self.images_dir or self.images_file
                                           or self.things_dir):
            raise ValueError("data.source 'synthetic' makes its own images and targets; "
                             "drop data.images_dir / images_file / things_dir")
        return self


@dataclass
class BehaviorTaskData:
    """What every run of a sweep shares.

    ``targets`` (N, D) float32 rescaled real targets; ``train``/``val``/``test`` index
    arrays; ``test_rdm`` (n_test, n_test) the behavioural RDM of the test objects;
    ``triplets`` (M, 3) positions in ``heldout`` (the val and test objects, sorted) with
    ``odd`` (M,) the chosen odd one out.
    """

    images: Any
    targets: np.ndarray
    labels: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_rdm: np.ndarray
    heldout: np.ndarray
    triplets: np.ndarray
    odd: np.ndarray
    data_seed: int
    data: BehaviorData
    _views: dict[str, np.ndarray] = field(default_factory=dict)

    def view(self, source: str | None) -> np.ndarray:
        """Targets of every object for a brain source (controls change train + val rows)."""
        from raybrain.data.stimulus_controls import mix_embedding, stimulus_permutation

        source = source or "real"
        if source not in self._views:
            pool = np.concatenate([self.train, self.val])
            out = self.targets.copy()
            if source == "shuffled":
                perm = stimulus_permutation(len(pool), np.random.default_rng([self.data_seed, 11]))
                out[pool] = self.targets[pool[perm]]
            elif source == "noise":
                out[pool] = mix_embedding(self.targets[pool],
                                          np.random.default_rng([self.data_seed, 12]))
            elif source != "real":
                raise ValueError(f"brain source must be one of real/shuffled/noise, got {source!r}")
            self._views[source] = out.astype(np.float32)
        return self._views[source]


_PARAMS = {
    "rank": Param(32, int, brain=True, low=1, help="DoRA rank r (paper: 32)"),
    "dora_alpha": Param(16.0, float, brain=True, low=1e-6,
                        help="DoRA scaling numerator: the update is (dora_alpha / r) B A"),
    "dropout": Param(0.1, float, brain=True, low=0.0, high=0.99, help="DoRA dropout"),
    "placement": Param("attn_out", str, brain=True, choices=("attn_out", "mlp", "both"),
                       help="adapted layers: attention output projection, MLP linears, or both"),
    "n_vision": Param(2, int, brain=True, low=0, help="last vision blocks adapted (paper: 2)"),
    "n_text": Param(1, int, brain=True, low=0, help="last text blocks adapted (paper: 1)"),
    "lr": Param(3e-4, float, brain=True, low=0.0, help="AdamW learning rate (paper: 3e-4)"),
    "weight_decay": Param(0.01, float, brain=True, low=0.0,
                          help="AdamW weight decay on the adapters (torch's default)"),
    "batch_size": Param(64, int, brain=True, low=2, help="images per step (paper: 64)"),
    "epochs": Param(500, int, low=1, help="most epochs (paper: up to 500)"),
    "patience": Param(20, int, brain=True, low=1,
                      help="epochs without a better validation RDM Spearman before stopping"),
}


@register("clip-hba-behavior")
class CLIPHBABehaviorTask(Task):
    """CLIP + DoRA fitted to behavioural embeddings (SPoSE), evaluated on held-out objects."""

    params = _PARAMS
    data_model = BehaviorData
    primary_metric = "test_rdm_spearman"
    primary_mode = "max"
    metrics = ("test_rdm_spearman", "val_rdm_spearman", "test_triplet_accuracy", "test_mse",
               "val_mse", "test_feature_rdm_spearman", "align_cka", "loss")
    align_metrics = {"align_cka": "max"}
    brain_weight = None
    l2_param = None
    data_paths = (*BACKBONE_PATHS, "things_dir", "labels_file")
    artifact_every = 5
    smoke = {"data": {"model": "raybrain-tiny-vit", "n_images": 24, "n_dims": 8,
                      "n_triplets": 600, "val_fraction": 0.25, "test_fraction": 0.25},
             "params": {"rank": 2, "epochs": 2, "batch_size": 8, "lr": 3e-3, "patience": 2}}

    # -- checks ------------------------------------------------------------------------
    def check_data(self, data: BehaviorData, params: dict[str, Any]) -> None:
        check_backbone(data)
        check_adapters(data.model, params, self.defaults())
        if data.source != "things":
            return
        from raybrain.data.things import load_things_targets

        things = load_things_targets(data.things_dir)
        labels = _labels(data, things)
        d = things.spose.shape[1]
        if len(labels) != d:
            raise SpecError(f"data.labels_file has {len(labels)} labels but the SPoSE targets "
                            f"have {d} dimensions; expected one label per target column")
        n, names = count_images(data)
        if n != len(things.spose):
            raise SpecError(f"the images ({n}) and the SPoSE targets ({len(things.spose)} rows) "
                            f"do not match; expected one image per SPoSE row, in row order")
        if names is not None:
            for row, image in zip(things.rdm48_index, things.rdm48_images, strict=True):
                if Path(names[row]).name != image:
                    raise SpecError(f"image of SPoSE row {row} is {names[row]!r} but the "
                                    f"48-object RDM was measured on {image!r}; expected the "
                                    f"RDM's image for each of its 48 objects")

    # -- data --------------------------------------------------------------------------
    def prepare(self, data: BehaviorData):
        """Paths made absolute for the trials (nothing else is slow enough to prepare)."""
        return absolute_paths(self, data), [], []

    def load_data(self, data: BehaviorData, data_seed: int) -> BehaviorTaskData:
        from raybrain.data.behaviour import behaviour_rdm, rescale_spose, restrict_triplets

        size = model_geometry(data.model)["image_size"]
        rng = np.random.default_rng([data_seed, 1])
        if data.source == "things":
            from raybrain.data.things import load_things_targets

            things = load_things_targets(data.things_dir)
            targets = things.rescaled()
            labels = _labels(data, things)
            images = load_images(data, len(targets), size)
            train, val, test = split_stimuli(len(targets), data.val_fraction, 0.0, rng,
                                             test=np.sort(things.rdm48_index))
            # the RDM in the order of the sorted test objects
            pos = np.argsort(things.rdm48_index)
            test_rdm = things.rdm48[np.ix_(pos, pos)]
            trip, odd = things.triplets, things.odd
        else:
            from raybrain.data.clip_synthetic import synthetic_clip_data
            from raybrain.data.images import ImageSet

            syn = synthetic_clip_data(data.n_images, size=size, n_dims=data.n_dims,
                                      times_ms=(0, 0, 1), n_triplets=data.n_triplets,
                                      informative=data.generator == "informative",
                                      seed=data_seed)
            emb = syn.embeddings
            targets = rescale_spose(emb, float(emb.min()), float(emb.max()))
            labels = syn.labels
            images = ImageSet(syn.images, [f"image_{k}" for k in range(len(syn.images))],
                              data.normalisation)
            train, val, test = split_stimuli(len(targets), data.val_fraction,
                                             data.test_fraction, rng)
            test_rdm = behaviour_rdm(targets[test])
            trip, odd = syn.triplets, syn.odd
        heldout = np.sort(np.concatenate([val, test]))
        triplets, odd_h = restrict_triplets(trip, odd, heldout)
        return BehaviorTaskData(images=images, targets=np.asarray(targets, np.float32),
                                labels=list(labels), train=train, val=val, test=test,
                                test_rdm=np.asarray(test_rdm, np.float64), heldout=heldout,
                                triplets=triplets, odd=odd_h, data_seed=data_seed, data=data)

    def build(self, data: BehaviorTaskData, params: dict[str, Any], brain_source: str | None,
              seed: int, device: str = "cpu") -> BehaviorRun:
        p = {**self.defaults(), **params}
        self.check_run_params(p, brain_source)
        return BehaviorRun(data, p, brain_source, seed, device)


def _labels(data: BehaviorData, things) -> list[str]:
    if data.labels_file is None:
        return list(things.labels)
    p = Path(data.labels_file)
    if not p.is_file():
        raise SpecError(f"data.labels_file '{p}' not found; expected one label per line")
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]


class BehaviorRun(CLIPRun):
    """One CLIP-HBA-Behavior model (see :class:`CLIPHBABehaviorTask`)."""

    def __init__(self, data: BehaviorTaskData, p: dict[str, Any], brain_source: str | None,
                 seed: int, device: str):
        self._init_stopping()
        self.val_metric = "val_rdm_spearman"
        self.patience = int(p["patience"])
        self._setup(data, p, brain_source, seed, device, lambda: _make_model(data, p),
                    brain_weight=None)
        self.targets = data.view(brain_source)
        self.real = data.targets

    def make_optimizers(self) -> dict[str, Any]:
        import torch

        from raybrain.models.dora import adapter_parameters

        params = list(adapter_parameters(self._module()).values())
        return {"main": torch.optim.AdamW(params, lr=float(self.p["lr"]),
                                          weight_decay=float(self.p["weight_decay"]))}

    def trainable_state(self) -> dict[str, Any]:
        from raybrain.models.dora import adapter_state_dict

        return adapter_state_dict(self._module())

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        from raybrain.models.dora import load_adapter_state_dict

        load_adapter_state_dict(self._module(), state)

    def _x(self, idx):
        import torch

        return torch.from_numpy(self.data.images.batch(np.asarray(idx))).to(self.device)

    def _train_steps(self, shard: tuple[int, int]) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        d = self.data
        order = torch.randperm(len(d.train), generator=self.order_rng)
        self.model.train()
        total, n = 0.0, 0
        for b in batches(order, int(self.p["batch_size"]), shard):
            idx = d.train[b.numpy()]
            y = torch.from_numpy(self.targets[idx]).to(self.device)
            loss = F.mse_loss(self.model(self._x(idx)), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        return {"loss": total / max(n, 1)}

    def _predict(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """Predicted embeddings (n, D) and image embeddings (n, E) of objects ``idx``."""
        import torch

        model = self._module()
        model.eval()
        preds, feats = [], []
        with torch.no_grad():
            for part in chunks(np.asarray(idx), 128):
                img = model.image_embeddings(self._x(part))
                preds.append((model.clip.logit_scale.exp() * img @ model.text().T).cpu().numpy())
                feats.append(img.cpu().numpy())
        return (np.concatenate(preds).astype(np.float64),
                np.concatenate(feats).astype(np.float64))

    def _evaluate(self) -> dict[str, float]:
        from raybrain.align import linear_cka
        from raybrain.data.behaviour import behaviour_rdm, odd_one_out_accuracy, rdm_spearman

        d = self.data
        pred, feat = self._predict(d.heldout)
        pos = {int(v): k for k, v in enumerate(d.heldout)}
        t = [pos[int(i)] for i in d.test]
        v = [pos[int(i)] for i in d.val]
        if not np.isfinite(pred).all():
            nan = float("nan")
            return {"test_rdm_spearman": nan, "val_rdm_spearman": nan, "test_mse": nan,
                    "val_mse": nan, "test_triplet_accuracy": nan,
                    "test_feature_rdm_spearman": nan, "align_cka": nan}
        out = {
            "test_rdm_spearman": _finite(rdm_spearman(pred[t], d.test_rdm)),
            "val_rdm_spearman": _finite(rdm_spearman(pred[v], behaviour_rdm(self.targets[d.val]))),
            "test_mse": float(np.mean((pred[t] - self.real[d.test]) ** 2)),
            "val_mse": float(np.mean((pred[v] - self.targets[d.val]) ** 2)),
            "test_feature_rdm_spearman": _finite(rdm_spearman(feat[t], d.test_rdm)),
            "align_cka": _finite(linear_cka(pred[t], self.real[d.test])),
            "test_triplet_accuracy": (odd_one_out_accuracy(pred, d.triplets, d.odd)
                                      if len(d.triplets) else 0.0),
        }
        self._last_pred = pred[t]
        return out

    def artifacts(self, brain_data: bool = False) -> dict[str, Any]:
        """The predicted RDM of the test objects (model-derived; never the targets, so
        ``brain_data`` changes nothing)."""
        from raybrain.data.behaviour import behaviour_rdm

        pred = getattr(self, "_last_pred", None)
        if pred is None or not np.isfinite(pred).all():
            return {}
        return {"model_rdm": behaviour_rdm(pred).astype(np.float32)}


def _finite(x: float) -> float:
    """A correlation that is undefined (a constant RDM) counts as 0."""
    x = float(x)
    return x if np.isfinite(x) else 0.0


def _make_model(data: BehaviorTaskData, p: dict[str, Any]):
    from raybrain.models.clip import CLIPHBABehavior, tokenize_labels
    from raybrain.models.dora import apply_dora
    from raybrain.tasks._clip_common import backbone

    cfg = data.data
    tokens = tokenize_labels(cfg.model, data.labels)
    clip = backbone(cfg)
    apply_dora(clip, placement=p["placement"], n_vision=int(p["n_vision"]),
               n_text=int(p["n_text"]), rank=int(p["rank"]), alpha=float(p["dora_alpha"]),
               dropout=float(p["dropout"]))
    return CLIPHBABehavior(clip, tokens, target_dim=data.targets.shape[1])


__all__ = ["BehaviorData", "BehaviorRun", "BehaviorTaskData", "CLIPHBABehaviorTask"]
