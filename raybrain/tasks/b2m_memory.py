"""B2M memory task: a GRU learns the goal-switching task, its embedding pulled toward
7-d brain embeddings by contrastive (InfoNCE) or latent (MSE) transfer.

Protocol (B2M paper, section 4): the model sees episodes one-hot coded (context bins
showing the current target, then per step pre-stimulus bins on the "no stimulus" unit and
post-stimulus bins on the stimulus), answers accept (+1) or reject (-1) at each step's
response bin(s), and is scored on freshly simulated episodes. Training episodes are the
ones the brain data belong to, one to one. Loss: ``(1 - alpha) * MSE_task + alpha *
L_transfer`` with ``L_transfer`` computed on the embedding layer at every time bin of every
step (context bins have no brain data and are masked out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raybrain.align import TRANSFER_LOSSES, linear_cka, mix_losses, rsa, subsample_items
from raybrain.data import (
    Episodes,
    MemoryTaskConfig,
    encode_inputs,
    load_memory_npz,
    phase_randomise,
    shuffle_steps,
    simulate_episodes,
    step_bins_to_time,
    synthetic_brain,
)
from raybrain.errors import SpecError
from raybrain.models import MemoryGRU
from raybrain.tasks import register
from raybrain.tasks.base import GENERATOR_NOT_BARE_NULL, Param, Task, TorchRun


class MemoryData(BaseModel):
    """The ``data:`` section of a ``b2m-memory`` spec.

    ``source: synthetic`` simulates training episodes and their brain embeddings
    (``generator: informative`` mixes context, stimulus and time within step; ``null``
    has the same statistics and no task information). ``source: npz`` reads the user's
    embeddings and episode sequences (layout in :mod:`raybrain.data.npz`). Validation and
    test episodes are always freshly simulated and never used for training.
    """

    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "npz", "spikes"] = "synthetic"
    path: str | None = None
    #: spikes: one spike file per session (raybrain.data.spikes layout, with the episode
    #: sequences); aligned, filtered and embedded by multi-session CEBRA, once, cached
    spikes: list[str] = []
    cebra_dimension: int = Field(7, ge=1)
    cebra_iterations: int = Field(15000, ge=1)
    cebra_batch_size: int = Field(512, ge=2)
    cebra_device: str = "cpu"
    cebra_learning_rate: float = Field(3e-4, gt=0)
    #: seconds of pre-stimulus window (split into pre_bins bins; the paper: 1 s, 100 bins)
    pre_s: float = Field(1.0, gt=0)
    cache_dir: str | None = None
    generator: Literal["informative", "null"] = "informative"
    snr: float = Field(1.0, gt=0)
    n_train_episodes: int = Field(50, ge=2)
    #: synthetic: extra episodes simulated with the training ones (same brain generator)
    #: and held out from training, for the alignment diagnostics
    n_heldout_episodes: int = Field(20, ge=1)
    #: npz: fraction of the file's episodes held out from training for the diagnostics
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    #: time points (at most) of the held-out steps used for the RSA and CKA diagnostics
    diagnostic_bins: int = Field(400, ge=3)
    n_val_episodes: int = Field(200, ge=1)
    n_test_episodes: int = Field(1000, ge=1)
    pre_bins: int = Field(5, ge=1)
    post_bins: int = Field(5, ge=1)
    context_bins: int = Field(5, ge=1)
    response_bins: int = Field(1, ge=1)
    min_steps: int = Field(4, ge=1)
    max_steps: int = Field(12, ge=1)

    _bare_null = GENERATOR_NOT_BARE_NULL

    @model_validator(mode="after")
    def _check(self):
        if self.source == "npz" and not self.path:
            raise ValueError("data.source 'npz' needs data.path (the .npz file of brain embeddings)")
        if self.source == "spikes" and not self.spikes:
            raise ValueError("data.source 'spikes' needs data.spikes: a list of spike files, "
                             "one per session")
        if self.min_steps > self.max_steps:
            raise ValueError(f"data.min_steps <= data.max_steps must hold, got "
                             f"({self.min_steps}, {self.max_steps})")
        if self.response_bins > self.post_bins:
            raise ValueError(f"data.response_bins <= data.post_bins must hold, got "
                             f"({self.response_bins}, {self.post_bins})")
        return self

    def task_config(self) -> MemoryTaskConfig:
        return MemoryTaskConfig(pre_bins=self.pre_bins, post_bins=self.post_bins,
                                context_bins=self.context_bins,
                                response_bins=self.response_bins,
                                min_steps=self.min_steps, max_steps=self.max_steps)


@dataclass
class EncodedSplit:
    """Episodes of one split in the time layout, as tensors.

    ``inputs`` (n, T, 4); ``response_mask``/``brain_mask`` (n, T) bool;
    ``response_target`` (n, T); ``lengths_t`` (n,) number of real time bins.
    """

    episodes: Episodes
    inputs: torch.Tensor
    response_mask: torch.Tensor
    response_target: torch.Tensor
    brain_mask: torch.Tensor
    lengths_t: torch.Tensor

    @classmethod
    def of(cls, episodes: Episodes, cfg: MemoryTaskConfig) -> "EncodedSplit":
        enc = encode_inputs(episodes, cfg)
        return cls(
            episodes=episodes,
            inputs=torch.from_numpy(enc["inputs"]),
            response_mask=torch.from_numpy(enc["response_mask"]),
            response_target=torch.from_numpy(enc["response_target"]),
            brain_mask=torch.from_numpy(enc["brain_mask"]),
            lengths_t=torch.from_numpy(enc["time_mask"].sum(1)),
        )

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class MemoryTaskData:
    """Everything a sweep's runs share: the three splits and the brain views.

    ``brain_steps`` (n_train_steps, bins_per_step, E): the real brain embeddings, one per
    time bin per training step. Control views are built on first use from streams of the
    data seed, so every run of a sweep sees the same permutation and the same surrogates.
    """

    cfg: MemoryTaskConfig
    train: EncodedSplit
    val: EncodedSplit
    test: EncodedSplit
    brain_steps: np.ndarray
    data_seed: int
    #: held-out episodes with brain data (never trained on), their real brain embeddings
    #: in the time layout (n_heldout, T, E) and the flat indices of the valid time points
    #: the diagnostics use
    heldout: EncodedSplit | None = None
    heldout_brain: torch.Tensor | None = None
    diag_index: np.ndarray | None = None
    _views: dict[str, torch.Tensor] = field(default_factory=dict)

    def brain_view(self, source: str) -> torch.Tensor:
        """Brain targets in the time layout, shape (n_train, T, E), for ``source``."""
        if source not in self._views:
            if source == "real":
                steps = self.brain_steps
            elif source == "shuffled":
                steps = shuffle_steps(self.brain_steps, np.random.default_rng([self.data_seed, 11]))
            elif source == "noise":
                steps = phase_randomise(self.brain_steps, np.random.default_rng([self.data_seed, 12]))
            else:
                raise ValueError(f"brain source must be one of real/shuffled/noise, got {source!r}")
            timed = step_bins_to_time(steps, self.train.episodes, self.cfg)
            self._views[source] = torch.from_numpy(np.ascontiguousarray(timed, dtype=np.float32))
        return self._views[source]


_PARAMS = {
    "hidden": Param(512, int, low=1, help="GRU hidden size"),
    "embed_dim": Param(7, int, low=1, help="size of the embedding aligned with the brain"),
    "dropout": Param(0.3, float, low=0.0, high=0.99, help="dropout after the GRU"),
    "lr": Param(1e-4, float, low=0.0, help="Adam learning rate"),
    "epochs": Param(150, int, low=1, help="training epochs"),
    "batch_size": Param(1, int, low=1, help="episodes per optimisation step"),
    "weight_decay": Param(0.0, float, low=0.0, help="L2 penalty (Adam weight_decay)"),
    "alpha": Param(0.0, float, brain=True, low=0.0, high=1.0,
                   help="transfer weight: (1 - alpha) L_task + alpha L_transfer"),
    "temperature": Param(0.1, float, brain=True, low=1e-6,
                         help="InfoNCE temperature tau"),
    "transfer": Param("contrastive", str, brain=True, choices=("contrastive", "latent"),
                      help="transfer objective"),
}


@register("b2m-memory")
class B2MMemory(Task):
    """GRU on the goal-switching memory task with brain contrastive or latent transfer."""

    params = _PARAMS
    data_model = MemoryData
    primary_metric = "test_accuracy"
    primary_mode = "max"
    #: (``align_rsa_bins``/``align_cka_bins`` come at the last epoch only: see alignment())
    metrics = ("test_accuracy", "val_accuracy", "test_task_loss", "task_loss",
               "transfer_loss", "loss", "align_rsa", "align_cka")
    divergence_threshold = None
    align_metrics = {"align_cka": "max", "align_rsa": "max"}
    data_paths = ("path", "spikes", "cache_dir")
    smoke = {"data": {"n_train_episodes": 8, "n_heldout_episodes": 4, "n_val_episodes": 10,
                      "n_test_episodes": 12, "pre_bins": 1, "post_bins": 2, "context_bins": 1,
                      "min_steps": 2, "max_steps": 4},
             "params": {"hidden": 8, "epochs": 2, "batch_size": 4, "lr": 0.01,
                        "transfer": "latent", "alpha": 0.2}}

    def check_data(self, data: MemoryData, params: dict[str, Any]) -> None:
        embed_dims = params.get("embed_dim", [self.params["embed_dim"].default])
        if data.source == "spikes":
            from raybrain.data.memory_spikes import check_memory_sessions

            bad = [int(d) for d in embed_dims if int(d) != data.cebra_dimension]
            if bad:
                raise SpecError(f"params.embed_dim {bad[0]} differs from data.cebra_dimension "
                                f"{data.cebra_dimension}; the model's embedding must match the "
                                f"CEBRA embedding it is aligned with")
            # what preparation will need, from key lists and small arrays (no CEBRA here)
            check_memory_sessions(data.spikes, output_dimension=data.cebra_dimension,
                                  pre_s=data.pre_s)
        if data.source == "npz":
            for dim in embed_dims:
                load_memory_npz(data.path, data.task_config(), expected_dim=int(dim))

    def _spike_embeddings(self, data: MemoryData):
        from raybrain.data.memory_spikes import prepare_memory_embeddings

        return prepare_memory_embeddings(
            data.spikes, data.task_config(), output_dimension=data.cebra_dimension,
            max_iterations=data.cebra_iterations, batch_size=data.cebra_batch_size,
            device=data.cebra_device, learning_rate=data.cebra_learning_rate, pre_s=data.pre_s,
            cache_dir=data.cache_dir)

    def prepare(self, data: MemoryData):
        """Spike sessions: align, filter and CEBRA-embed them once, before any trial."""
        if data.source != "spikes":
            return None, [], []
        entry = self._spike_embeddings(data)
        d = data.model_dump()
        d["spikes"] = [str(Path(f).expanduser().resolve()) for f in data.spikes]
        if data.cache_dir:
            d["cache_dir"] = str(Path(data.cache_dir).expanduser().resolve())
        emb = entry.arrays["embeddings"]
        prov = entry.provenance
        lines = [f"brain data: CEBRA embeddings {tuple(emb.shape)} (steps x bins x dims) from "
                 f"{len(data.spikes)} spike session(s) "
                 f"({'embedded and cached' if entry.computed else 'from the cache'}: "
                 f"{entry.path.name}, CEBRA {prov.get('cebra', {}).get('seconds', '?')} s)"]
        for i, s in enumerate(prov.get("sessions", [])):
            lines.append(f"  session {i + 1}: {s['units']} units, {s['steps']} steps, mean rate "
                         f"{s['mean_rate_hz']:g} Hz")
        return d, lines, [str(entry.path), str(entry.path.with_suffix(".json"))]

    def load_data(self, data: MemoryData, data_seed: int) -> MemoryTaskData:
        cfg = data.task_config()
        if data.source in ("npz", "spikes"):
            path = data.path if data.source == "npz" else self._spike_embeddings(data).path
            episodes, brain = load_memory_npz(path, cfg, expected_dim=None)
            n_held = int(round(data.heldout_fraction * episodes.n_episodes))
            if episodes.n_episodes - n_held < 2 or n_held < 1:
                raise SpecError(f"brain data {str(path)!r}: {episodes.n_episodes} episodes cannot "
                                f"be split into >= 2 training and >= 1 held-out episodes with "
                                f"heldout_fraction={data.heldout_fraction}")
            order = np.random.default_rng([data_seed, 5]).permutation(episodes.n_episodes)
            held_idx, train_idx = np.sort(order[:n_held]), np.sort(order[n_held:])
        else:
            n_all = data.n_train_episodes + data.n_heldout_episodes
            episodes = simulate_episodes(n_all, cfg, np.random.default_rng([data_seed, 1]))
            brain = synthetic_brain(episodes, cfg, np.random.default_rng([data_seed, 2]),
                                    snr=data.snr, dim=7,
                                    informative=data.generator == "informative")
            train_idx = np.arange(data.n_train_episodes)
            held_idx = np.arange(data.n_train_episodes, n_all)
        train_eps, train_brain = episodes.split(train_idx, brain)
        held_eps, held_brain = episodes.split(held_idx, brain)
        val = simulate_episodes(data.n_val_episodes, cfg, np.random.default_rng([data_seed, 3]))
        test = simulate_episodes(data.n_test_episodes, cfg, np.random.default_rng([data_seed, 4]))
        heldout = EncodedSplit.of(held_eps, cfg)
        held_time = step_bins_to_time(held_brain, held_eps, cfg)
        n_valid = int(heldout.brain_mask.sum())
        diag = subsample_items(n_valid, data.diagnostic_bins, np.random.default_rng([data_seed, 6]))
        return MemoryTaskData(cfg=cfg, train=EncodedSplit.of(train_eps, cfg),
                              val=EncodedSplit.of(val, cfg), test=EncodedSplit.of(test, cfg),
                              brain_steps=np.asarray(train_brain, dtype=np.float32),
                              data_seed=data_seed, heldout=heldout,
                              heldout_brain=torch.from_numpy(
                                  np.ascontiguousarray(held_time, dtype=np.float32)),
                              diag_index=diag)

    def build(self, data: MemoryTaskData, params: dict[str, Any], brain_source: str | None,
              seed: int, device: str = "cpu") -> "MemoryRun":
        p = {**self.defaults(), **params}
        self.build_checks(data, p, brain_source)
        return MemoryRun(data, p, brain_source, seed, device)

    def build_group(self, data: MemoryTaskData, params: dict[str, Any],
                    members: list[tuple[str | None, int]], device: str = "cpu"):
        """The members trained as one stack of GRUs (see :mod:`raybrain.tasks.memory_group`)."""
        from raybrain.tasks.memory_group import MemoryGroup

        p = {**self.defaults(), **params}
        for src, seed in members:
            self.build_checks(data, p, src)
        return MemoryGroup(data, p, members, device)

    def build_checks(self, data: MemoryTaskData, p: dict[str, Any], brain_source) -> None:
        if p["embed_dim"] != data.brain_steps.shape[-1]:
            raise SpecError(f"brain embedding dimension {data.brain_steps.shape[-1]} differs "
                            f"from the model's embedding dimension {p['embed_dim']}")
        self.check_run_params(p, brain_source)


class MemoryRun(TorchRun):
    """One GRU trained on the memory task (see :class:`B2MMemory`).

    The per-batch loss, the scoring and the alignment are module functions shared with the
    vectorised replicates (:class:`raybrain.tasks.memory_group.MemoryGroup`), which train
    several such runs as one stack of models with the same numbers.
    """

    def __init__(self, data: MemoryTaskData, p: dict[str, Any], brain_source: str | None,
                 seed: int, device: str):
        self._setup(data, p, brain_source, seed, device, lambda: MemoryGRU(
            4, int(p["hidden"]), int(p["embed_dim"]), float(p["dropout"])))
        self.transfer_fn = TRANSFER_LOSSES.get(p["transfer"])
        self.brain_target = data.brain_view(brain_source) if brain_source else None
        # alignment to the real brain is measured for every arm
        self.brain_real = data.brain_view("real")

    # -- training ---------------------------------------------------------------------
    def _train_epoch(self, shard: tuple[int, int]) -> dict[str, float]:
        tr = self.data.train
        self.model.train()
        sums = {"task_loss": 0.0, "transfer_loss": 0.0, "loss": 0.0}
        n_batches = 0
        for idx in epoch_batches(self, shard):
            b = training_batch(tr, idx, self.device)
            out, emb = self.model(b.x)
            loss, task_loss, transfer_value = batch_loss(self, out, emb, b)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            add_batch(sums, loss, task_loss, transfer_value)
            n_batches += 1
        self.epoch += 1
        return {k: v / max(n_batches, 1) for k, v in sums.items()}

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, split: EncodedSplit, chunk: int = 256) -> tuple[float, float]:
        """Accuracy (sign agreement per step) and task loss on ``split``."""
        self.model.eval()
        tally = [0, 0, 0.0, 0]
        for sl, t_max in eval_chunks(split, chunk):
            out, _ = self.model(split.inputs[sl, :t_max].to(self.device))
            score_chunk(tally, out, split, sl, t_max, self.data.cfg.response_bins, self.device)
        return tally[0] / tally[1], tally[2] / tally[3]

    def evaluate(self) -> dict[str, float]:
        test_acc, test_loss = self._score(self.data.test)
        val_acc, _ = self._score(self.data.val)
        return {"test_accuracy": test_acc, "val_accuracy": val_acc, "test_task_loss": test_loss,
                **self._alignment()}

    @torch.no_grad()
    def _alignment(self) -> dict[str, float]:
        """Alignment with the real brain on held-out steps (see :func:`alignment`)."""
        held = self.data.heldout
        self.model.eval()
        t_max = int(held.lengths_t.max())
        _, emb = self.model(held.inputs[:, :t_max].to(self.device))
        return alignment(self.data, emb.cpu(), t_max, bins=self.epoch >= self.epochs)


@dataclass
class Batch:
    """One training batch of a run: episode indices and their tensors cut to ``t_max``."""

    idx: torch.Tensor
    t_max: int
    x: torch.Tensor
    rmask: torch.Tensor
    rtarget: torch.Tensor
    bmask: torch.Tensor


def epoch_batches(run, shard: tuple[int, int] = (0, 1)) -> list[torch.Tensor]:
    """The run's batches of training episodes for one epoch (its own data order)."""
    rank, world = shard
    order = torch.randperm(len(run.data.train), generator=run.order_rng)
    if world > 1:
        # equal shards (padded by wrapping around), so every data-parallel rank takes the
        # same number of optimiser steps and gradient all-reduces never wait forever
        pad = (-len(order)) % world
        order = torch.cat([order, order[:pad]])[rank::world]
    bs = int(run.p["batch_size"])
    return [order[start:start + bs] for start in range(0, len(order), bs)]


