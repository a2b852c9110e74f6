"""What the two CLIP-HBA tasks share: backbone and image settings, checks, splits, runs.

Not a task module (the leading underscore keeps it out of the registry). The tasks are
:mod:`raybrain.tasks.clip_hba_behavior` and :mod:`raybrain.tasks.clip_hba_meg`.

:class:`CLIPRun` is a :class:`~raybrain.tasks.base.TorchRun` whose checkpoint holds the
trained adapters only (the frozen backbone comes from its checkpoint file), trained with
AdamW, with early stopping on the validation twin of the primary metric: after every
epoch the run keeps the trainable state of its best validation epoch; when ``patience``
epochs pass without improvement, or the last epoch is reached, it restores that state,
evaluates it once more (those are the epoch's metrics, so a run's final metrics are its
best-validation model's) and sets ``stopped``. A run without a brain source (the ``none``
arm: the untouched backbone) never trains: it evaluates once and reports the same numbers
every epoch.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raybrain.errors import SpecError
from raybrain.tasks.base import TorchRun

_TINY_ALIASES = ("raybrain-tiny-vit",)


class BackboneImages(BaseModel):
    """Backbone and image settings shared by the CLIP-HBA tasks' ``data:`` sections.

    ``model`` is an open_clip architecture (``ViT-L-14``) or ``raybrain-tiny-vit`` (a
    4-block width-64 ViT on 32 x 32 images, for tests and quick specs); ``pretrained`` a
    local checkpoint file (None: random weights; nothing is downloaded). Images come from
    ``images_dir`` with ``order_file`` (line k names the image of stimulus k), or from
    ``images_file`` (``.npy``/``.npz``, see :mod:`raybrain.data.images`); synthetic data
    make their own.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = "ViT-L-14"
    pretrained: str | None = None
    #: OpenAI's ViT-L-14 weights were trained with QuickGELU
    quick_gelu: bool = False
    #: torch.load(weights_only=...): False only for a trusted TorchScript checkpoint
    weights_only: bool = True
    #: fix the head's scale exp(logit_scale) (None: the checkpoint's own; random weights
    #: start at 1 / 0.07 = 14.3, trained CLIPs end near 100, the scale of the rescaled
    #: SPoSE targets); frozen like the rest of the backbone
    logit_scale: float | None = Field(None, gt=0)
    #: per-channel normalisation of the images (the CLIP-HBA code uses THINGS statistics)
    normalisation: Literal["things", "clip", "none"] = "things"
    images_dir: str | None = None
    order_file: str | None = None
    images_file: str | None = None
    images_key: str | None = None

    @model_validator(mode="after")
    def _images(self):
        if self.images_dir and self.images_file:
            raise ValueError("give either data.images_dir (with data.order_file) or "
                             "data.images_file, not both")
        if self.images_dir and not self.order_file:
            raise ValueError("data.images_dir needs data.order_file: a text file naming the "
                             "image of each stimulus, one per line")
        if self.order_file and not self.images_dir:
            raise ValueError("data.order_file is read with data.images_dir (the folder its "
                             "names are relative to)")
        return self


BACKBONE_PATHS = ("pretrained", "images_dir", "order_file", "images_file")


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def absolute_paths(task, data: BaseModel) -> dict[str, Any]:
    """The data section with every path (``task.data_paths``, any depth) made absolute, as
    trials receive it (a Ray trial may run in another working directory)."""

    def walk(value, key=""):
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if isinstance(value, str) and value and task.is_data_path_key(key):
            return _abs(value)
        return value

    return walk(data.model_dump())


# ------------------------------------------------------------------------- backbone
@functools.lru_cache(maxsize=16)
def model_geometry(model: str) -> dict[str, int]:
    """Widths and block counts of an open_clip architecture, from its config (no build).

    Returns
    -------
    dict
        ``vision_width``, ``text_width``, ``vision_blocks``, ``text_blocks``,
        ``image_size`` (pixels).
    """
    from raybrain.models.clip import _model_config

    cfg = _model_config(model)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    size = v.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return {"vision_width": int(v["width"]), "text_width": int(t.get("width", 512)),
            "vision_blocks": int(v["layers"]), "text_blocks": int(t.get("layers", 12)),
            "image_size": int(size)}


