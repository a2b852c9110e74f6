"""llm-steering: brain-guided language models for deductive reasoning.

After "Beyond representational alignment with brain-guided language models for robust
reasoning" (only the abstract is public; every reading is in ``docs/llm-steering.md``).

Protocol
--------
- **Model**: a causal LM, either a tiny random Llama/GPT-2 over a word-level tokenizer of
  the problems (``model: tiny``) or a local ``transformers`` checkpoint (``model: NAME``,
  the folder name of one of ``data.checkpoints``). Optional LoRA/DoRA adapters (peft);
  ``adapters: none`` fine-tunes every weight.
- **Problems**: deductive problems with answer options, scored by the options' summed
  log-probabilities (argmax). Split per reasoning type into training, validation and test
  problems; the ``transfer_types`` are held out entirely (never trained on, never used to
  fit directions): the transfer test.
- **Joint directions**: a rank-``rank`` subspace shared by the pooled states of layer
  ``layer`` and the brain responses of the *training* problems
  (:func:`raybrain.align.predictivity.joint_directions`: PLS, PLS-SVD, CCA, or
  reduced-rank ridge with ``ridge_lambda``).
- ``mode: finetune``: the directions are fitted once, on the initial model's states, and
  the loss is ``CE_options + alpha * L_dir`` (:mod:`raybrain.align.steering`: the batch's
  coordinates on the directions pulled toward the brain's); ``alpha = 0`` is the
  language-only fine-tuning of the same budget (same initialisation, batches, steps).
- ``mode: inference``: training is language-only in every arm (``lr: 0``: none at all,
  for a pretrained checkpoint); at every evaluation the arm's directions are refitted on
  the current model's training states and layer ``layer`` is steered while scoring,
  ``h -> h + alpha B^T B (h - x_mean)`` (:func:`raybrain.models.lm.add_steering_hook`).

Arms (brain sources)
--------------------
``real``: the brain's responses. ``shuffled``: the training problems' responses permuted
across problems before the directions are fitted (same permutation for every repeat and
seed). ``noise``: Gaussian surrogates of the training responses with the same voxel
means and covariance and no problem in them
(:func:`raybrain.data.reasoning.surrogate_responses`). Ablation ``random-directions``:
random orthonormal frames of the same rank on both sides, with the real brain
(:func:`raybrain.align.predictivity.random_directions`). ``none``: no brain term (fine-
tuning: language-only; inference: no steering); ``l2``: language-only with weight decay.

Metrics
-------
Per epoch: ``test_accuracy`` (held-out problems of the trained types; the primary),
``val_accuracy``, ``test_transfer_accuracy`` (the held-out types; NaN when there are
none), per type ``test_accuracy_<type>`` and ``test_transfer_accuracy_<type>``,
``test_task_loss``; training ``task_loss``, ``loss`` and ``direction_loss`` (``L_dir``
against the *real* brain's directions, for every arm). Alignment on the held-out test
problems, against the real brain for every arm: ``align_directions`` (mean over the
real joint directions of the correlation between the states' and the brain's
coordinates) and ``align_cka`` (linear CKA of the layer's states and the responses).
Neural predictivity (at the last epoch, and every ``data.predictivity.every`` epochs):
``predictivity_layer_<l>`` (fraction of explainable variance over the held-out problems,
test and transfer), ``predictivity_within_layer_<l>`` (its mean within reasoning types)
and ``predictivity_type_<type>_layer_<l>``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raybrain.errors import SpecError
from raybrain.tasks import register
from raybrain.tasks.base import GENERATOR_NOT_BARE_NULL, Param, Task, TorchRun

DEFAULT_LAMBDAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


class PredictivitySettings(BaseModel):
    """How neural predictivity is measured (``data.predictivity``).

    Cross-validated ridge from every layer's pooled states to the responses of the
    held-out problems (test and transfer), lambda chosen from ``lambdas`` inside each
    outer training fold, scored as a fraction of the split-half noise ceiling
    (:func:`raybrain.align.predictivity.predictivity`).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: layers to score (default: every layer, 0 = embeddings to n_layers)
    layers: list[int] | None = None
    folds: int = Field(5, ge=2)
    lambdas: list[float] = list(DEFAULT_LAMBDAS)
    #: voxels whose noise ceiling is below this are left out of the fraction
    min_ceiling: float = Field(0.1, ge=0, lt=1)
    #: also measure every this many epochs (0: at the last epoch only)
    every: int = Field(0, ge=0)

    @field_validator("lambdas")
    @classmethod
    def _positive(cls, v):
        if not v or any(not (math.isfinite(x) and x > 0) for x in v):
            raise ValueError(f"must be a non-empty list of finite numbers > 0, got {v}")
        return v


