"""Brain-in-the-loop structural alignment (task ``brain-loop-gw``).

Protocol ("Human-like Cognitive Generalization for Large Models via Brain-in-the-loop
Supervision", arXiv 2505.09085; the model and its losses are
:class:`raybrain.models.brain_loop.BrainLoopModel`): brain and model representations of
the same training concepts become graphs; a multiplex attention GNN scores brain x model
correspondences, optimal transport turns them into a plan (step 1: ``L1 = OT + lambda1
CE``), and Gromov-Wasserstein plus a Gumbel K-neighbourhood term align the model side's
structure with the brain's (step 2: ``L2 = local CE + lambda2 GW``). Each batch of
training concepts takes the two steps in turn, each with its own Adam optimiser
(:meth:`BrainLoopRun.make_optimizers`: ``"step1"`` and ``"step2"``; the two losses differ
by orders of magnitude, so each keeps its own moment estimates). The model side is an
MLP adaptor over frozen backbone features; it also learns its own task (exemplar-
contrastive recognition of concepts, weight ``self_weight``), which is all the ``l2`` and
``none`` arms train.

Evaluation, after every epoch, on concepts never trained on (the split is over concepts,
stratified by category, so every held-out concept has trained siblings of its category):

- ``test_oneshot_accuracy`` (the primary metric) and ``val_oneshot_accuracy``:
  one-shot classification of new concepts into their superordinate category (e.g.
  living / non-living) from one exemplar of one concept per category
  (:func:`~raybrain.align.concept_metrics.category_one_shot_accuracy`, ``data.
  oneshot_episodes`` episodes, seed 0), on the adaptor output. This is the paper's "one-shot
  abstract concept" test; it is what the brain's hierarchy helps on the synthetic
  generator, where the model's features carry the hierarchy weakly and mixed with a strong
  nuisance grouping ("style") that the brain does not show. Concept-level one-shot
  recognition (``test_concept_oneshot``) is the model's own task and is not expected to
  gain (the brain term groups concepts; it does not separate them).
- ``test_silhouette`` / ``val_silhouette``: silhouette of the superordinate categories
  in the adaptor output (items, cosine), the paper's other measure.
- Alignment with the *real* brain data, for every arm (``brain_control`` changes only
  what an arm trains on), on the test concepts: ``gw_distance`` (lower is better; it
  compares shapes only, and falls with training on null brains too), ``ot_match_top1``
  (the step-1 plan's top-1 brain -> model matching), ``rsa`` (Spearman of the two RDMs at
  the true correspondence), ``match_top1``/``match_top5`` (the GW plan against the true
  correspondence), ``retrieval_top1`` and ``neighbour_overlap``
  (:meth:`BrainLoopModel.evaluate` defines each). The correspondence-aware ones
  (``ot_match_top1``, ``rsa``, ``match_top5``) are what separates an informative brain
  from a null one.

Arms: ``brain`` (real brain data), ``shuffled`` (brain rows permuted across concepts),
``noise`` (a brain surrogate with the same eigenvalue spectrum and no correspondence),
the ``no-gw`` ablation (``lambda2 = 0`` and ``local_weight = 0``: step 1 only), ``l2`` and
``none`` (``brain_weight = 0``: the own task only; only the adaptor is trained and
checkpointed).

Saved arrays (``artifact_every``): the model RDM of the test concepts (``model_rdm``,
concepts ordered by superordinate then basic category then name, so the hierarchy shows
as blocks). The brain RDM is derived brain data and is never saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raybrain.errors import SpecError
from raybrain.tasks import register
from raybrain.tasks.base import GENERATOR_NOT_BARE_NULL, Param, Task, TorchRun

# ----------------------------------------------------------------------------- data spec

class BackboneSettings(BaseModel):
    """Images through a frozen backbone (:func:`raybrain.models.backbones.backbone_features`).

    ``checkpoint``: a local weights file, or None for random weights (drawn under torch
    seed 0; nothing is downloaded). Features are computed once, in the sweep's driver, and
    cached.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    library: Literal["open_clip", "torchvision"] = "open_clip"
    checkpoint: str | None = None
    image_size: int = Field(224, ge=8)
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"


_FILE_KEYS = ("features_file", "images_file", "images_dir", "images_order_file", "backbone",
              "item_concepts_file", "brain_concepts_file", "voxels_file", "rdm_file",
              "categories_file")


