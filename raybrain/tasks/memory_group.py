"""Vectorised replicates of the B2M memory task: the runs of one config trained as a stack.

Runs that share their params (the seeds of an arm, and the brain, shuffled and noise arms
of a config) train as one :class:`~raybrain.models.gru.MemoryGRUStack`: one batched
forward and backward per training batch instead of one per run. Each member keeps what
makes it a separate run: its initialisation (drawn under its seed, as a run alone), its
data order (its own generator), its dropout stream (its own torch random state, drawn at
the shapes a run alone would draw), its brain targets, its share of the Adam optimiser
(element-wise, so a slice behaves as a separate optimiser). The per-batch loss, scoring and
alignment are the functions :class:`~raybrain.tasks.b2m_memory.MemoryRun` uses, on each
member's slice of the stack, so a member gives the numbers its run gives alone (to
floating-point rounding: after the quick spec's 20 epochs, identical accuracies and
losses within 1e-6; tested), and its state (checkpoint) has a run's format: a sweep
resumes a vectorised run sequentially and the other way round.
"""

from __future__ import annotations

from typing import Any

import torch

from raybrain.align import TRANSFER_LOSSES
from raybrain.models.gru import MemoryGRU, MemoryGRUStack
from raybrain.tasks.b2m_memory import (add_batch, alignment, batch_loss, epoch_batches,
                                       eval_chunks, score_chunk, training_batch)
from raybrain.tasks.base import RunGroup, TaskRun


class MemoryMember(TaskRun):
    """One run of a :class:`MemoryGroup`: what :func:`batch_loss` and the sweep read."""

    def __init__(self, group: "MemoryGroup", k: int, brain_source: str | None, seed: int):
        data, p = group.data, group.p
        self.group, self.k, self.data, self.p = group, k, data, p
        self.source, self.seed = brain_source, seed
        self.epochs, self.epoch = int(p["epochs"]), 0
        self.alpha = float(p["alpha"]) if brain_source is not None else 0.0
        self.transfer_fn = TRANSFER_LOSSES.get(p["transfer"])
        self.brain_target = data.brain_view(brain_source) if brain_source else None
        self.brain_real = data.brain_view("real")
        self.order_rng = torch.Generator().manual_seed(seed)
        # the initialisation a run alone draws under its seed, and its random stream after
        outer = torch.random.get_rng_state()
        torch.manual_seed(seed)
        alone = MemoryGRU(4, int(p["hidden"]), int(p["embed_dim"]), float(p["dropout"]))
        self._torch_rng = torch.random.get_rng_state()
        torch.random.set_rng_state(outer)
        group.stack.load_member_state(k, alone.state_dict())
        self.model = group.stack

    def train_epoch(self, shard=(0, 1)):
        raise RuntimeError("a member of a vectorised group trains through its group")

    def evaluate(self):
        raise RuntimeError("a member of a vectorised group is evaluated through its group")

    def mask(self, batch: int, t_max: int, time: int) -> torch.Tensor:
        """This run's dropout multipliers for a batch, padded to the stack's ``time``."""
        outer = torch.random.get_rng_state()
        torch.random.set_rng_state(self._torch_rng)
        try:
            m = self.group.stack.draw_mask(batch, t_max)
        finally:
            self._torch_rng = torch.random.get_rng_state()
            torch.random.set_rng_state(outer)
        if time > t_max:
            m = torch.cat([m, m.new_ones(batch, time - t_max, m.shape[-1])], 1)
        return m

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.group.stack.member_state(self.k),
                "optimizers": {"main": self.group.member_optimizer_state(self.k)},
                "epoch": self.epoch, "torch_rng": self._torch_rng,
                "order_rng": self.order_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.group.stack.load_member_state(self.k, state["model"])
        optimizers = state.get("optimizers") or {"main": state["optimizer"]}
        self.group.load_member_optimizer_state(self.k, optimizers["main"])
        self.epoch = int(state["epoch"])
        self._torch_rng = state["torch_rng"]
        self.order_rng.set_state(state["order_rng"])


