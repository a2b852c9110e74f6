"""The recurrent network of the B2M memory task, as one model or a stack of independent ones.

Layout (B2M paper, section 4.2): a one-layer GRU over the one-hot input sequence, dropout,
a linear projection to a small embedding (the layer aligned with the brain), and a linear
output head squashed by a scaled sigmoid into [-bound, bound].

:class:`MemoryGRUStack` holds ``n_models`` such networks with their weights stacked on a
leading axis and runs them together (batched matrix products), so the seed replicates of a
config train as one batch of models. :class:`MemoryGRU` is the stack of one. Both compute
the GRU with the same operations, so model ``k`` of a stack gives the numbers (to floating-point rounding: batched products may round differently for one
model and for several): the recurrence follows ``torch.nn.GRU``'s equations (gates r, z, n; PyTorch
weight layout ``(3 * hidden, input)`` in the order r, z, n)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import math

import torch
from torch import nn


def scaled_sigmoid(x: torch.Tensor, bound: float = 1.5) -> torch.Tensor:
    """Map reals to ``(-bound, bound)``: ``2 * bound * sigmoid(x) - bound``."""
    return 2.0 * bound * torch.sigmoid(x) - bound


def gru_stack(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
              b_hh: torch.Tensor) -> torch.Tensor:
    """Run ``S`` independent one-layer GRUs over their own input sequences.

    Parameters
    ----------
    x : Tensor, shape (S, batch, time, input)
    w_ih : Tensor, shape (S, 3 * hidden, input)
    w_hh : Tensor, shape (S, 3 * hidden, hidden)
    b_ih, b_hh : Tensor, shape (S, 3 * hidden)

    Returns
    -------
    Tensor, shape (S, batch, time, hidden)
        The hidden state after every time step (initial state zero).
    """
    s, b, t, i = x.shape
    hidden = w_hh.shape[-1]
    gi = torch.baddbmm(b_ih[:, None, :], x.reshape(s, b * t, i), w_ih.transpose(1, 2))
    steps = gi.reshape(s, b, t, 3 * hidden).unbind(2)  # one backward stack, not T slices
    whh, bhh = w_hh.transpose(1, 2), b_hh[:, None, :]
    h = x.new_zeros(s, b, hidden)
    out = []
    for g in steps:
        gh = torch.baddbmm(bhh, h, whh)
        g_rz, g_n = g.split([2 * hidden, hidden], -1)
        h_rz, h_n = gh.split([2 * hidden, hidden], -1)
        r, z = torch.sigmoid(g_rz + h_rz).chunk(2, -1)
        n = torch.tanh(torch.addcmul(g_n, r, h_n))
        h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out, 2)


class MemoryGRUStack(nn.Module):
    """``n_models`` independent memory networks trained together.

    Parameters
    ----------
    n_models : int
        How many networks (seed replicates) the stack holds.
    input_size, hidden, embed_dim, dropout, bound :
        As :class:`MemoryGRU`.

    Initialisation follows ``torch.nn.GRU`` and ``torch.nn.Linear`` (uniform in
    ``+-1/sqrt(fan)``), model by model in stack order, so drawing a stack of one under
    ``torch.manual_seed(k)`` gives seed ``k``'s network.
    """

    def __init__(self, n_models: int = 1, input_size: int = 4, hidden: int = 512,
                 embed_dim: int = 7, dropout: float = 0.3, bound: float = 1.5):
        super().__init__()
        self.n_models, self.hidden, self.bound = int(n_models), int(hidden), float(bound)
        self.dropout = float(dropout)
        shapes = {"w_ih": (3 * hidden, input_size), "w_hh": (3 * hidden, hidden),
                  "b_ih": (3 * hidden,), "b_hh": (3 * hidden,),
                  "w_embed": (embed_dim, hidden), "b_embed": (embed_dim,),
                  "w_head": (1, embed_dim), "b_head": (1,)}
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(self.n_models, *shape)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Uniform ``+-1/sqrt(fan)`` per tensor, model by model."""
        gru_bound = 1.0 / math.sqrt(self.hidden)
        embed_dim = self.w_embed.shape[1]
        for k in range(self.n_models):
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                getattr(self, name)[k].uniform_(-gru_bound, gru_bound)
            for w, b, fan in ((self.w_embed, self.b_embed, self.hidden),
                              (self.w_head, self.b_head, embed_dim)):
                lim = 1.0 / math.sqrt(fan)
                w[k].uniform_(-lim, lim)
                b[k].uniform_(-lim, lim)

    def forward(self, x: torch.Tensor, dropout_masks: torch.Tensor | None = None):
        """Run every model on its own batch.

        Parameters
        ----------
        x : Tensor, shape (S, batch, time, input_size)
        dropout_masks : Tensor, shape (S, batch, time, hidden), optional
            Multipliers applied to the GRU output in training (0 or ``1 / (1 - p)``), drawn
            by the caller from each model's own random stream (see :meth:`draw_mask`).
            None: no dropout (evaluation).

        Returns
        -------
        output : Tensor, shape (S, batch, time)
        embedding : Tensor, shape (S, batch, time, embed_dim)
        """
        return self._run(x, range(self.n_models), dropout_masks)

    def member_forward(self, k: int, x: torch.Tensor):
        """Model ``k`` alone on ``x`` (batch, time, input): ``(output (batch, time),
        embedding (batch, time, embed_dim))``, computed as a stack of one would."""
        out, emb = self._run(x[None], [k], None)
        return out[0], emb[0]

    def _run(self, x: torch.Tensor, members, dropout_masks):
        sel = list(members)
        one = len(sel) == 1 and self.n_models > 1
        pick = (lambda p: p[sel[0]:sel[0] + 1]) if one else (lambda p: p)  # noqa: E731
        if torch.is_grad_enabled() or self.training:
            h = gru_stack(x, pick(self.w_ih), pick(self.w_hh), pick(self.b_ih), pick(self.b_hh))
        else:  # evaluation: PyTorch's fused GRU, model by model (compute-bound, faster)
            h = torch.stack([self._fused(k)(x[i])[0] for i, k in enumerate(sel)])
        if dropout_masks is not None:
            h = h * dropout_masks
        s, b, t, _ = h.shape
        emb = torch.baddbmm(pick(self.b_embed)[:, None, :], h.reshape(s, b * t, self.hidden),
                            pick(self.w_embed).transpose(1, 2))
        # a product with one output column as an element-wise product and a sum: batched
        # matrix-vector products take different paths for one model and for several
        out = (emb * pick(self.w_head)[:, :, None, :].squeeze(1)).sum(-1) + pick(self.b_head)
        out = scaled_sigmoid(out.reshape(s, b, t), self.bound)
        return out, emb.reshape(s, b, t, -1)

    def _fused(self, k: int) -> nn.GRU:
        """A ``torch.nn.GRU`` holding model ``k``'s GRU weights (for evaluation)."""
        if not hasattr(self, "_fused_cache"):
            object.__setattr__(self, "_fused_cache", {})
        gru = self._fused_cache.get(k)
        if gru is None:
            gru = nn.GRU(self.w_ih.shape[-1], self.hidden, batch_first=True).to(self.w_ih.device)
            gru.requires_grad_(False)
            self._fused_cache[k] = gru
        with torch.no_grad():
            for name, src in (("weight_ih_l0", self.w_ih), ("weight_hh_l0", self.w_hh),
                              ("bias_ih_l0", self.b_ih), ("bias_hh_l0", self.b_hh)):
                getattr(gru, name).copy_(src[k])
        return gru

    def draw_mask(self, batch: int, time: int, device=None) -> torch.Tensor:
        """A dropout mask (batch, time, hidden) from the current global random stream."""
        ones = torch.ones(batch, time, self.hidden, device=device)
        return nn.functional.dropout(ones, self.dropout, training=True)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Model ``k``'s weights as the state of a :class:`MemoryGRU` (a stack of one)."""
        return {name: p.detach()[k:k + 1].clone() for name, p in self.named_parameters()}

    @torch.no_grad()
    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        for name, p in self.named_parameters():
            p[k:k + 1].copy_(state[name])


