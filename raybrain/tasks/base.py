"""The interface every protocol implements: the task contract.

A :class:`Task` is one paper protocol, registered by name. It declares everything the
layers above it (sweep, analysis, CLI) need to know, so adding a protocol is a task file
plus its align/models/data pieces and no edit anywhere else:

- its knobs (:class:`Param`, each marked as depending on brain data or not), the schema of
  its ``data:`` section and which data keys hold file paths (:attr:`Task.data_paths`:
  pseudonymised in tracking, shipped with Ray Jobs);
- its metrics: the primary one and its direction, every per-epoch metric, the alignment
  metrics with their direction (:attr:`Task.align_metrics`: a CKA is better when higher,
  a Gromov-Wasserstein distance when lower), and a divergence rule;
- how the arms reach it: the param that plays alpha's role (:attr:`Task.brain_weight`:
  baseline arms set it to 0, the brain-dependent arms need it above 0), the param the
  ``l2`` arm grids over (:attr:`Task.l2_param`), and task ablation arms
  (:attr:`Task.ablations`: the brain arm with some params overridden, e.g. a loss term
  switched off);
- its optimiser(s) and trainable state, through its :class:`TaskRun` (what a checkpoint
  holds: the whole model, or only the adapters of a frozen backbone);
- a smoke configuration (:attr:`Task.smoke`) that trains in seconds, on which the contract
  tests run every registered task.

It loads the data of a sweep once (:meth:`Task.load_data`, deterministic in the data
seed) and builds one :class:`TaskRun` per (params, brain source, seed). A run trains one
epoch at a time and hands back metrics as ``dict[str, float]``; it never reports them
itself. It exposes its whole state (trainable state, optimisers, epoch, RNG) so the sweep
layer can checkpoint after any epoch and resume where it stopped.

Brain sources are what the arms feed a run: ``"real"`` brain targets, ``"shuffled"``
(correspondence permuted), ``"noise"`` (surrogates with the same statistics and no
correspondence), or ``None`` (no brain term: the ``l2`` and ``none`` arms). How a source is
made is the task's business, since "a step" means something different for spike
embeddings, EEG batches, RDMs or concept graphs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, field_validator

BRAIN_SOURCES = ("real", "shuffled", "noise")


def validation_metric(primary: str) -> str:
    """The validation twin of a test metric: ``test_accuracy`` -> ``val_accuracy``.

    Every task's :meth:`TaskRun.evaluate` returns both; the best L2 arm is chosen on the
    validation one (never on the test data).
    """
    return "val_" + primary.removeprefix("test_")


@dataclass(frozen=True)
class Param:
    """One knob of a task.

    Attributes
    ----------
    default : Any
        Value used when the spec does not set the knob.
    kind : type
        ``float``, ``int``, ``str`` or ``bool``.
    brain : bool
        True when the knob only matters with a brain term (alpha, temperature, ...).
        Baseline arms (``l2``, ``none``) drop these knobs, so they are shared by every
        config that differs only in them.
    low, high : float or None
        Inclusive bounds checked at validation.
    choices : tuple or None
        Allowed values for ``str`` knobs.
    personal : bool
        True when the value identifies a person (a participant id): tracking gets only a
        keyed pseudonym of it.
    help : str
        One line describing the knob.
    """

    default: Any
    kind: type = float
    brain: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    personal: bool = False
    help: str = ""


class TaskRun(ABC):
    """One training run: one model, its optimiser(s) and its data view.

    Attributes
    ----------
    epochs : int
        Number of epochs the run trains for.
    epoch : int
        Epochs completed so far.
    model : torch.nn.Module
        The trained model (the distributed path wraps it for data parallelism).
    """

    epochs: int
    epoch: int = 0
    #: set by a run that stops before ``epochs`` (e.g. early stopping on its validation
    #: metric); the sweep then closes it as finished after the current epoch
    stopped: bool = False

    @abstractmethod
    def train_epoch(self, shard: tuple[int, int] = (0, 1)) -> dict[str, float]:
        """Train one epoch on shard ``shard = (rank, world_size)`` of the training data.

        Returns training metrics (e.g. ``task_loss``, ``transfer_loss``, ``loss``).
        """

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Evaluate on held-out data; returns e.g. ``test_accuracy``, ``val_accuracy``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimisers, epoch, RNG states."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def wrap_model(self, wrap) -> None:
        """Replace the trained module by ``wrap(module)`` (data-parallel training)."""
        self.model = wrap(self.model)

    def artifacts(self, brain_data: bool = False) -> dict[str, Any]:
        """Arrays worth keeping at this epoch (e.g. the model's RDM), by name.

        Called after :meth:`evaluate` every :attr:`Task.artifact_every` epochs and at the
        last one; the sweep stores them as ``arrays/epoch_<e>/<name>.npy`` artifacts of the
        run's MLflow child run. ``brain_data`` is the spec's ``tracking.log_brain_data``:
        arrays derived from brain data (a brain RDM beside the model's) only when it is
        true; never raw recordings. Default: none.
        """
        return {}


class RunGroup(ABC):
    """Runs that share their params, trained together (vectorised seed replicates).

    ``members`` are :class:`TaskRun` views, one per run, whose ``state_dict`` has the format
    of the task's run alone (so a checkpoint moves between the two). Each member gives the
    numbers its run gives alone: same initialisation, data order, random streams and
    optimiser, only computed as one batch of models.
    """

    members: list[TaskRun]

    @abstractmethod
    def train_epoch(self, active: list[int]) -> dict[int, dict[str, float]]:
        """One epoch of the members ``active`` (indices); the others stay as they are."""

    @abstractmethod
    def evaluate(self, active: list[int]) -> dict[int, dict[str, float]]:
        """Held-out metrics of the members ``active``, as each run's ``evaluate``."""


class TorchRun(TaskRun):
    """A :class:`TaskRun` of one torch model, seeded and resumable.

    Subclasses call :meth:`_setup` from ``__init__`` and implement :meth:`_train_epoch`.
    Seed ``k`` fixes the model's initialisation (drawn under ``torch.manual_seed(k)``)
    and the data order (``order_rng``); the run keeps its own torch RNG stream, so results
    do not depend on how runs are interleaved, and :meth:`state_dict` holds all of it.

    What a task may change (its declaration of optimiser and trainable state):

    - :meth:`make_optimizers`: the optimiser(s), by name. Default: one Adam (``"main"``,
      also reachable as ``self.optimizer``) over every parameter that requires a gradient,
      with the run's ``lr`` and ``weight_decay``.
    - :meth:`trainable_state` / :meth:`load_trainable_state`: what a checkpoint holds of
      the model. Default: the whole ``state_dict``. A frozen backbone with adapters
      returns only the adapters (and whatever else it trains).
    """

    def _setup(self, data, p: dict[str, Any], brain_source: str | None, seed: int,
               device: str, make_model, brain_weight: str | None = "alpha",
               place: bool = True) -> None:
        """Seeded model, RNG streams and optimisers of the run.

        ``make_model()`` is called under ``torch.manual_seed(seed)``; its result is moved
        to ``device`` unless ``place`` is False (a model that placed itself, e.g. a large
        LM spread over GPUs by a ``device_map``, must not be moved as a whole).
        """
        import torch

        self.data, self.p, self.source, self.seed = data, p, brain_source, seed
        self.device = torch.device(device)
        self.epochs = int(p["epochs"])
        self.epoch = 0
        #: the brain term's weight (0 for baseline runs, whatever the params say)
        self.alpha = (float(p[brain_weight]) if brain_source is not None and brain_weight
                      else 0.0)
        outer = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.model = make_model()
        if place:
            self.model = self.model.to(self.device)
        self._torch_rng = torch.random.get_rng_state()
        torch.random.set_rng_state(outer)
        self.order_rng = torch.Generator().manual_seed(seed)
        self.optimizers = self.make_optimizers()
        if not self.optimizers:
            raise ValueError(f"{type(self).__name__}.make_optimizers returned no optimiser")

    def make_optimizers(self) -> dict[str, Any]:
        """The run's optimiser(s) by name (default: Adam over the trainable parameters)."""
        import torch

        params = [q for q in self.model.parameters() if q.requires_grad]
        return {"main": torch.optim.Adam(params, lr=float(self.p["lr"]),
                                         weight_decay=float(self.p.get("weight_decay", 0.0)))}

    @property
    def optimizer(self):
        """The ``"main"`` optimiser (the only one of single-optimiser runs)."""
        return self.optimizers["main"]

    def _module(self):
        """The model without a data-parallel wrapper."""
        return self.model.module if hasattr(self.model, "module") else self.model

    def trainable_state(self) -> dict[str, Any]:
        """What a checkpoint holds of the model (default: its whole ``state_dict``)."""
        return self._module().state_dict()

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`trainable_state` returned."""
        self._module().load_state_dict(state)

    def _with_rng(self, fn):
        import torch

        outer = torch.random.get_rng_state()
        torch.random.set_rng_state(self._torch_rng)
        try:
            return fn()
        finally:
            self._torch_rng = torch.random.get_rng_state()
            torch.random.set_rng_state(outer)

    def train_epoch(self, shard: tuple[int, int] = (0, 1)) -> dict[str, float]:
        return self._with_rng(lambda: self._train_epoch(shard))

    @abstractmethod
    def _train_epoch(self, shard: tuple[int, int]) -> dict[str, float]:
        """One epoch under the run's own RNG stream."""

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.trainable_state(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "epoch": self.epoch, "torch_rng": self._torch_rng,
                "order_rng": self.order_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_trainable_state(state["model"])
        # checkpoints written before runs could have several optimisers hold one
        optimizers = state.get("optimizers") or {"main": state["optimizer"]}
        if set(optimizers) != set(self.optimizers):
            raise ValueError(f"checkpoint holds optimisers {sorted(optimizers)} but the run "
                             f"has {sorted(self.optimizers)}")
        for k, o in self.optimizers.items():
            o.load_state_dict(optimizers[k])
        self.epoch = int(state["epoch"])
        self._torch_rng = state["torch_rng"]
        self.order_rng.set_state(state["order_rng"])


class Task(ABC):
    """A protocol: data, model and objective of one paper's experiment.

    Subclasses set the class attributes and implement the three methods.
    """

    name: ClassVar[str]
    params: ClassVar[dict[str, Param]]
    data_model: ClassVar[type[BaseModel]]
    #: metric the report's main panels use, and whether higher is better
    primary_metric: ClassVar[str]
    primary_mode: ClassVar[str] = "max"
    #: metrics every run logs per epoch
    metrics: ClassVar[tuple[str, ...]]
    #: a run diverges when a loss is non-finite, or when ``divergence_metric`` rises above
    #: ``divergence_threshold`` and is still above it at the end (None: only non-finite)
    divergence_metric: ClassVar[str] = "loss"
    divergence_threshold: ClassVar[float | None] = None
    #: alignment diagnostics (measured against the real brain for every arm) and whether
    #: each is better when higher ("max") or lower ("min"); every one is in :attr:`metrics`
    align_metrics: ClassVar[dict[str, str]] = {}
    #: the param that switches the brain term off at 0 (alpha's role): baseline arms set it
    #: to 0, brain-dependent arms need it above 0; None: the task has no such weight
    brain_weight: ClassVar[str | None] = "alpha"
    #: the param the ``l2`` arm sets from ``arms.l2_grid`` (and ``none`` sets to 0); None:
    #: the task has no L2 baseline
    l2_param: ClassVar[str | None] = "weight_decay"
    #: ablation arms: name -> params overriding the config's, trained on the real brain
    #: targets (e.g. ``{"no-gw": {"lambda2": 0.0}}``)
    ablations: ClassVar[dict[str, dict[str, Any]]] = {}
    #: keys of the ``data:`` section (at any depth) whose values are file or folder paths
    data_paths: ClassVar[tuple[str, ...]] = ()
    #: the param holding the number of epochs (what the early-stopping scheduler counts)
    epochs_param: ClassVar[str] = "epochs"
    #: save the runs' :meth:`TaskRun.artifacts` every this many epochs and at the last one
    #: (0: never)
    artifact_every: ClassVar[int] = 0
    #: the most Ray Train workers a run can use (None: any); a spec asking for more is refused
    max_workers: ClassVar[int | None] = None
    #: baseline arms the verdict also judges brain against, besides shuffled, noise, the
    #: ablations and the best L2 (e.g. ``("none",)`` when ``none`` is a training budget the
    #: claim must beat, such as language-only fine-tuning)
    baseline_controls: ClassVar[tuple[str, ...]] = ()
    #: a configuration that trains in seconds: ``{"data": {...}, "params": {...}}``; the
    #: contract tests run every registered task on it
    smoke: ClassVar[dict[str, Any]] = {}

    def parse_data(self, data: dict[str, Any]) -> BaseModel:
        """Validate the spec's ``data:`` section against :attr:`data_model`."""
        return self.data_model.model_validate(data)

    @abstractmethod
    def check_data(self, data: BaseModel, params: dict[str, Any]) -> None:
        """Cheap checks of the data against the params (files exist, shapes, finiteness).

        Raises :class:`raybrain.errors.SpecError` before any compute is spent.
        """

    @abstractmethod
    def load_data(self, data: BaseModel, data_seed: int) -> Any:
        """Load or simulate the sweep's data; deterministic in ``data_seed``."""

    @abstractmethod
    def build(self, data: Any, params: dict[str, Any], brain_source: str | None,
              seed: int, device: str = "cpu") -> TaskRun:
        """Build one run. ``seed`` fixes model initialisation and data order."""

    @property
    def can_vectorise(self) -> bool:
        """Whether the task has a vectorised path (overrides :meth:`build_group`)."""
        return type(self).build_group is not Task.build_group

    def build_group(self, data: Any, params: dict[str, Any],
                    members: list[tuple[str | None, int]], device: str = "cpu"
                    ) -> RunGroup | None:
        """Runs with the same params and these ``(brain source, seed)`` trained together.

        None (the default): the task has no vectorised path and each run trains alone.
        """
        return None

    def prepare(self, data: BaseModel) -> tuple[dict[str, Any] | None, list[str], list[str]]:
        """Prepare the brain data once, in the sweep's driver, before any trial starts.

        Tasks that read recordings do the slow part here (read, clean, cache) so that
        trials find it cached and bad files fail before any compute is spent.

        Returns
        -------
        data : dict or None
            The data section trials receive (e.g. paths made absolute); None: the spec's.
        lines : list of str
            What was prepared (shapes, rates, cache), printed by the CLI.
        files : list of str
            Prepared brain-data files, logged to tracking only when the spec opts in
            (``tracking.log_brain_data``).
        """
        return None, [], []

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def brain_params(self) -> frozenset[str]:
        return frozenset(k for k, p in self.params.items() if p.brain)

    def align_mode(self, metric: str) -> str:
        """Direction of an alignment metric: "max" (higher is better) or "min"."""
        return self.align_metrics[metric]

    def is_data_path_key(self, key: str) -> bool:
        """Whether a ``data:`` key holds paths: declared in :attr:`data_paths`, or named
        like one (``*_path``, ``*_file``, ``*_dir``)."""
        return key in self.data_paths or key.endswith(("_path", "_file", "_dir"))

    def data_path_items(self, data: Any, key: str = "data", path_key: bool = False):
        """``(dotted key, value)`` of every path string of a ``data:`` section, at any depth."""
        if isinstance(data, dict):
            for k, v in data.items():
                yield from self.data_path_items(v, f"{key}.{k}", self.is_data_path_key(str(k)))
        elif isinstance(data, list):
            for i, v in enumerate(data):
                yield from self.data_path_items(v, f"{key}[{i}]", path_key)
        elif isinstance(data, str) and path_key and data:
            yield key, data

    def check_run_params(self, p: dict[str, Any], brain_source: str | None) -> None:
        """Refuse a brain-dependent run whose brain weight is off (it would be ``none``)."""
        from raybrain.errors import SpecError

        w = self.brain_weight
        if brain_source is not None and w is not None and not float(p[w]) > 0:
            raise SpecError(f"a run with brain source {brain_source!r} needs {w} > 0, "
                            f"got {w}={p[w]}")


def _refuse_bare_null(value):
    """A bare ``generator: null`` in YAML is the empty value, not the null generator."""
    if value is None:
        raise ValueError("generator must be 'informative' or 'null'; write \"null\" in quotes "
                         "(a bare null is YAML's empty value)")
    return value


#: put in a data model's class body as ``_bare_null = GENERATOR_NOT_BARE_NULL``
GENERATOR_NOT_BARE_NULL = field_validator("generator", mode="before")(_refuse_bare_null)