class LLMData(BaseModel):
    """The ``data:`` section of an ``llm-steering`` spec.

    ``source: synthetic`` generates problems (:func:`raybrain.data.reasoning.
    generate_problems`) and their brain responses (:func:`~raybrain.data.reasoning.
    synthetic_brain`: ``informative`` carries each problem's structure, ``null`` the same
    statistics and no information). ``source: files`` reads the user's problems (JSONL)
    and responses (``.npy`` + ids file, ``.npz`` or HDF5 with problem ids; layouts in
    :func:`raybrain.data.reasoning.load_brain`), one row per problem.
    """

    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "files"] = "synthetic"
    # -- synthetic
    #: problems of the trained types (split into training, validation and test)
    n_problems: int = Field(450, ge=6)
    #: problems of the held-out transfer types
    n_transfer: int = Field(150, ge=0)
    #: trained reasoning types (default: every generated type but the transfer types)
    types: list[str] | None = None
    lexical_roles: float = Field(1.0, ge=0, le=1)
    n_entities: int = Field(32, ge=3)
    shuffle_premises: bool = True
    generator: Literal["informative", "null"] = "informative"
    snr: float = Field(0.5, gt=0)
    n_voxels: int = Field(100, ge=1)
    n_repeats: int = Field(2, ge=1)
    # -- files
    problems: str | None = None
    responses: str | None = None
    #: .npy responses: their problem ids, one per line (default: <responses>.ids.txt)
    ids_file: str | None = None
    responses_key: str = "responses"
    ids_key: str = "problem_ids"
    # -- both
    #: reasoning types held out for the transfer test (default: ["transitive"] for
    #: synthetic data, none for files)
    transfer_types: list[str] | None = None
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.35, gt=0, lt=1)
    #: local transformers checkpoints (save_pretrained folders); params.model names one
    #: by its folder name
    checkpoints: list[str] = []
    #: checkpoints: passed to from_pretrained (e.g. "auto" to spread a model over GPUs)
    device_map: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    predictivity: PredictivitySettings = PredictivitySettings()

    _bare_null = GENERATOR_NOT_BARE_NULL

    @model_validator(mode="after")
    def _check(self):
        if self.source == "files" and not (self.problems and self.responses):
            raise ValueError("data.source 'files' needs data.problems (JSONL) and "
                             "data.responses (.npy, .npz or .h5)")
        synthetic_only = ("n_problems", "n_transfer", "types", "lexical_roles", "n_entities",
                          "shuffle_premises", "generator", "snr", "n_voxels", "n_repeats")
        files_only = ("problems", "responses", "ids_file", "responses_key", "ids_key")
        wrong = files_only if self.source == "synthetic" else synthetic_only
        # given and not the default (a prepared section lists every key with its value)
        given = [k for k in wrong if k in self.model_fields_set
                 and getattr(self, k) != type(self).model_fields[k].default]
        if given:
            other = "files" if self.source == "synthetic" else "synthetic"
            raise ValueError(f"data.{given[0]} is read only with data.source '{other}', got "
                             f"source '{self.source}'")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction must be < 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        names = [Path(c).name for c in self.checkpoints]
        dup = next((n for k, n in enumerate(names) if n in names[:k]), None)
        if dup is not None:
            raise ValueError(f"data.checkpoints: two folders are named {dup!r}; params.model "
                             f"names a checkpoint by its folder name")
        if "tiny" in names:
            raise ValueError("data.checkpoints: a folder named 'tiny' clashes with "
                             "params.model 'tiny' (the random model); rename it")
        return self

    def held_out_types(self) -> list[str]:
        if self.transfer_types is not None:
            return list(self.transfer_types)
        return ["transitive"] if self.source == "synthetic" else []

    def checkpoint_dirs(self) -> dict[str, str]:
        """``{folder name: path}`` of the checkpoints."""
        return {Path(c).name: c for c in self.checkpoints}