class BrainLoopData(BaseModel):
    """The ``data:`` section of a ``brain-loop-gw`` spec.

    ``source: synthetic`` generates concepts with a known hierarchy
    (:func:`raybrain.data.concepts.synthetic_concepts`, seeded by the sweep's data seed;
    ``generator: null`` gives the brain a hierarchy of the same shape over permuted
    concepts). ``source: files`` reads the user's data: model-side features per item
    (``features_file``, or images through a ``backbone``), the concept of each item
    (``item_concepts_file``), brain voxel patterns or an RDM per concept (``voxels_file`` /
    ``rdm_file``, with ``brain_concepts_file`` naming each row) and a category table
    (``categories_file``: columns ``concept``, ``superordinate``[, ``basic``]).
    ``source: things48`` reads the 48 THINGS objects (SPoSE rows as model features, the
    triplet RDM as the "brain"; :func:`raybrain.data.concepts.things48`).

    Every concept needs a superordinate category: the primary metric (category one-shot)
    and the silhouette are computed over them.
    """

    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "files", "things48"] = "synthetic"
    # -- synthetic generator
    generator: Literal["informative", "null"] = "informative"
    #: "rdm": the synthetic brain is given as its RDM only (the RDM-row brain encoder)
    synthetic_brain: Literal["voxels", "rdm"] = "voxels"
    n_super: int = Field(2, ge=2)
    n_basic: int = Field(4, ge=1)
    n_per_basic: int = Field(16, ge=1)
    n_exemplars: int = Field(5, ge=1)
    n_voxels: int = Field(128, ge=2)
    feature_dim: int = Field(48, ge=1)
    brain_noise: float = Field(0.3, ge=0)
    hierarchy_blur: float = Field(0.5, ge=0)
    style_strength: float = Field(1.0, ge=0)
    exemplar_noise: float = Field(0.2, ge=0)
    # -- user files
    features_file: str | None = None
    features_key: str | None = None
    #: images: an array file (.npy/.npz) or a folder with an order file (one name per line)
    images_file: str | None = None
    images_dir: str | None = None
    images_order_file: str | None = None
    backbone: BackboneSettings | None = None
    item_concepts_file: str | None = None
    brain_concepts_file: str | None = None
    voxels_file: str | None = None
    rdm_file: str | None = None
    brain_key: str | None = None
    categories_file: str | None = None
    #: where backbone features are cached (default: beside the first image input)
    cache_dir: str | None = None
    # -- THINGS
    things_dir: str | None = None
    # -- split and evaluation
    #: fractions of concepts for training, validation and test (stratified by category)
    split: list[float] = [0.5, 0.25, 0.25]
    #: episodes of the one-shot tests
    oneshot_episodes: int = Field(100, ge=1)
    #: measure the alignment metrics (GW, matching, RSA, retrieval, neighbour overlap,
    #: concept one-shot) every this many epochs and at the last one; the downstream metrics
    #: (one-shot accuracy, silhouette) are measured every epoch
    align_every: int = Field(1, ge=1)
    #: solver of the evaluation's GW distance and plan (every arm measured alike)
    eval_gw_solver: Literal["best", "exact", "entropic"] = "best"
    #: entropic epsilon of the evaluation's GW (its entropic half with "best")
    eval_gw_epsilon: float = Field(5e-3, gt=0)

    _bare_null = GENERATOR_NOT_BARE_NULL

    @model_validator(mode="after")
    def _check(self):
        given = [k for k in _FILE_KEYS if getattr(self, k) is not None]
        if self.source != "files" and given:
            raise ValueError(f"data.{given[0]} is read only with data.source 'files', got "
                             f"source {self.source!r}")
        if self.source != "things48" and self.things_dir is not None:
            raise ValueError(f"data.things_dir is read only with data.source 'things48', got "
                             f"source {self.source!r}")
        if self.source == "things48" and not self.things_dir:
            raise ValueError("data.source 'things48' needs data.things_dir (the folder of the "
                             "THINGS 48-object files)")
        if self.source == "files":
            for k in ("item_concepts_file", "brain_concepts_file", "categories_file"):
                if not getattr(self, k):
                    raise ValueError(f"data.source 'files' needs data.{k}")
            if (self.voxels_file is None) == (self.rdm_file is None):
                raise ValueError("data.source 'files' needs exactly one of data.voxels_file and "
                                 "data.rdm_file (the brain side)")
            images = self.images_file is not None or self.images_dir is not None
            if (self.features_file is not None) == images:
                raise ValueError("data.source 'files' needs exactly one model side: "
                                 "data.features_file, or images (data.images_file, or "
                                 "data.images_dir with data.images_order_file) with data.backbone")
            if images and self.backbone is None:
                raise ValueError("images need data.backbone: {name: ..., library: open_clip | "
                                 "torchvision, checkpoint: FILE or null}")
            if self.images_file is not None and self.images_dir is not None:
                raise ValueError("give data.images_file or data.images_dir, not both")
            if (self.images_dir is None) != (self.images_order_file is None):
                raise ValueError("data.images_dir and data.images_order_file go together")
            if self.backbone is not None and not images:
                raise ValueError("data.backbone needs images (data.images_file or "
                                 "data.images_dir)")
        if len(self.split) != 3 or any(not (f >= 0) for f in self.split) \
                or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError(f"data.split must be 3 fractions (train, val, test) >= 0 summing to "
                             f"1, got {self.split}")
        return self

    @property
    def n_synthetic(self) -> int:
        return self.n_super * self.n_basic * self.n_per_basic


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _read_images(data: BrainLoopData):
    """The user's images as an :class:`~raybrain.data.images.ImageSet` (no normalisation:
    the backbone applies its own)."""
    from raybrain.data.images import load_image_array, load_image_folder

    size = data.backbone.image_size
    if data.images_file is not None:
        return load_image_array(_abs(data.images_file), size, normalisation="none")
    return load_image_folder(_abs(data.images_dir), _abs(data.images_order_file), size,
                             normalisation="none")