def training_batch(tr: EncodedSplit, idx: torch.Tensor, device) -> Batch:
    t_max = int(tr.lengths_t[idx].max())
    return Batch(idx, t_max, tr.inputs[idx, :t_max].to(device),
                 tr.response_mask[idx, :t_max].to(device),
                 tr.response_target[idx, :t_max].to(device),
                 tr.brain_mask[idx, :t_max].to(device))


def batch_loss(run, out: torch.Tensor, emb: torch.Tensor, b: Batch):
    """``(loss, task loss, transfer value)`` of a run's batch.

    ``out`` (batch, t_max), ``emb`` (batch, t_max, E). The task loss is the MSE at the
    response bins; with alpha > 0 the loss mixes in the transfer term to the run's brain
    targets, else the transfer value is measured against the real brain (not trained on).
    """
    task_loss = torch.mean((out[b.rmask] - b.rtarget[b.rmask]) ** 2)
    temperature = float(run.p["temperature"])
    if run.alpha > 0:
        target = run.brain_target[b.idx, :b.t_max].to(b.x.device)
        transfer = run.transfer_fn(emb, target, b.bmask, temperature)
        return mix_losses(task_loss, transfer, run.alpha), task_loss, float(transfer.detach())
    with torch.no_grad():
        real = run.brain_real[b.idx, :b.t_max].to(b.x.device)
        value = float(run.transfer_fn(emb.detach(), real, b.bmask, temperature))
    return task_loss, task_loss, value