class MemoryGroup(RunGroup):
    """Memory-task runs with the same params, trained as one stack (see the module doc).

    Parameters
    ----------
    data : MemoryTaskData
    p : dict
        The runs' params (task defaults filled in), shared by every member.
    members : list of (brain source, seed)
    """

    def __init__(self, data, p: dict[str, Any], members: list[tuple[str | None, int]],
                 device: str = "cpu"):
        self.data, self.p, self.device = data, p, torch.device(device)
        self.stack = MemoryGRUStack(len(members), 4, int(p["hidden"]), int(p["embed_dim"]),
                                    float(p["dropout"])).to(self.device)
        self.members = [MemoryMember(self, k, src, seed) for k, (src, seed) in enumerate(members)]
        self.optimizer = torch.optim.Adam(self.stack.parameters(), lr=float(p["lr"]),
                                          weight_decay=float(p["weight_decay"]))
        self._step_loaded = False

    # -- training ---------------------------------------------------------------------
    def train_epoch(self, active: list[int]) -> dict[int, dict[str, float]]:
        tr, S = self.data.train, len(self.members)
        batches = {k: epoch_batches(self.members[k]) for k in active}
        n = len(batches[active[0]])
        sums = {k: {"task_loss": 0.0, "transfer_loss": 0.0, "loss": 0.0} for k in active}
        frozen = [k for k in range(S) if k not in active]
        self.stack.train()
        for j in range(n):
            b = {k: training_batch(tr, batches[k][j], self.device) for k in active}
            size = len(batches[active[0]][j])
            time = max(bk.t_max for bk in b.values())
            x = torch.zeros(S, size, time, tr.inputs.shape[-1], device=self.device)
            masks = torch.ones(S, size, time, self.stack.hidden, device=self.device)
            for k in active:
                x[k, :, :b[k].t_max] = b[k].x
                if self.stack.dropout > 0:
                    masks[k] = self.members[k].mask(size, b[k].t_max, time)
            out, emb = self.stack(x, masks if self.stack.dropout > 0 else None)
            losses = {}
            for k in active:
                t = b[k].t_max
                losses[k] = batch_loss(self.members[k], out[k, :, :t], emb[k, :, :t], b[k])
            self.optimizer.zero_grad(set_to_none=True)
            sum(loss for loss, _, _ in losses.values()).backward()
            kept = [self.stack.member_state(k) for k in frozen]
            self.optimizer.step()
            for k, state in zip(frozen, kept):  # finished members stay as they ended
                self.stack.load_member_state(k, state)
            for k in active:
                add_batch(sums[k], *losses[k])
        out_metrics = {}
        for k in active:
            self.members[k].epoch += 1
            out_metrics[k] = {key: v / max(n, 1) for key, v in sums[k].items()}
        return out_metrics

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def _scores(self, split, active: list[int], chunk: int = 256):
        """Evaluation is compute-bound (large batches): each member runs alone, on the
        same inputs, with the same operations as a run alone."""
        tallies = {k: [0, 0, 0.0, 0] for k in active}
        for sl, t_max in eval_chunks(split, chunk):
            x = split.inputs[sl, :t_max].to(self.device)
            for k in active:
                out, _ = self.stack.member_forward(k, x)
                score_chunk(tallies[k], out, split, sl, t_max, self.data.cfg.response_bins,
                            self.device)
        return {k: (t[0] / t[1], t[2] / t[3]) for k, t in tallies.items()}

    @torch.no_grad()
    def evaluate(self, active: list[int]) -> dict[int, dict[str, float]]:
        self.stack.eval()
        test = self._scores(self.data.test, active)
        val = self._scores(self.data.val, active)
        held = self.data.heldout
        t_max = int(held.lengths_t.max())
        x = held.inputs[:, :t_max].to(self.device)
        return {k: {"test_accuracy": test[k][0], "val_accuracy": val[k][0],
                    "test_task_loss": test[k][1],
                    **alignment(self.data, self.stack.member_forward(k, x)[1].cpu(), t_max,
                                bins=self.members[k].epoch >= self.members[k].epochs)}
                for k in active}

    # -- per-member optimiser state (a run's Adam state, sliced) -------------------------
    def member_optimizer_state(self, k: int) -> dict[str, Any]:
        full = self.optimizer.state_dict()
        state = {}
        for i, s in full["state"].items():
            state[i] = {key: (v[k:k + 1].clone() if torch.is_tensor(v) and v.ndim > 0 else
                              (v.clone() if torch.is_tensor(v) else v)) for key, v in s.items()}
        return {"state": state, "param_groups": [dict(g) for g in full["param_groups"]]}

    def load_member_optimizer_state(self, k: int, member: dict[str, Any]) -> None:
        params = list(self.stack.parameters())
        for i, s in member.get("state", {}).items():
            p = params[int(i)]
            cur = self.optimizer.state.setdefault(p, {})
            for key, v in s.items():
                if torch.is_tensor(v) and v.ndim > 0:
                    if key not in cur:
                        cur[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    cur[key][k:k + 1].copy_(v)
                elif key == "step":
                    if self._step_loaded and "step" in cur and float(cur["step"]) != float(v):
                        raise ValueError(f"vectorised runs must be at the same optimiser step, "
                                         f"got {float(cur['step'])} and {float(v)}")
                    cur[key] = v.clone() if torch.is_tensor(v) else torch.tensor(float(v))
                else:
                    cur[key] = v
        self._step_loaded = True
