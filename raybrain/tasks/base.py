"""The interface every protocol implements.

A :class:`Task` is one paper protocol, registered by name. It declares its knobs
(:class:`Param`, each marked as depending on brain data or not), the schema of its
``data:`` section, and its metrics. It loads the data of a sweep once
(:meth:`Task.load_data`, deterministic in the data seed) and builds one
:class:`TaskRun` per (params, brain source, seed). A run trains one epoch at a time and
hands back metrics as ``dict[str, float]``; it never reports them itself. It exposes its
whole state (model, optimisers, epoch, RNG) so the sweep layer can checkpoint after any
epoch and resume where it stopped.

Brain sources are what the arms feed a run: ``"real"`` brain targets, ``"shuffled"``
(whole steps permuted), ``"noise"`` (phase-randomised surrogates), or ``None`` (no brain
term: the ``l2`` and ``none`` arms). How a source is made is the task's business, since
"a step" means something different for spike embeddings, EEG batches or RDMs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

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


class TorchRun(TaskRun):
    """A :class:`TaskRun` of one torch model trained with Adam, seeded and resumable.

    Subclasses call :meth:`_setup` from ``__init__`` and implement :meth:`_train_epoch`.
    Seed ``k`` fixes the model's initialisation (drawn under ``torch.manual_seed(k)``)
    and the data order (``order_rng``); the run keeps its own torch RNG stream, so results
    do not depend on how runs are interleaved, and :meth:`state_dict` holds all of it.
    """

    def _setup(self, data, p: dict[str, Any], brain_source: str | None, seed: int,
               device: str, make_model) -> None:
        import torch

        self.data, self.p, self.source, self.seed = data, p, brain_source, seed
        self.device = torch.device(device)
        self.epochs = int(p["epochs"])
        self.epoch = 0
        self.alpha = float(p["alpha"]) if brain_source is not None else 0.0
        outer = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.model = make_model().to(self.device)
        self._torch_rng = torch.random.get_rng_state()
        torch.random.set_rng_state(outer)
        self.order_rng = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(p["lr"]),
                                          weight_decay=float(p["weight_decay"]))

    def _module(self):
        """The model without a data-parallel wrapper."""
        return self.model.module if hasattr(self.model, "module") else self.model

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
        return {"model": self._module().state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "torch_rng": self._torch_rng,
                "order_rng": self.order_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._module().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
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