def add_batch(sums: dict[str, float], loss, task_loss, transfer_value: float) -> None:
    sums["task_loss"] += float(task_loss.detach())
    sums["transfer_loss"] += transfer_value
    sums["loss"] += float(loss.detach())


def eval_chunks(split: EncodedSplit, chunk: int = 256):
    """``(slice, t_max)`` of each evaluation chunk of ``split``."""
    for s in range(0, len(split), chunk):
        sl = slice(s, s + chunk)
        yield sl, int(split.lengths_t[sl].max())


def score_chunk(tally: list, out: torch.Tensor, split: EncodedSplit, sl: slice, t_max: int,
                rb: int, device) -> None:
    """Add one chunk's correct steps, steps, squared error and response bins to ``tally``."""
    mask = split.response_mask[sl, :t_max].to(device)
    target = split.response_target[sl, :t_max].to(device)
    o, t = out[mask], target[mask]
    tally[2] += float(((o - t) ** 2).sum())
    tally[3] += o.numel()
    # the response bins of a step are contiguous: average them per step
    o_step, t_step = o.view(-1, rb).mean(1), t.view(-1, rb)[:, 0]
    tally[0] += int((torch.sign(o_step) == t_step).sum())
    tally[1] += o_step.numel()


def alignment(data: MemoryTaskData, emb: torch.Tensor, t_max: int,
              bins: bool = True) -> dict[str, float]:
    """Alignment of an embedding with the real brain on held-out steps (every arm).

    ``emb`` (n_heldout, t_max, E): the model's embedding of the held-out episodes. Always
    against the real (unshuffled) brain, whatever the run's brain source.

    - ``align_cka``/``align_rsa``: per step. Each held-out step's embedding and brain
      embedding are averaged over the step's bins, and linear CKA / RSA (Spearman of
      correlation-distance RDMs) compare the steps. Every step shares the same within-step
      time course, which averaging removes, so these measure the step-to-step
      correspondence the brain term carries: they separate brain from shuffled runs on
      informative brain data and not on null data.
    - ``align_cka_bins``/``align_rsa_bins`` (with ``bins``; runs ask at their last epoch
      only, as the RSA over ``diagnostic_bins`` points costs more than the rest of an
      evaluation): over time bins. Dominated by the within-step time course that every
      arm learns (shuffled and noise targets keep it), so they cannot tell brain from
      shuffled; kept to show how much of the embedding is that time course.
    """
    held = data.heldout
    mask = held.brain_mask[:, :t_max]
    names = ("align_rsa", "align_cka") + (("align_rsa_bins", "align_cka_bins") if bins else ())
    if not bool(torch.isfinite(emb[mask]).all()):
        return dict.fromkeys(names, float("nan"))
    brain = data.heldout_brain[:, :t_max]
    per_step = data.cfg.bins_per_step
    model_steps = _step_means(emb, mask, per_step)
    brain_steps = _step_means(brain, mask, per_step)
    out = {"align_rsa": rsa(model_steps, brain_steps),
           "align_cka": linear_cka(model_steps, brain_steps)}
    if bins:
        model_pts = emb[mask][data.diag_index].numpy()
        brain_pts = brain[mask][data.diag_index].numpy()
        out.update(align_rsa_bins=rsa(model_pts, brain_pts),
                   align_cka_bins=linear_cka(model_pts, brain_pts))
    return out


def _step_means(x: torch.Tensor, mask: torch.Tensor, bins_per_step: int) -> np.ndarray:
    """Mean over each step's bins.

    ``x`` (n_episodes, T, E); ``mask`` (n_episodes, T) marks the steps' bins, which come
    in order, ``bins_per_step`` consecutive bins per step. Returns (n_steps, E).
    """
    pts = x[mask].numpy()                                    # (n_steps * bins_per_step, E)
    return pts.reshape(-1, bins_per_step, pts.shape[-1]).mean(1)