_PARAMS = {
    "model": Param("tiny", str, help="'tiny' (a random LM built from the tiny_* knobs) or the "
                   "folder name of one of data.checkpoints"),
    "tiny_layers": Param(4, int, low=1, help="tiny model: decoder blocks"),
    "tiny_hidden": Param(64, int, low=1, help="tiny model: width (divisible by tiny_heads)"),
    "tiny_heads": Param(4, int, low=1, help="tiny model: attention heads"),
    "tiny_arch": Param("llama", str, choices=("llama", "gpt2"), help="tiny model: architecture"),
    "mode": Param("finetune", str, choices=("finetune", "inference"),
                  help="finetune: brain term in the loss; inference: steering hook at "
                       "evaluation (training is language-only)"),
    "pooling": Param("mean", str, choices=("mean", "last"),
                     help="a problem's state: mean over its prompt tokens, or the last one"),
    "layer": Param(2, int, brain=True, low=0,
                   help="layer steered and aligned (0: embeddings, l: output of block l)"),
    "directions": Param("pls", str, brain=True, choices=("pls", "plssvd", "cca", "ridge"),
                        help="how the joint directions are fitted"),
    "rank": Param(6, int, brain=True, low=1, help="number of joint directions"),
    "pca": Param(0, int, brain=True, low=0,
                 help="pls/plssvd/cca: reduce each side to this many principal components "
                      "first (0: no reduction; cca needs it when a side has as many "
                      "dimensions as training problems)"),
    "ridge_lambda": Param(0.0, float, brain=True, low=0.0,
                          help="directions 'ridge': the ridge penalty (0: chosen by "
                               "leave-one-out on the training problems)"),
    "random_directions": Param(False, bool, brain=True,
                               help="replace the fitted directions by random orthonormal "
                                    "frames of the same rank (the random-directions arm)"),
    "alpha": Param(1.0, float, brain=True, low=0.0,
                   help="brain weight: L = CE + alpha L_dir (finetune), steering strength "
                        "(inference)"),
    "adapters": Param("none", str, choices=("none", "lora", "dora"),
                      help="none: fine-tune every weight; lora/dora: peft adapters only"),
    "adapter_rank": Param(8, int, low=1, help="LoRA/DoRA rank (with adapters)"),
    "lr": Param(3e-3, float, low=0.0,
                help="Adam learning rate (0: no optimisation step at all)"),
    "batch_size": Param(32, int, low=2, help="problems per step (the brain term is a batch "
                        "correlation), and per evaluation chunk"),
    "epochs": Param(30, int, low=1, help="passes over the training problems"),
    "weight_decay": Param(0.0, float, low=0.0, help="L2 penalty (Adam weight_decay)"),
}

_METRIC_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


def metric_suffix(name: str) -> str:
    """A reasoning type as a metric name suffix (characters MLflow refuses become ``_``)."""
    return _METRIC_NAME.sub("_", str(name))


# ----------------------------------------------------------------------------------- data