def check_adapters(model: str, params: dict[str, list[Any]], defaults: dict[str, Any],
                   all_vision_default: bool = False) -> None:
    """One-line errors for adapter settings that cannot fit the architecture.

    ``params`` maps names to the values whose bounds matter (as ``validate_spec`` passes
    them). ``n_vision = -1`` means every vision block.
    """
    geo = model_geometry(model)
    ranks = [int(r) for r in params.get("rank", [defaults["rank"]])]
    n_vis = [int(v) for v in params.get("n_vision", [defaults["n_vision"]])]
    n_txt = [int(v) for v in params.get("n_text", [defaults["n_text"]])]
    for nv in n_vis:
        if nv > geo["vision_blocks"]:
            raise SpecError(f"params.n_vision must be <= the {geo['vision_blocks']} vision blocks "
                            f"of {model!r} (or -1: all), got {nv}")
    for nt in n_txt:
        if nt > geo["text_blocks"]:
            raise SpecError(f"params.n_text must be <= the {geo['text_blocks']} text blocks of "
                            f"{model!r}, got {nt}")
    widths = []
    if any(nv != 0 for nv in n_vis):
        widths.append(("vision", geo["vision_width"]))
    if any(nt > 0 for nt in n_txt):
        widths.append(("text", geo["text_width"]))
    for r in ranks:
        for tower, w in widths:
            if r > w:
                raise SpecError(f"params.rank must be <= the layer width of the adapted {tower} "
                                f"blocks of {model!r} ({w}), got {r}")


def check_backbone(data: BackboneImages) -> None:
    """Unknown model name, missing checkpoint, or a checkpoint that does not fit: one line.

    A checkpoint is checked by loading it into the architecture (the only sure test that it
    fits); the loaded backbone is kept for the runs of this process.
    """
    model_geometry(data.model)  # unknown names fail here, before any build
    if data.pretrained is not None:
        if not Path(data.pretrained).expanduser().is_file():
            raise SpecError(f"data.pretrained: CLIP checkpoint '{data.pretrained}' not found; "
                            f"expected a local weights file for {data.model!r} (nothing is "
                            f"downloaded)")
        shared_backbone(data.model, _abs(data.pretrained), data.quick_gelu, data.weights_only)


@functools.lru_cache(maxsize=2)
def shared_backbone(model: str, pretrained: str, quick_gelu: bool, weights_only: bool):
    """A pretrained backbone loaded once per process (its frozen weights are shared)."""
    from raybrain.models.clip import build_clip

    clip = build_clip(model, pretrained, quick_gelu=quick_gelu, weights_only=weights_only)
    for p in clip.parameters():
        p.requires_grad_(False)
    return clip


def backbone(data: BackboneImages):
    """A fresh CLIP for one run.

    With a checkpoint: a copy of the process's shared backbone whose parameters and buffers
    are the shared (frozen) tensors, so runs cost only their adapters. Without one: random
    weights drawn from torch's current RNG (the run's seed). ``data.logit_scale`` fixes the
    head's scale.
    """
    import torch

    from raybrain.models.clip import build_clip

    if data.pretrained is None:
        clip = build_clip(data.model, None, quick_gelu=data.quick_gelu)
    else:
        base = shared_backbone(data.model, _abs(data.pretrained), data.quick_gelu,
                               data.weights_only)
        memo = {id(t): t for t in (*base.parameters(), *base.buffers())}
        clip = copy.deepcopy(base, memo)
    if data.logit_scale is not None:
        # a parameter of this run's own (the shared one keeps the checkpoint's value)
        clip.logit_scale = torch.nn.Parameter(torch.tensor(math.log(data.logit_scale)),
                                              requires_grad=False)
    return clip


def load_images(data: BackboneImages, n_stimuli: int, size: int):
    """The stimulus images of a files-based source (folder + order file, or array file)."""
    from raybrain.data.images import load_image_array, load_image_folder

    if data.images_dir:
        return load_image_folder(data.images_dir, data.order_file, size,
                                 normalisation=data.normalisation, n_stimuli=n_stimuli)
    if data.images_file:
        return load_image_array(data.images_file, size, normalisation=data.normalisation,
                                n_stimuli=n_stimuli, key=data.images_key)
    raise SpecError("this data source needs images: data.images_dir with data.order_file, or "
                    "data.images_file")


def count_images(data: BackboneImages) -> tuple[int, list[str] | None]:
    """(number of images, their names or None) without reading pixels."""
    from raybrain.data.images import read_order_file

    if data.images_dir:
        names = read_order_file(data.order_file)
        return len(names), names
    if data.images_file:
        p = Path(data.images_file)
        if not p.is_file():
            raise SpecError(f"image array file '{p}' not found; expected a .npy or .npz file")
        from raybrain.data.rdm import array_header

        key = data.images_key
        if p.suffix == ".npz" and key is None:
            import zipfile

            with zipfile.ZipFile(p) as zf:
                names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            key = "images" if "images" in names else None
        shape, _ = array_header(p, key)
        return int(shape[0]), None
    raise SpecError("this data source needs images: data.images_dir with data.order_file, or "
                    "data.images_file")