def _backbone_entry(data: BrainLoopData):
    """Backbone features of the user's images, computed once and cached
    (:func:`raybrain.data.cache.cached_arrays`, key: backbone settings + image files)."""
    from raybrain.data.cache import cached_arrays
    from raybrain.models.backbones import backbone_features

    bb = data.backbone
    if data.images_file is not None:
        images = [_abs(data.images_file)]
    else:  # every image file of the order, so a changed image is a new entry
        from raybrain.data.images import read_order_file

        folder = Path(_abs(data.images_dir))
        images = [_abs(data.images_order_file),
                  *(str(folder / n) for n in read_order_file(_abs(data.images_order_file)))]
    inputs = images + ([_abs(bb.checkpoint)] if bb.checkpoint is not None else [])
    settings = {"name": bb.name, "library": bb.library, "image_size": bb.image_size}

    def build():
        images = _read_images(data)
        # random weights (no checkpoint) are drawn under torch seed 0: reproducible
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            feats = backbone_features(images.pixels, bb.name, bb.library, _abs(bb.checkpoint),
                                      batch_size=bb.batch_size, device=bb.device,
                                      image_size=bb.image_size)
        return {"features": feats}, {"n_images": len(images)}

    return cached_arrays("brain-loop-features", settings, inputs, build,
                         cache_dir=_abs(data.cache_dir))


def load_concepts(data: BrainLoopData, data_seed: int, features: np.ndarray | None = None):
    """The sweep's :class:`~raybrain.data.concepts.ConceptData` (real brain side).

    ``features``: model-side features to use instead of reading them (the image count
    check of :meth:`BrainLoopGW.check_data` passes zeros).
    """
    from raybrain.data.concepts import (
        build_concept_data,
        load_concept_data,
        read_category_table,
        read_names,
        synthetic_concepts,
        things48,
    )

    if data.source == "synthetic":
        d = synthetic_concepts(
            data_seed, informative=data.generator == "informative", n_super=data.n_super,
            n_basic=data.n_basic, n_per_basic=data.n_per_basic, n_exemplars=data.n_exemplars,
            n_voxels=data.n_voxels, feature_dim=data.feature_dim, brain_noise=data.brain_noise,
            hierarchy_blur=data.hierarchy_blur, style_strength=data.style_strength,
            exemplar_noise=data.exemplar_noise)
        return replace(d, brain=None) if data.synthetic_brain == "rdm" else d
    if data.source == "things48":
        return things48(_abs(data.things_dir))
    if features is None and data.features_file is not None:
        return load_concept_data(
            features_path=_abs(data.features_file),
            item_concepts_path=_abs(data.item_concepts_file),
            brain_concepts_path=_abs(data.brain_concepts_file),
            voxels_path=_abs(data.voxels_file), rdm_path=_abs(data.rdm_file),
            categories_path=_abs(data.categories_file), require_categories=True,
            features_key=data.features_key, brain_key=data.brain_key)
    from raybrain.data.embeddings import load_voxels
    from raybrain.data.rdm import load_rdm

    if features is None:
        features = _backbone_entry(data).arrays["features"]
    brain = None if data.voxels_file is None else np.asarray(
        load_voxels(_abs(data.voxels_file), key=data.brain_key))
    rdm = None
    if data.rdm_file is not None:
        rdm = np.asarray(load_rdm(_abs(data.rdm_file), key=data.brain_key))
        if rdm.ndim != 2:
            raise SpecError(f"RDM file '{data.rdm_file}' holds a stack of shape {rdm.shape}; "
                            f"expected one (n_concepts, n_concepts) matrix")
    sup, bas = read_category_table(_abs(data.categories_file))
    items = read_names(_abs(data.item_concepts_file), "item concepts")
    if len(items) != len(features):
        raise SpecError(f"the item concepts file names {len(items)} items but the model side has "
                        f"{len(features)} (images or feature rows); expected one name per item")
    return build_concept_data(read_names(_abs(data.brain_concepts_file), "brain concepts"),
                              items, features, brain=brain, brain_rdm=rdm, categories=sup,
                              basic=bas, require_categories=True, info={"source": "files"})