@dataclass
class Splits:
    """Positions of each split in the problem set, shape (n_split,) int64 each."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    transfer: np.ndarray

    @property
    def heldout(self) -> np.ndarray:
        """Test and transfer problems (never trained on): the predictivity set."""
        return np.concatenate([self.test, self.transfer])


def _concat(a, b):
    from raybrain.data.reasoning import ProblemSet

    feats = None
    if a.features is not None and b.features is not None:
        feats = np.concatenate([a.features, b.features])
    return ProblemSet(ids=a.ids + b.ids, texts=a.texts + b.texts, options=a.options + b.options,
                      correct=np.concatenate([a.correct, b.correct]), types=a.types + b.types,
                      features=feats)


def _sub_seed(data_seed: int, k: int) -> int:
    return int(np.random.default_rng([int(data_seed), k]).integers(2**31 - 1))


def load_problems_and_brain(data: LLMData, data_seed: int):
    """``(problems, brain, splits)`` of a data section, deterministic in ``data_seed``."""
    from raybrain.data.reasoning import (
        TYPES,
        generate_problems,
        load_brain,
        load_problems,
        split_problems,
        synthetic_brain,
    )

    held = data.held_out_types()
    if data.source == "synthetic":
        for t in held + list(data.types or []):
            if t not in TYPES:
                raise SpecError(f"data: unknown reasoning type {t!r} for synthetic problems; "
                                f"expected some of {list(TYPES)}")
        types = data.types or [t for t in TYPES if t not in held]
        both = sorted(set(types) & set(held))
        if both:
            raise SpecError(f"data: reasoning type {both[0]!r} is both trained (data.types) and "
                            f"held out (data.transfer_types)")
        if not types:
            raise SpecError("data: no reasoning type is left to train on; hold out fewer "
                            "transfer_types")
        if held and data.n_transfer < 1:
            raise SpecError(f"data.n_transfer must be >= 1 with transfer types {held}, got 0")
        kw = dict(lexical_roles=data.lexical_roles, n_entities=data.n_entities,
                  shuffle_premises=data.shuffle_premises)
        problems = generate_problems(data.n_problems, _sub_seed(data_seed, 1), types=types,
                                     id_prefix="p", **kw)
        if held:
            problems = _concat(problems, generate_problems(
                data.n_transfer, _sub_seed(data_seed, 2), types=held, id_prefix="t", **kw))
        brain = synthetic_brain(problems, np.random.default_rng([data_seed, 3]),
                                n_voxels=data.n_voxels, snr=data.snr, n_repeats=data.n_repeats,
                                informative=data.generator == "informative")
    else:
        problems = load_problems(data.problems)
        brain = load_brain(data.responses, problems, ids_path=data.ids_file,
                           key=data.responses_key, ids_key=data.ids_key)
    # split by position: tag every problem with its index through its id
    pos = {pid: k for k, pid in enumerate(problems.ids)}
    train_val, test, transfer = split_problems(problems, data.test_fraction,
                                               _sub_seed(data_seed, 4), held_out_types=held)
    frac = data.val_fraction / (1.0 - data.test_fraction)
    train, val, _ = split_problems(train_val, frac, _sub_seed(data_seed, 5))
    idx = {name: np.array([pos[i] for i in s.ids], dtype=np.int64)
           for name, s in (("train", train), ("val", val), ("test", test),
                           ("transfer", transfer))}
    return problems, brain, Splits(**idx)


@dataclass
class LLMTaskData:
    """What every run of a sweep shares.

    ``problems`` and ``brain`` (repeats of shape (n_repeats, n_problems, n_voxels)) hold
    every problem in one order; ``splits`` index them. Control views of the training
    responses are made on first use from streams of the data seed, so every run of a
    sweep sees the same permutation and the same surrogates.
    """

    problems: Any
    brain: Any
    splits: Splits
    settings: LLMData
    data_seed: int
    tokenizer: Any = None
    _views: dict[str, np.ndarray] = field(default_factory=dict)
    _encoded: dict[str, dict[str, Any]] = field(default_factory=dict)

    def split(self, name: str):
        return self.problems.subset(getattr(self.splits, name))

    def responses(self, name: str) -> np.ndarray:
        """Real repeat-averaged responses of a split, (n_split, n_voxels) float64."""
        idx = getattr(self.splits, name)
        return self.brain.repeats[:, idx].mean(0, dtype=np.float64)

    def train_responses(self, source: str) -> np.ndarray:
        """Repeat-averaged training responses for a brain source, (n_train, n_voxels)."""
        from raybrain.data.reasoning import shuffle_responses, surrogate_responses

        if source not in self._views:
            train = self.brain.subset(self.splits.train)
            if source == "real":
                view = train
            elif source == "shuffled":
                view = shuffle_responses(train, np.random.default_rng([self.data_seed, 11]))
            elif source == "noise":
                view = surrogate_responses(train, np.random.default_rng([self.data_seed, 12]))
            else:
                raise ValueError(f"brain source must be one of real/shuffled/noise, got "
                                 f"{source!r}")
            self._views[source] = view.repeats.mean(0, dtype=np.float64)
        return self._views[source]

    def encoded(self, key: str, tokenizer) -> dict[str, Any]:
        """Token ids of every split for model ``key`` (cached per model)."""
        from raybrain.models.lm import encode_problems

        if key not in self._encoded:
            out = {name: encode_problems(tokenizer, self.split(name))
                   for name in ("train", "val", "test") if len(getattr(self.splits, name))}
            for name in ("transfer", "heldout"):
                idx = getattr(self.splits, name)
                if len(idx):
                    out[name] = encode_problems(tokenizer, self.problems.subset(idx))
            self._encoded[key] = out
        return self._encoded[key]


# ----------------------------------------------------------------------------------- task


@register("llm-steering")
class LLMSteering(Task):
    """Causal LM on deductive problems, steered along joint model-brain directions."""

    params = _PARAMS
    data_model = LLMData
    primary_metric = "test_accuracy"
    primary_mode = "max"
    metrics = ("test_accuracy", "val_accuracy", "test_transfer_accuracy", "test_task_loss",
               "task_loss", "direction_loss", "loss", "align_directions", "align_cka")
    align_metrics = {"align_directions": "max", "align_cka": "max"}
    brain_weight = "alpha"
    l2_param = "weight_decay"
    ablations = {"random-directions": {"random_directions": True}}
    #: fine-tuning mode: `none` is language-only fine-tuning of the same budget, which the
    #: "orthogonal to language-only supervision" claim must beat, so the verdict judges it
    baseline_controls = ("none",)
    data_paths = ("problems", "responses", "ids_file", "checkpoints")
    smoke = {"data": {"n_problems": 36, "n_transfer": 8, "n_voxels": 12, "snr": 2.0,
                      "val_fraction": 0.2, "test_fraction": 0.3,
                      "predictivity": {"folds": 2, "lambdas": [1.0, 100.0]}},
             "params": {"tiny_layers": 2, "tiny_hidden": 16, "tiny_heads": 2, "layer": 1,
                        "rank": 2, "epochs": 2, "batch_size": 8, "lr": 0.01, "alpha": 1.0}}

    # -- checks ---------------------------------------------------------------------------
    def check_data(self, data: LLMData, params: dict[str, Any]) -> None:
        """Problems, responses and their ids, checkpoints, layers, ranks: one-line errors."""
        problems, brain, splits = load_problems_and_brain(data, 0)
        n_train, n_vox = len(splits.train), brain.n_voxels
        for name in ("train", "val", "test"):
            if len(getattr(splits, name)) < 2:
                raise SpecError(f"data: the {name} split has {len(getattr(splits, name))} "
                                f"problem(s); expected at least 2 (more problems, or other "
                                f"val_fraction/test_fraction)")
        vals = lambda k: params.get(k, [self.params[k].default])  # noqa: E731
        shapes = self._model_shapes(data, vals)
        pred = data.predictivity
        for model, (n_blocks, _hidden) in shapes.items():
            for layer in vals("layer"):
                if not 0 <= int(layer) <= n_blocks:
                    raise SpecError(f"params.layer {layer} is outside model {model!r}, which has "
                                    f"layers 0..{n_blocks} (0: embeddings, l: output of block l)")
            for layer in (pred.layers or []) if pred.enabled else []:
                if not 0 <= int(layer) <= n_blocks:
                    raise SpecError(f"data.predictivity.layers has {layer}, outside model "
                                    f"{model!r}, which has layers 0..{n_blocks}")
        hidden_min = min(h for _, h in shapes.values())
        ranks, pcas = [int(r) for r in vals("rank")], [int(v) for v in vals("pca")]
        r = max(ranks)
        if r > n_train - 1:
            raise SpecError(f"params.rank must be <= the number of training problems - 1 "
                            f"({n_train - 1}), got {r}")
        if r > n_vox:
            raise SpecError(f"params.rank must be <= the number of voxels ({n_vox}), got {r}")
        if r > hidden_min:
            raise SpecError(f"params.rank must be <= the model's hidden size ({hidden_min}), "
                            f"got {r}")
        bad_pca = [v for v in pcas if 0 < v < r]
        if bad_pca:
            raise SpecError(f"params.pca must be 0 or >= rank ({r}), got {bad_pca[0]}")
        if "cca" in vals("directions"):
            dims = [min(v, n_train - 1) if v else max(hidden_min, n_vox) for v in pcas]
            if max(dims) >= n_train:
                raise SpecError(f"params.directions 'cca' needs fewer dimensions than training "
                                f"problems ({n_train}) on each side; set params.pca (e.g. "
                                f"{max(r, n_train // 4)})")
        if pred.enabled:
            if brain.repeats.shape[0] < 2:
                raise SpecError("data.predictivity needs responses with at least 2 repeats "
                                "(for the split-half noise ceiling), got 1; set "
                                "data.predictivity.enabled: false")
            n_held = len(splits.heldout)
            if n_held < max(3, pred.folds):
                raise SpecError(f"data.predictivity.folds ({pred.folds}) needs at least as many "
                                f"held-out problems (and 3), got {n_held}")

    def _model_shapes(self, data: LLMData, vals) -> dict[str, tuple[int, int]]:
        """``{model: (blocks, hidden)}`` of every model the params can name."""
        out = {}
        dirs = data.checkpoint_dirs()
        for model in vals("model"):
            if model == "tiny":
                for heads in vals("tiny_heads"):
                    for hidden in vals("tiny_hidden"):
                        if int(hidden) % int(heads):
                            raise SpecError(f"params.tiny_hidden ({hidden}) must be divisible "
                                            f"by params.tiny_heads ({heads})")
                out["tiny"] = (min(int(v) for v in vals("tiny_layers")),
                               min(int(v) for v in vals("tiny_hidden")))
            elif model in dirs:
                out[model] = checkpoint_shape(dirs[model])
            else:
                raise SpecError(f"params.model {model!r} is neither 'tiny' nor the folder name "
                                f"of one of data.checkpoints {sorted(dirs)}")
        for name, path in dirs.items():
            if name not in out:
                checkpoint_shape(path)  # every listed checkpoint must be usable
        return out

    # -- data -----------------------------------------------------------------------------
    def prepare(self, data: LLMData):
        """Absolute paths for the trials; what the data hold, in a few lines."""
        problems, brain, splits = load_problems_and_brain(data, 0)
        d = data.model_dump()
        for key in ("problems", "responses", "ids_file"):
            if d[key]:
                d[key] = str(Path(d[key]).expanduser().resolve())
        d["checkpoints"] = [str(Path(c).expanduser().resolve()) for c in data.checkpoints]
        kind = (f"synthetic {data.generator} brain, snr {data.snr:g}" if data.source == "synthetic"
                else "from the responses file")
        types = ", ".join(f"{t} {int(problems.type_mask(t).sum())}" for t in problems.type_names)
        lines = [f"brain data: {len(problems)} problems x {brain.n_voxels} voxels x "
                 f"{brain.repeats.shape[0]} repeat(s) ({kind}); types: {types}",
                 f"  splits: {len(splits.train)} training, {len(splits.val)} validation, "
                 f"{len(splits.test)} test, {len(splits.transfer)} transfer "
                 f"({', '.join(data.held_out_types()) or 'no transfer types'})"]
        files = [d["responses"]] if d["responses"] else []
        if d["ids_file"]:
            files.append(d["ids_file"])
        return d, lines, files

    def load_data(self, data: LLMData, data_seed: int) -> LLMTaskData:
        from raybrain.models.lm import word_tokenizer

        problems, brain, splits = load_problems_and_brain(data, data_seed)
        words = [o for opts in problems.options for o in opts]
        tokenizer = word_tokenizer(problems.texts, extra_words=words)
        return LLMTaskData(problems=problems, brain=brain, splits=splits, settings=data,
                           data_seed=data_seed, tokenizer=tokenizer)

    def build(self, data: LLMTaskData, params: dict[str, Any], brain_source: str | None,
              seed: int, device: str = "cpu") -> LLMRun:
        p = {**self.defaults(), **params}
        self.check_run_params(p, brain_source)
        return LLMRun(data, p, brain_source, seed, device)


def checkpoint_shape(directory: str) -> tuple[int, int]:
    """``(decoder blocks, hidden size)`` of a local checkpoint, from its config alone."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise SpecError(f"LM checkpoint directory '{directory}' not found; expected a folder "
                        f"with config.json, weights and tokenizer files")
    if not (d / "config.json").is_file():
        raise SpecError(f"LM checkpoint directory '{directory}' has no config.json; expected a "
                        f"transformers checkpoint (save_pretrained layout)")
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(d, local_files_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"LM checkpoint '{directory}': config.json could not be read "
                        f"({type(exc).__name__}: {msg})") from None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n, hidden = getattr(text, "num_hidden_layers", None), getattr(text, "hidden_size", None)
    if n is None or hidden is None:
        raise SpecError(f"LM checkpoint '{directory}': config.json gives no num_hidden_layers/"
                        f"hidden_size; expected a causal LM config")
    return int(n), int(hidden)


