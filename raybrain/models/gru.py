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
from torch.autograd.function import once_differentiable


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

    With gradients on, the backward pass is written out (:class:`_GRUStack`): a step of
    backpropagation through time is four tensor operations instead of the backward of
    each of the dozen operations (and views) a forward step records, and the weight
    gradients of all time steps are one batched product at the end. On CPU, where a small
    model's time loop is bound by per-operation cost, this halves a training step.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w_ih, w_hh, b_ih, b_hh)):
        return _GRUStack.apply(x, w_ih, w_hh, b_ih, b_hh)
    return _gru_forward(x, w_ih, w_hh, b_ih, b_hh, keep=False)[0]


def _gru_forward(x, w_ih, w_hh, b_ih, b_hh, keep: bool):
    """The recurrence, time-major inside (every step's tensors are contiguous blocks).

    Returns the hidden states (S, B, T, H) and, with ``keep``, what backward needs: the
    hidden states, the gates ``r, z`` (T, S, B, 2H), ``n`` (T, S, B, H) and the recurrent
    pre-activations ``W_hh h + b_hh`` (T, S, B, 3H), all time-major.
    """
    s, b, t, i = x.shape
    hidden = w_hh.shape[-1]
    # (T, S, B, 3H): the input pre-activations of every step, one product for all steps
    gi = torch.baddbmm(b_ih[:, None, :], x.transpose(1, 2).reshape(s, t * b, i),
                       w_ih.transpose(1, 2)).reshape(s, t, b, 3 * hidden).transpose(0, 1)
    gi = gi.contiguous()
    whh = w_hh.transpose(1, 2).contiguous()  # a contiguous right operand: a faster bmm
    bhh = b_hh[:, None, :]
    hs = x.new_empty(t, s, b, hidden)
    gh = x.new_empty(t, s, b, 3 * hidden) if keep else x.new_empty(1, s, b, 3 * hidden)
    rz = x.new_empty(t, s, b, 2 * hidden) if keep else x.new_empty(1, s, b, 2 * hidden)
    ns = x.new_empty(t, s, b, hidden) if keep else x.new_empty(1, s, b, hidden)
    h = x.new_zeros(s, b, hidden)
    for step in range(t):
        j = step if keep else 0
        g_rz, g_n = gi[step].split([2 * hidden, hidden], -1)
        torch.baddbmm(bhh, h, whh, out=gh[j])
        h_rz, h_n = gh[j].split([2 * hidden, hidden], -1)
        torch.sigmoid(torch.add(g_rz, h_rz, out=rz[j]), out=rz[j])
        r, z = rz[j].split([hidden, hidden], -1)
        torch.tanh(torch.addcmul(g_n, r, h_n, out=ns[j]), out=ns[j])
        h = torch.lerp(ns[j], h, z, out=hs[step])  # (1 - z) * n + z * h
    out = hs.permute(1, 2, 0, 3)
    return out, ((hs, rz, ns, gh) if keep else None)


class _GRUStack(torch.autograd.Function):
    """:func:`gru_stack` with its backward pass written out (see there).

    With ``h' = n + z (h - n)``, ``n = tanh(a)``, ``a = gi_n + r * gh_n`` and the sigmoid
    gates ``r``, ``z``, the gradient reaching a step's pre-activations is the incoming
    ``dh'`` times coefficients known after the forward pass::

        d a_n   = dh' * (1 - z)(1 - n^2)                 (= dh' * A)
        d pre_z = dh' * (h - n) z (1 - z)
        d pre_r = dh' * A * gh_n * r (1 - r)
        d gh_n  = dh' * A * r
        dh      = dh' * z + [d pre_r, d pre_z, d gh_n] @ W_hh

    so the coefficients are computed for all steps at once and the loop over time only
    carries ``dh``. Weight and bias gradients sum over steps in single batched products.
    """

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        out, (hs, rz, n, gh) = _gru_forward(x, w_ih, w_hh, b_ih, b_hh, keep=True)
        ctx.save_for_backward(x, w_ih, w_hh, hs, rz, n, gh)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        x, w_ih, w_hh, hs, rz, n, gh = ctx.saved_tensors
        s, b, t, i = x.shape
        hidden = w_hh.shape[-1]
        r, z = rz.split([hidden, hidden], -1)
        h_prev = torch.cat([hs.new_zeros(1, s, b, hidden), hs[:-1]], 0)   # (T, S, B, H)
        a = (1 - z) * (1 - n * n)
        c_gh = torch.stack([a * gh[..., 2 * hidden:] * r * (1 - r),
                            (h_prev - n) * z * (1 - z), a * r], 3)      # (T, S, B, 3, H)
        d_out = d_out.permute(2, 0, 1, 3).contiguous()                   # (T, S, B, H)
        d_gh = torch.empty_like(gh)                                       # (T, S, B, 3H)
        dh_all = torch.empty_like(hs)
        dh = hs.new_zeros(s, b, hidden)
        for step in range(t - 1, -1, -1):
            dh = torch.add(dh, d_out[step], out=dh_all[step])
            torch.mul(dh[:, :, None, :], c_gh[step], out=d_gh[step].view(s, b, 3, hidden))
            dh = torch.baddbmm(dh * z[step], d_gh[step], w_hh)
        d_gi = d_gh.clone()
        d_gi[..., 2 * hidden:] = dh_all * a
        # per model: (S, T * B, .) rows
        d_gh = d_gh.transpose(0, 1).reshape(s, t * b, 3 * hidden)
        d_gi = d_gi.transpose(0, 1).reshape(s, t * b, 3 * hidden)
        grads = [None] * 5
        if ctx.needs_input_grad[0]:
            grads[0] = torch.bmm(d_gi, w_ih).reshape(s, t, b, i).transpose(1, 2)
        if ctx.needs_input_grad[1]:
            grads[1] = torch.bmm(d_gi.transpose(1, 2), x.transpose(1, 2).reshape(s, t * b, i))
        if ctx.needs_input_grad[2]:
            grads[2] = torch.bmm(d_gh.transpose(1, 2),
                                 h_prev.transpose(0, 1).reshape(s, t * b, hidden))
        if ctx.needs_input_grad[3]:
            grads[3] = d_gi.sum(1)
        if ctx.needs_input_grad[4]:
            grads[4] = d_gh.sum(1)
        return tuple(grads)


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