def category_order(d, idx) -> np.ndarray:
    """``idx`` sorted by (superordinate, basic, concept name): RDMs then show the hierarchy
    as blocks."""
    def key(i):
        sup = "" if d.superordinate is None else str(d.superordinate[i])
        bas = "" if d.basic is None or d.basic[i] is None else str(d.basic[i])
        return (sup, bas, d.concepts[i])

    return np.array(sorted((int(i) for i in idx), key=key), dtype=np.int64)


@dataclass
class ConceptTaskData:
    """What every run of a sweep shares.

    Attributes
    ----------
    concepts : ConceptData
        The real data (brain and model sides); evaluation always reads this one.
    train, val, test : np.ndarray of int64
        Concept indices of the splits (``test`` and ``val`` in :func:`category_order`).
    data_seed : int
    settings : BrainLoopData
    """

    concepts: Any
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    data_seed: int
    settings: BrainLoopData
    _views: dict[str, Any] = field(default_factory=dict)

    def training_data(self, source: str):
        """The data an arm trains on (:func:`raybrain.data.concepts.brain_control`): the
        real data, or its ``shuffled`` / ``noise`` control drawn from the data seed (the
        same control for every run of the sweep)."""
        from raybrain.data.concepts import brain_control

        if source not in self._views:
            stream = {"real": 10, "shuffled": 11, "noise": 12}.get(source, 13)
            self._views[source] = brain_control(
                self.concepts, source, np.random.default_rng([self.data_seed, stream]))
        return self._views[source]


# ------------------------------------------------------------------------------- params

_PARAMS = {
    # training
    "lr": Param(3e-3, float, low=0.0, help="Adam learning rate of both steps (paper 2e-5)"),
    "epochs": Param(40, int, low=1, help="training epochs (one pass over the training "
                    "concepts each)"),
    "batch_size": Param(256, int, low=2, help="training concepts per graph (per step pair); "
                        "paper 256"),
    "weight_decay": Param(0.0, float, low=0.0, help="L2 penalty (Adam weight_decay, both "
                          "optimisers)"),
    # model side and its own task
    "embed_dim": Param(32, int, low=1, help="width of the shared embedding (adaptor and brain "
                       "encoder outputs, GNN)"),
    "adaptor_hidden": Param(256, int, low=1, help="hidden units of the model-side MLP adaptor "
                            "(paper 256)"),
    "self_weight": Param(1.0, float, low=0.0, help="weight of the model's own exemplar-"
                         "contrastive task (what the l2 and none arms train)"),
    "self_temperature": Param(0.1, float, low=1e-6, help="temperature of the own task's "
                              "softmax over cosine similarities"),
    "feature_dropout": Param(0.1, float, low=0.0, high=0.99, help="dropout on the backbone "
                             "features in the own task's two views"),
    # brain term
    "brain_weight": Param(1.0, float, brain=True, low=0.0,
                          help="multiplies every brain term (OT, CE, local CE, GW); 0 is the "
                               "none arm"),
    "k1": Param(20, int, brain=True, low=1, help="brain neighbourhood size K1 (kNN graph and "
                "Gumbel neighbourhoods); paper 20"),
    "k2": Param(20, int, brain=True, low=1, help="model neighbourhood size K2; paper 20"),
    "lambda1": Param(0.1, float, brain=True, low=0.0, help="weight of the CE term in "
                     "L1 = OT + lambda1 CE (paper 0.1)"),
    "lambda2": Param(100.0, float, brain=True, low=0.0, help="weight of the GW term in "
                     "L2 = local CE + lambda2 GW (paper 100)"),
    "local_weight": Param(1.0, float, brain=True, low=0.0, help="weight of the local-"
                          "structure CE in L2 (paper 1)"),
    "tau": Param(0.1, float, brain=True, low=1e-6, help="Gumbel temperature of the "
                 "neighbourhoods (similarities in [-1, 0] are divided by it)"),
    "sinkhorn_reg": Param(0.05, float, brain=True, low=1e-6, help="Sinkhorn epsilon on the "
                          "OT cost (1 - S) / 2 in [0, 1] (also the CE temperature)"),
    "sinkhorn_iter": Param(100, int, brain=True, low=1, help="log-domain Sinkhorn iterations "
                           "(paper 100)"),
    "gnn_conv": Param("gatv2", str, brain=True, choices=("gatv2", "transformer"),
                      help="torch-geometric convolution of the multiplex GNN"),
    "gnn_layers": Param(3, int, brain=True, low=1, help="GNN layers (paper 3)"),
    "gnn_heads": Param(4, int, brain=True, low=1, help="GNN attention heads (paper 4)"),
    "brain_width": Param(32, int, brain=True, low=1, help="voxel transformer token width"),
    "brain_depth": Param(2, int, brain=True, low=1, help="voxel transformer layers (paper 12)"),
    "brain_heads": Param(4, int, brain=True, low=1, help="voxel transformer heads (paper 8)"),
    "brain_tokens": Param(8, int, brain=True, low=1, help="voxel tokens (contiguous voxel "
                          "chunks)"),
    "brain_hidden": Param(128, int, brain=True, low=1, help="hidden units of the RDM-row "
                          "brain encoder (RDM-only data)"),
    "gw_mode": Param("envelope", str, brain=True, choices=("envelope", "entropic"),
                     help="GW gradient: envelope (plan without gradient) or entropic (unrolled)"),
    "gw_solver": Param("exact", str, brain=True, choices=("exact", "entropic"),
                       help="plan solver of the envelope route"),
    "gw_epsilon": Param(5e-3, float, brain=True, low=1e-9, help="entropic GW epsilon of "
                        "training (gw_solver or gw_mode entropic)"),
    "structure_source": Param("data", str, brain=True, choices=("data", "encoder"),
                              help="brain structure step 2 aligns to: the brain data's RDM or "
                                   "the brain encoder's output"),
    "dustbin": Param(False, bool, brain=True, help="learnable dustbin in the OT problem"),
}