# ------------------------------------------------------------------------------------ run


class _ParallelLM:
    """A data-parallel wrapper seen as the LM it wraps.

    Calls go through the wrapper (so gradients are synchronised); attributes (config,
    embeddings, blocks, parameters) come from the LM, which is what
    :mod:`raybrain.models.lm` looks up. ``module`` is the LM.
    """

    def __init__(self, wrapper):
        self._wrapper = wrapper
        self.module = wrapper.module

    def __call__(self, *args, **kwargs):
        return self._wrapper(*args, **kwargs)

    def train(self, mode: bool = True):
        self._wrapper.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def __getattr__(self, name):
        return getattr(self.module, name)


class LLMRun(TorchRun):
    """One LM trained and evaluated on the problems (see :class:`LLMSteering`).

    Attributes
    ----------
    real_dirs : JointDirections
        The real brain's joint directions on the initial model's training states (the
        reference of ``direction_loss`` and, in finetune mode, of ``align_directions``).
    train_dirs : JointDirections or None
        The directions this run's brain term uses (finetune mode, brain arms).
    """

    def __init__(self, data: LLMTaskData, p: dict[str, Any], brain_source: str | None,
                 seed: int, device: str):
        import torch

        from raybrain.models import lm

        self.key = str(p["model"])
        settings = data.settings
        box: dict[str, Any] = {}

        def make_model():
            if self.key == "tiny":
                enc = data.encoded("tiny", data.tokenizer)
                longest = max(int(e.attention_mask.sum(-1).max()) for e in enc.values())
                model = lm.tiny_lm(data.tokenizer, n_layers=int(p["tiny_layers"]),
                                   hidden=int(p["tiny_hidden"]), heads=int(p["tiny_heads"]),
                                   max_length=max(64, longest), seed=seed,
                                   arch=str(p["tiny_arch"]))
                box["tokenizer"] = data.tokenizer
            else:
                dirs = settings.checkpoint_dirs()
                if self.key not in dirs:
                    raise SpecError(f"params.model {self.key!r} is neither 'tiny' nor the folder "
                                    f"name of one of data.checkpoints {sorted(dirs)}")
                model, box["tokenizer"] = lm.load_lm(dirs[self.key],
                                                     device_map=settings.device_map,
                                                     dtype=settings.dtype)
            if p["adapters"] != "none":
                model = lm.add_adapters(model, p["adapters"], int(p["adapter_rank"]))
            if float(p["lr"]) == 0:  # nothing trains: no gradients, nothing to checkpoint
                model.requires_grad_(False)
            return model

        self._setup(data, p, brain_source, seed, device, make_model,
                    place=settings.device_map is None)
        self.enc = data.encoded(self.key, box["tokenizer"])
        self.layer, self.pool = int(p["layer"]), str(p["pooling"])
        self.mode = str(p["mode"])
        self.batch = int(p["batch_size"])
        states0 = self._states("train")
        self.real_dirs = self._fit(states0, "real", random=False)
        self.train_dirs = None
        if self.mode == "finetune" and self.alpha > 0:
            same = brain_source == "real" and not p["random_directions"]
            self.train_dirs = (self.real_dirs if same
                               else self._fit(states0, brain_source, bool(p["random_directions"])))
        dev = lm._model_device(self._module())
        self._t = {}
        for name, dirs, source in (("real", self.real_dirs, "real"),
                                   ("train", self.train_dirs, brain_source)):
            if dirs is not None:
                y = dirs.brain_coordinates(data.train_responses(source))
                self._t[name] = (torch.tensor(dirs.basis, dtype=torch.float32, device=dev),
                                 torch.tensor(y, dtype=torch.float32, device=dev))

    # -- directions -----------------------------------------------------------------------
    def _fit(self, states: np.ndarray, source: str, random: bool):
        """Joint directions of ``states`` (n_train, hidden) and the training responses of
        ``source`` (random frames when ``random``)."""
        from raybrain.align.predictivity import joint_directions, random_directions

        y = self.data.train_responses(source)
        if random:
            rng = np.random.default_rng([self.data.data_seed, 21, self.seed])
            return random_directions(states, y, int(self.p["rank"]), rng)
        pca = int(self.p["pca"]) or None
        return joint_directions(states, y, int(self.p["rank"]), method=str(self.p["directions"]),
                                pca=pca, ridge_lambda=float(self.p["ridge_lambda"]))

    def _states(self, split: str, layers=None) -> np.ndarray:
        """Pooled states of a split, (n, hidden) float64 at ``self.layer`` (or
        (len(layers), n, hidden) for ``layers``); no grad."""
        from raybrain.models.lm import hidden_states

        self.model.eval()
        got = hidden_states(self.model, self.enc[split], [self.layer] if layers is None
                            else layers, self.pool, self.batch)
        return got[0].astype(np.float64) if layers is None else got

    # -- training -------------------------------------------------------------------------
    def _train_epoch(self, shard: tuple[int, int]) -> dict[str, float]:
        import torch

        from raybrain.align.steering import direction_alignment_loss
        from raybrain.models.lm import forward_problems, option_cross_entropy

        rank, world = shard
        enc = self.enc["train"]
        order = torch.randperm(len(enc), generator=self.order_rng)
        if world > 1:
            pad = (-len(order)) % world
            order = torch.cat([order, order[:pad]])[rank::world]
        optimise = float(self.p["lr"]) > 0
        self.model.train()
        sums = dict.fromkeys(("task_loss", "direction_loss", "loss"), 0.0)
        n = 0
        for s in range(0, len(order), self.batch):
            idx = order[s:s + self.batch]
            if len(idx) < 2:  # a batch correlation needs two problems
                continue
            with torch.set_grad_enabled(optimise):
                sub = enc.select(idx.numpy())
                lp, states = forward_problems(self.model, sub, [self.layer], self.pool)
                task = option_cross_entropy(lp, sub.correct)
                h = states[self.layer]
                basis, y = self._t["real"]
                real = direction_alignment_loss(h, basis, y[idx.to(y.device)])
                loss = task
                if self.train_dirs is not None:
                    if self.train_dirs is self.real_dirs:
                        term = real
                    else:
                        basis, y = self._t["train"]
                        term = direction_alignment_loss(h, basis, y[idx.to(y.device)])
                    loss = task + self.alpha * term
            if optimise:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            sums["task_loss"] += float(task.detach())
            sums["direction_loss"] += float(real.detach())
            sums["loss"] += float(loss.detach())
            n += 1
        self.model.eval()
        self.epoch += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    # -- evaluation -----------------------------------------------------------------------
    def _score(self, split: str, layer: int | None = None):
        """Option log-probabilities (n, n_options) and, with ``layer``, pooled states."""
        import torch

        from raybrain.models.lm import forward_problems

        enc = self.enc[split]
        lps, hs = [], []
        with torch.no_grad():
            for s in range(0, len(enc), self.batch):
                sub = enc.select(np.arange(s, min(len(enc), s + self.batch)))
                lp, states = forward_problems(self.model, sub, [] if layer is None else [layer],
                                              self.pool)
                lps.append(lp.double().cpu().numpy())
                if layer is not None:
                    hs.append(states[layer].double().cpu().numpy())
        return np.concatenate(lps), (np.concatenate(hs) if hs else None)

    def _predictivity_due(self) -> bool:
        pred = self.data.settings.predictivity
        if not pred.enabled:
            return False
        return self.epoch >= self.epochs or bool(pred.every and self.epoch % pred.every == 0)

    def evaluate(self) -> dict[str, float]:
        from raybrain.models.lm import add_steering_hook

        hook = None
        ref = self.real_dirs
        if self.mode == "inference":
            states = self._states("train")
            ref = self._fit(states, "real", random=False)
            if self.alpha > 0:
                same = self.source == "real" and not self.p["random_directions"]
                dirs = ref if same else self._fit(states, self.source,
                                                  bool(self.p["random_directions"]))
                hook = add_steering_hook(self._module(), self.layer, dirs.basis, self.alpha,
                                         center=dirs.x_mean)
        try:
            out = self._accuracies()
            out.update(self._alignment(ref))
            if self._predictivity_due():
                out.update(self._predictivity())
        finally:
            if hook is not None:
                hook.remove()
        return out

    def _accuracies(self) -> dict[str, float]:
        from raybrain.models.lm import accuracy

        d = self.data
        out: dict[str, float] = {}
        test = d.split("test")
        lp, self._test_states = self._score("test", self.layer)
        acc = accuracy(lp, test.correct, test.types)
        out["test_accuracy"] = acc["accuracy"]
        for t in test.type_names:
            out[f"test_accuracy_{metric_suffix(t)}"] = acc[f"accuracy/{t}"]
        # cross-entropy of the correct option, as in training
        z = lp - lp.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        out["test_task_loss"] = float(-logp[np.arange(len(lp)), test.correct].mean())
        val = d.split("val")
        out["val_accuracy"] = accuracy(self._score("val")[0], val.correct)["accuracy"]
        out["test_transfer_accuracy"] = float("nan")
        if "transfer" in self.enc:
            tr = d.split("transfer")
            acc = accuracy(self._score("transfer")[0], tr.correct, tr.types)
            out["test_transfer_accuracy"] = acc["accuracy"]
            for t in tr.type_names:
                out[f"test_transfer_accuracy_{metric_suffix(t)}"] = acc[f"accuracy/{t}"]
        return out

    def _alignment(self, ref) -> dict[str, float]:
        """Held-out test problems against the real brain (every arm): the states' and the
        brain's coordinates on the real joint directions ``ref``, and linear CKA."""
        from raybrain.align import linear_cka
        from raybrain.align.predictivity import pearson_columns

        h = self._test_states
        if not np.isfinite(h).all():
            return {"align_directions": float("nan"), "align_cka": float("nan")}
        y = self.data.responses("test")
        r = pearson_columns(ref.model_coordinates(h), ref.brain_coordinates(y))
        return {"align_directions": float(np.mean(r)), "align_cka": float(linear_cka(h, y))}

    def _predictivity(self) -> dict[str, float]:
        """Predictivity of every layer on the held-out problems (test and transfer)."""
        import warnings

        from raybrain.align.predictivity import predictivity
        from raybrain.models.lm import n_layers

        settings = self.data.settings.predictivity
        layers = settings.layers or list(range(n_layers(self._module()) + 1))
        states = self._states("heldout", layers)
        held = self.data.splits.heldout
        if not np.isfinite(states).all():
            return {f"predictivity_layer_{lay}": float("nan") for lay in layers}
        res = predictivity(states, self.data.brain.repeats[:, held],
                           [self.data.problems.types[i] for i in held], layers=layers,
                           alphas=settings.lambdas, n_splits=min(settings.folds, len(held)),
                           min_ceiling=settings.min_ceiling, seed=self.data.data_seed)
        out = {}
        for k, lay in enumerate(res.layers):
            out[f"predictivity_layer_{lay}"] = float(res.fev[k])
            within = [v[k] for v in res.fev_by_type.values() if np.isfinite(v[k])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[f"predictivity_within_layer_{lay}"] = (float(np.mean(within)) if within
                                                            else float("nan"))
            for t, v in res.fev_by_type.items():
                out[f"predictivity_type_{metric_suffix(t)}_layer_{lay}"] = float(v[k])
        return out

    # -- what a checkpoint holds ----------------------------------------------------------
    def make_optimizers(self) -> dict[str, Any]:
        """Adam over the trainable parameters: every weight, or the adapters only."""
        import torch

        params = [q for q in self._module().parameters() if q.requires_grad]
        if not params:
            # inference-only (lr 0, no adapters): nothing trains; an optimiser over a
            # placeholder keeps checkpoints uniform
            params = [torch.nn.Parameter(torch.zeros(1))]
        return {"main": torch.optim.Adam(params, lr=float(self.p["lr"]),
                                         weight_decay=float(self.p["weight_decay"]))}

    def _trainable_names(self) -> list[str]:
        return [n for n, q in self._module().named_parameters() if q.requires_grad]

    def _whole_model(self) -> bool:
        return self.p["adapters"] == "none" and float(self.p["lr"]) > 0

    def trainable_state(self) -> dict[str, Any]:
        """The whole model without adapters; with adapters only their weights (and
        DoRA magnitudes): the frozen base comes back from the seed or the checkpoint.
        With ``lr`` 0 nothing trains and the state is empty."""
        state = self._module().state_dict()
        if self._whole_model():
            return state
        return {k: state[k] for k in self._trainable_names()}

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        if self._whole_model():
            self._module().load_state_dict(state)
            return
        want = set(self._trainable_names())
        if set(state) != want:
            extra = sorted(set(state) - want) or sorted(want - set(state))
            raise ValueError(f"checkpoint holds adapter weights {extra[:1]} that do not match "
                             f"the run's adapters ({len(want)} tensors)")
        self._module().load_state_dict(state, strict=False)

    def wrap_model(self, wrap) -> None:
        """Data-parallel training: the wrapper handles calls, the LM everything else.

        A model spread over devices by ``data.device_map`` is left where it is (a Train
        worker must not move it), and refuses more than one worker.
        """
        if self.data.settings.device_map is not None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise SpecError(f"data.device_map {self.data.settings.device_map!r} places one "
                                f"model over the devices of one worker; set "
                                f"resources.num_workers: 1 (got {dist.get_world_size()})")
            return
        wrapped = wrap(self._module())
        self.model = _ParallelLM(wrapped) if hasattr(wrapped, "module") else wrapped


__all__ = ["LLMData", "LLMRun", "LLMSteering", "LLMTaskData", "PredictivitySettings",
           "checkpoint_shape", "load_problems_and_brain", "metric_suffix"]