class MemoryGRU(MemoryGRUStack):
    """GRU -> dropout -> linear embedding -> linear output -> scaled sigmoid (one model).

    Parameters
    ----------
    input_size : int
        Size of the one-hot input (4: three stimuli and "no stimulus").
    hidden : int
        GRU hidden size (512 in the paper).
    embed_dim : int
        Size of the embedding aligned with the brain (7 in the paper).
    dropout : float
        Dropout rate applied to the GRU output (0.3 in the paper).
    bound : float
        Output range is ``(-bound, bound)`` (1.5 in the paper).
    """

    def __init__(self, input_size: int = 4, hidden: int = 512, embed_dim: int = 7,
                 dropout: float = 0.3, bound: float = 1.5):
        super().__init__(1, input_size, hidden, embed_dim, dropout, bound)

    def forward(self, x: torch.Tensor, dropout_mask: torch.Tensor | None = None):
        """Run a batch of sequences.

        Parameters
        ----------
        x : Tensor, shape (batch, time, input_size)
        dropout_mask : Tensor, shape (batch, time, hidden), optional
            In training, None draws one from the global random stream.

        Returns
        -------
        output : Tensor, shape (batch, time)
            Response in ``(-bound, bound)`` at every time bin.
        embedding : Tensor, shape (batch, time, embed_dim)
            The representation aligned with the brain.
        """
        if self.training and dropout_mask is None and self.dropout > 0:
            dropout_mask = self.draw_mask(x.shape[0], x.shape[1], x.device)
        masks = None if not self.training or dropout_mask is None else dropout_mask[None]
        out, emb = super().forward(x[None], masks)
        return out[0], emb[0]