#: training-step terms, averaged over the epoch's batches (each present when computed)
_PARTS = ("ot", "ce", "gw", "local", "self")


@register("brain-loop-gw")
class BrainLoopGW(Task):
    """Brain-in-the-loop structural alignment: OT correspondences + GW structure."""

    params = _PARAMS
    data_model = BrainLoopData
    primary_metric = "test_oneshot_accuracy"
    primary_mode = "max"
    #: ``ot``/``ce`` (step 1) and ``gw``/``local`` (step 2) are returned by runs that
    #: compute them (brain-dependent arms; ``gw``/``local`` not by ``no-gw``);
    #: ``test_concept_oneshot`` when some concept has >= 2 exemplars
    metrics = ("test_oneshot_accuracy", "val_oneshot_accuracy", "test_silhouette",
               "val_silhouette", "test_concept_oneshot", "gw_distance", "ot_match_top1",
               "rsa", "match_top1", "match_top5", "retrieval_top1", "neighbour_overlap",
               "loss", "step1_loss", "step2_loss", *_PARTS)
    divergence_threshold = None
    align_metrics = {"ot_match_top1": "max", "rsa": "max", "match_top5": "max",
                     "gw_distance": "min"}
    brain_weight = "brain_weight"
    l2_param = "weight_decay"
    ablations = {"no-gw": {"lambda2": 0.0, "local_weight": 0.0}}
    data_paths = ("features_file", "images_file", "images_dir", "images_order_file",
                  "item_concepts_file", "brain_concepts_file", "voxels_file", "rdm_file",
                  "categories_file", "checkpoint", "cache_dir", "things_dir")
    artifact_every = 5
    #: one graph per batch in one process: runs cannot be split across Train workers
    max_workers = 1
    smoke = {"data": {"n_basic": 2, "n_per_basic": 8, "n_exemplars": 3, "n_voxels": 24,
                      "feature_dim": 12, "oneshot_episodes": 5},
             "params": {"epochs": 2, "batch_size": 64, "lr": 3e-3, "embed_dim": 8,
                        "adaptor_hidden": 16, "brain_width": 8, "brain_depth": 1,
                        "brain_heads": 2, "brain_tokens": 4, "brain_hidden": 16,
                        "gnn_layers": 1, "gnn_heads": 2, "k1": 4, "k2": 4,
                        "sinkhorn_iter": 10, "lambda2": 10.0}}

    # -- checks ------------------------------------------------------------------------
    def check_data(self, data: BrainLoopData, params: dict[str, Any]) -> None:
        """Files, concept lists, RDM shape and categories (reading names, tables and
        arrays, never running a backbone), the split, and K against the training concepts.

        ``params``: every value a param takes in the spec (grid points, range ends).
        """
        from raybrain.data.concepts import split_concepts

        if data.source == "files" and data.features_file is None:
            d = load_concepts(data, 0, features=self._image_placeholder(data))
        else:
            d = load_concepts(data, 0)
        split = split_concepts(d, tuple(data.split), seed=0)
        for name, idx in (("test", split.test), ("validation", split.val)):
            cats = {str(d.superordinate[i]) for i in idx}
            if len(idx) < 3 or len(cats) < 2:
                raise SpecError(f"the {name} split has {len(idx)} concept(s) in {len(cats)} "
                                f"superordinate categories; expected >= 3 concepts in >= 2 "
                                f"categories (raise data.split's {name} fraction or add concepts)")
        n_train = len(split.train)
        sizes = [int(b) for b in params.get("batch_size", [self.params["batch_size"].default])]
        n_nodes = min(min(sizes), n_train)
        for k in ("k1", "k2"):
            worst = max(int(v) for v in params.get(k, [self.params[k].default]))
            if worst >= n_nodes:
                raise SpecError(f"params.{k} must be < the number of training concepts per batch "
                                f"({n_nodes} = min(batch_size {min(sizes)}, {n_train} training "
                                f"concepts)), got {worst}")

    @staticmethod
    def _image_placeholder(data: BrainLoopData) -> np.ndarray:
        """Zeros with one row per image (the image count, read without a backbone)."""
        from raybrain.data.images import read_order_file

        if data.images_dir is not None:
            if not Path(data.images_dir).expanduser().is_dir():
                raise SpecError(f"data.images_dir '{data.images_dir}' not found; expected a "
                                f"folder of images")
            names = read_order_file(_abs(data.images_order_file))
            folder = Path(_abs(data.images_dir))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise SpecError(f"{len(missing)} image(s) of data.images_order_file are not in "
                                f"'{data.images_dir}' (first: {missing[0]!r})")
            n = len(names)
        else:
            from raybrain.data.rdm import array_header

            p = Path(data.images_file).expanduser()
            if not p.is_file():
                raise SpecError(f"data.images_file '{data.images_file}' not found; expected a "
                                f".npy or .npz image array")
            n = len(_read_images(data)) if p.suffix == ".npz" else array_header(p)[0][0]
        if data.backbone.checkpoint is not None \
                and not Path(data.backbone.checkpoint).expanduser().is_file():
            raise SpecError(f"data.backbone.checkpoint '{data.backbone.checkpoint}' not found; "
                            f"expected a local weights file (nothing is downloaded) or null "
                            f"for random weights")
        return np.zeros((int(n), 1), dtype=np.float32)

    # -- preparation (once per sweep, in the driver) ------------------------------------
    def prepare(self, data: BrainLoopData):
        """Images: backbone features computed once and cached; trials then read the cache
        file as a feature file. Paths are made absolute."""
        d = data.model_dump()
        for k in ("features_file", "images_file", "images_dir", "images_order_file",
                  "item_concepts_file", "brain_concepts_file", "voxels_file", "rdm_file",
                  "categories_file", "cache_dir", "things_dir"):
            d[k] = _abs(d[k])
        lines: list[str] = []
        if data.source == "files" and data.backbone is not None:
            entry = _backbone_entry(data)
            feats = entry.arrays["features"]
            lines.append(f"model features: {feats.shape[0]} images x {feats.shape[1]} through "
                         f"{data.backbone.library} {data.backbone.name} "
                         f"({'computed and cached' if entry.computed else 'from the cache'}: "
                         f"{entry.path.name})")
            d.update(features_file=str(entry.path), features_key="features", images_file=None,
                     images_dir=None, images_order_file=None, backbone=None)
        if data.source == "synthetic":
            return None, lines, []
        return d, lines, []

    def load_data(self, data: BrainLoopData, data_seed: int) -> ConceptTaskData:
        from raybrain.data.concepts import split_concepts

        d = load_concepts(data, data_seed)
        split = split_concepts(d, tuple(data.split), seed=data_seed)
        return ConceptTaskData(concepts=d, train=split.train,
                               val=category_order(d, split.val),
                               test=category_order(d, split.test), data_seed=data_seed,
                               settings=data)

    def build(self, data: ConceptTaskData, params: dict[str, Any], brain_source: str | None,
              seed: int, device: str = "cpu") -> BrainLoopRun:
        p = {**self.defaults(), **params}
        self.check_run_params(p, brain_source)
        if brain_source is None and not float(p["self_weight"]) > 0:
            raise SpecError(f"a run without a brain term (the l2 and none arms) trains only the "
                            f"model's own task: self_weight must be > 0, got "
                            f"{p['self_weight']}")
        return BrainLoopRun(data, p, brain_source, seed, device)