# ------------------------------------------------------------------------- splits
def split_stimuli(n: int, val_fraction: float, test_fraction: float, rng: np.random.Generator,
                  test=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test stimuli (sorted index arrays, disjoint, covering ``n``).

    ``test`` fixes the test stimuli (e.g. THINGS' 48 fully sampled objects); otherwise
    ``round(test_fraction * n)`` are drawn. Validation takes ``round(val_fraction * rest)``.
    """
    order = rng.permutation(n)
    if test is None:
        n_test = int(round(test_fraction * n))
        test_idx, rest = order[:n_test], order[n_test:]
    else:
        test_idx = np.asarray(test, dtype=np.int64)
        rest = order[~np.isin(order, test_idx)]
    n_val = int(round(val_fraction * len(rest)))
    val_idx, train_idx = rest[:n_val], rest[n_val:]
    if len(train_idx) < 3 or len(val_idx) < 3 or len(test_idx) < 3:
        raise SpecError(f"{n} stimuli split into {len(train_idx)} training, {len(val_idx)} "
                        f"validation and {len(test_idx)} test stimuli; each needs >= 3 (adjust "
                        f"data.val_fraction / data.test_fraction or add stimuli)")
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def batches(order, batch_size: int, shard: tuple[int, int], min_size: int = 1):
    """Index batches of one epoch for data-parallel rank ``shard`` (equal shards, padded by
    wrapping around); a last batch smaller than ``min_size`` is dropped."""
    import torch

    rank, world = shard
    if world > 1:
        pad = (-len(order)) % world
        order = torch.cat([order, order[:pad]])[rank::world]
    out = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    return [b for b in out if len(b) >= min_size]


# ------------------------------------------------------------------------- runs
class CLIPRun(TorchRun):
    """Adapter-only, AdamW-trained, early-stopping run (see the module docstring).

    Subclasses implement ``_train_steps(shard)`` (one epoch of optimiser steps; returns the
    training metrics), ``_evaluate()`` (held-out metrics incl. ``val_metric``),
    ``_trainable_modules()`` hooks via :meth:`trainable_state` /
    :meth:`load_trainable_state`, and set ``val_metric``, ``patience`` and
    ``stop_after`` (epochs before early stopping may act) in ``__init__``.
    """

    val_metric: str
    patience: int
    stop_after: int = 0

    def _init_stopping(self) -> None:
        self.best_value: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict[str, Any] | None = None
        self._cached: dict[str, float] | None = None

    # -- training -----------------------------------------------------------------------
    def _train_epoch(self, shard: tuple[int, int]) -> dict[str, float]:
        if self.source is None:  # the untouched backbone: nothing to train
            self.epoch += 1
            return {}
        out = self._train_steps(shard)
        self.epoch += 1
        return out

    def evaluate(self) -> dict[str, float]:
        if self.source is None:
            if self._cached is None:
                self._cached = self._evaluate()
            return dict(self._cached)
        metrics = self._evaluate()
        value = metrics[self.val_metric]
        if math.isfinite(value) and (self.best_value is None or value > self.best_value):
            self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
            self.best_state = copy.deepcopy(self.trainable_state())
        else:
            self.bad_epochs += 1
        out_of_patience = self.epoch > self.stop_after and self.bad_epochs >= self.patience
        if self.epoch >= self.epochs or out_of_patience:
            if self.best_state is not None and self.best_epoch != self.epoch:
                self.load_trainable_state(copy.deepcopy(self.best_state))
                metrics = self._evaluate()
            self.stopped = True
        metrics["best_epoch"] = float(self.best_epoch)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["early_stopping"] = {"best_value": self.best_value, "best_epoch": self.best_epoch,
                                   "bad_epochs": self.bad_epochs, "best_state": self.best_state,
                                   "stopped": self.stopped}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        es = state.get("early_stopping", {})
        self.best_value = es.get("best_value")
        self.best_epoch = int(es.get("best_epoch", 0))
        self.bad_epochs = int(es.get("bad_epochs", 0))
        self.best_state = es.get("best_state")
        self.stopped = bool(es.get("stopped", False))
        self._cached = None


def chunks(idx: np.ndarray, size: int):
    for s in range(0, len(idx), size):
        yield idx[s:s + size]


Fraction = Field(0.2, gt=0, lt=1)