# ---------------------------------------------------------------------------------- run

def model_config(p: dict[str, Any], brain_weight: float, n_nodes: int):
    """The :class:`~raybrain.models.brain_loop.BrainLoopConfig` of a run's params.

    Without a brain term (``brain_weight = 0``) K1 and K2 do nothing in training; they are
    capped at ``n_nodes - 1`` so a baseline never fails on a K meant for other data.
    """
    from raybrain.models.brain_loop import BrainLoopConfig

    k1, k2 = int(p["k1"]), int(p["k2"])
    if brain_weight == 0:
        k1, k2 = min(k1, n_nodes - 1), min(k2, n_nodes - 1)
    return BrainLoopConfig(
        embed_dim=int(p["embed_dim"]), adaptor_hidden=int(p["adaptor_hidden"]),
        brain_width=int(p["brain_width"]), brain_depth=int(p["brain_depth"]),
        brain_heads=int(p["brain_heads"]), brain_tokens=int(p["brain_tokens"]),
        brain_hidden=int(p["brain_hidden"]), gnn_layers=int(p["gnn_layers"]),
        gnn_heads=int(p["gnn_heads"]), gnn_conv=str(p["gnn_conv"]), k1=k1, k2=k2,
        lambda1=float(p["lambda1"]), lambda2=float(p["lambda2"]),
        local_weight=float(p["local_weight"]), brain_weight=float(brain_weight),
        self_weight=float(p["self_weight"]), self_temperature=float(p["self_temperature"]),
        feature_dropout=float(p["feature_dropout"]), tau=float(p["tau"]),
        sinkhorn_reg=float(p["sinkhorn_reg"]), sinkhorn_iter=int(p["sinkhorn_iter"]),
        gw_mode=str(p["gw_mode"]), gw_solver=str(p["gw_solver"]),
        gw_epsilon=float(p["gw_epsilon"]), structure_source=str(p["structure_source"]),
        dustbin=bool(p["dustbin"]))


class BrainLoopRun(TorchRun):
    """One brain-in-the-loop model trained on one arm's data (see :class:`BrainLoopGW`).

    Optimisers (:meth:`make_optimizers`): ``"step1"`` takes the step-1 loss, ``"step2"``
    the step-2 loss, both Adam (``lr``, ``weight_decay``) over the trainable parameters.
    Trainable state (:meth:`trainable_state`): the adaptor, plus the brain encoder, the GNN
    (and the dustbin cost) when the run has a brain term; without one those stay at their
    seeded initialisation, untrained and out of the checkpoint.
    """

    def __init__(self, data: ConceptTaskData, p: dict[str, Any], brain_source: str | None,
                 seed: int, device: str):
        from raybrain.models.brain_loop import BrainLoopModel

        self.train_data = data.training_data(brain_source) if brain_source else data.concepts
        weight = float(p["brain_weight"]) if brain_source is not None else 0.0
        n_nodes = min(int(p["batch_size"]), len(data.train))
        config = model_config(p, weight, n_nodes)
        self.brain_modules = ("brain_encoder", "gnn", "dustbin_cost")

        def make():
            m = BrainLoopModel.for_data(self.train_data, data.train, config,
                                        batch_size=int(p["batch_size"]))
            if weight == 0:
                for name in self.brain_modules:
                    part = getattr(m, name, None)
                    if part is not None:
                        part.requires_grad_(False)
            return m

        self._setup(data, p, brain_source, seed, device, make, brain_weight="brain_weight")
        self._model_rdm: np.ndarray | None = None

    # -- declarations -----------------------------------------------------------------
    def _trained_names(self) -> tuple[str, ...]:
        m = self._module()
        names = ("adaptor",) if self.alpha == 0 else ("adaptor", "brain_encoder", "gnn")
        if self.alpha > 0 and m.dustbin_cost is not None:
            names += ("dustbin_cost",)
        return names

    def make_optimizers(self) -> dict[str, Any]:
        """Two Adam optimisers, one per step of the alternating optimisation."""
        params = [q for q in self.model.parameters() if q.requires_grad]
        lr, wd = float(self.p["lr"]), float(self.p["weight_decay"])
        return {"step1": torch.optim.Adam(params, lr=lr, weight_decay=wd),
                "step2": torch.optim.Adam(params, lr=lr, weight_decay=wd)}

    def trainable_state(self) -> dict[str, Any]:
        """The trained submodules' state, by ``<module>.<tensor>`` key."""
        full = self._module().state_dict()
        names = self._trained_names()
        return {k: v for k, v in full.items() if k.split(".")[0] in names}

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        want = set(self.trainable_state())
        if set(state) != want:
            extra, missing = sorted(set(state) - want), sorted(want - set(state))
            raise ValueError(f"checkpoint does not fit this run's trainable state: "
                             f"{len(extra)} unexpected key(s) {extra[:3]}, {len(missing)} "
                             f"missing {missing[:3]}")
        self._module().load_state_dict(state, strict=False)

    def wrap_model(self, wrap) -> None:
        raise SpecError("brain-loop-gw trains one graph per batch in one process; set "
                        "resources.num_workers: 1 (a GPU is fine)")

    # -- training ---------------------------------------------------------------------
    def _train_epoch(self, shard: tuple[int, int]) -> dict[str, float]:
        m = self._module()
        m.train()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.order_rng))
        batches = m.batches(self.train_data, self.data.train, int(self.p["batch_size"]),
                            np.random.default_rng(seed))
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def add(key, value):
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1

        for batch in batches:
            total = 0.0
            for step, name in ((m.step1_loss, "step1"), (m.step2_loss, "step2")):
                loss, parts = step(batch)
                opt = self.optimizers[name]
                if loss.requires_grad:  # a step whose every term is switched off is skipped
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                add(f"{name}_loss", loss.detach())
                total += float(loss.detach())
                for key, v in parts.items():
                    add(key, v)
            add("loss", total)
        self.epoch += 1
        return {k: sums[k] / counts[k] for k in sums}

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def _embed(self, idx: np.ndarray):
        """Adaptor outputs of the items of concepts ``idx``: (n_items, embed_dim) float64,
        and each item's concept index."""
        d = self.data.concepts
        items = d.items_of(idx)
        m = self._module()
        m.eval()
        x = torch.as_tensor(d.features[items], dtype=torch.float32, device=self.device)
        return m.embed_model(x).cpu().numpy().astype(np.float64), d.item_concept[items]

    def _downstream(self, idx: np.ndarray) -> dict[str, float]:
        """Category one-shot accuracy and silhouette on concepts ``idx``."""
        from raybrain.align.concept_metrics import (
            category_one_shot_accuracy,
            silhouette_by_category,
        )

        emb, item_c = self._embed(idx)
        sup = self.data.concepts.superordinate[item_c]
        if not np.isfinite(emb).all():
            return {"oneshot_accuracy": float("nan"), "silhouette": float("nan")}
        return {"oneshot_accuracy": category_one_shot_accuracy(
                    emb, item_c, sup, n_episodes=self.data.settings.oneshot_episodes, seed=0),
                "silhouette": silhouette_by_category(emb, sup)}

    def evaluate(self) -> dict[str, float]:
        from raybrain.align.concept_metrics import cosine_distances

        d, s = self.data, self.data.settings
        test = self._downstream(d.test)
        val = self._downstream(d.val)
        out = {"test_oneshot_accuracy": test["oneshot_accuracy"],
               "val_oneshot_accuracy": val["oneshot_accuracy"],
               "test_silhouette": test["silhouette"], "val_silhouette": val["silhouette"]}
        names = ("gw_distance", "ot_match_top1", "rsa", "match_top1", "match_top5",
                 "retrieval_top1", "neighbour_overlap")
        m = self._module()
        emb, item_c = self._embed(d.test)
        if not np.isfinite(emb).all():
            self._model_rdm = None
            return {**out, **dict.fromkeys(names, float("nan"))}
        pos = {int(c): k for k, c in enumerate(d.test)}
        where = np.array([pos[int(c)] for c in item_c])
        means = np.stack([emb[where == k].mean(axis=0) for k in range(len(d.test))])
        self._model_rdm = cosine_distances(means).astype(np.float32)
        if self.epoch % s.align_every and self.epoch < self.epochs and self.epoch > 0:
            return out
        # every arm measured alike: the evaluation's GW solver is the data section's
        train_config = m.config
        m.config = replace(train_config, eval_gw_solver=s.eval_gw_solver,
                           gw_epsilon=s.eval_gw_epsilon)
        try:
            ev = m.evaluate(d.concepts, d.test, d.train, n_episodes=s.oneshot_episodes)
        finally:
            m.config = train_config
        out.update({k: ev[k] for k in names})
        if "one_shot" in ev:
            out["test_concept_oneshot"] = ev["one_shot"]
        return out

    def artifacts(self, brain_data: bool = False) -> dict[str, Any]:
        """``model_rdm``: (n_test, n_test) cosine-distance RDM of the test concepts' mean
        adaptor outputs, concepts in :func:`category_order`; with ``brain_data`` (the spec's
        ``tracking.log_brain_data``) also ``brain_rdm``, the real brain RDM of the same
        concepts in the same order, for the report's side-by-side panel."""
        if self._model_rdm is None:
            return {}
        out = {"model_rdm": self._model_rdm}
        if brain_data:
            idx = np.asarray(self.data.test)
            rdm = np.asarray(self.data.concepts.brain_rdm, dtype=np.float32)
            out["brain_rdm"] = rdm[np.ix_(idx, idx)]
        return out


__all__ = ["BackboneSettings", "BrainLoopData", "BrainLoopGW", "BrainLoopRun",
           "ConceptTaskData", "category_order", "load_concepts", "model_config"]
