"""DoRA (weight-decomposed low-rank adaptation) on open_clip transformers.

DoRA (Liu et al. 2024) writes an adapted weight as a magnitude times a unit direction::

    V  = W0 + s * B @ A                     (out, in)
    W' = m[:, None] * V / ||V||_row         ||V||_row[o] = sqrt(sum_i V[o, i]^2)

with ``W0`` the frozen pretrained weight of shape (out_features, in_features), ``A`` (r, in)
and ``B`` (out, r) the low-rank factors, ``s = alpha / r`` the scaling and ``m`` (out,)
the magnitude. The norm runs over the **input axis** (``dim=1`` of the PyTorch (out, in)
layout): one magnitude per output unit, the norm of that unit's incoming weight vector.
This is the DoRA paper's column norm written for PyTorch's layout, and what peft and the
CLIP-HBA authors compute. ``m`` starts at ``||W0||_row`` and ``B`` at zero, so at
initialisation ``W' == W0`` exactly and the adapted model equals the base model.

Two kinds of layer carry adapters:

- ``attn_out``: the attention output projection. open_clip 3.3 uses
  ``nn.MultiheadAttention``, which passes ``out_proj.weight`` and ``out_proj.bias`` to
  ``F.multi_head_attention_forward`` and never calls ``out_proj.forward``; a peft adapter
  there is silently bypassed. :class:`DoRAProjection` replaces ``out_proj`` and presents
  the adapted weight as a computed ``weight`` property, so the attention uses it.
- ``mlp``: the MLP linears ``mlp.c_fc`` and ``mlp.c_proj``, plain ``nn.Linear`` layers,
  adapted with peft's DoRA (``LoraConfig(use_dora=True)``). peft detaches the norm in the
  backward pass (DoRA paper, section 4.3) and applies dropout to the layer input of the
  low-rank branch.

``placement="both"`` adapts both. Dropout differs by construction: a weight property cannot
see the layer input, so :class:`DoRAProjection` applies dropout element-wise to the
low-rank update ``s * B @ A`` in training mode (what the CLIP-HBA authors' ``forward``
intended; their attention path never ran it). With ``B = 0`` neither kind of dropout
changes the output at initialisation.

Only the adapters train: :func:`apply_dora` freezes every other parameter of the model.
A checkpoint holds the adapters only (:func:`adapter_state_dict`); the frozen weights come
from the base checkpoint. (The adapted model's full ``state_dict`` names the attention
projection's weight ``out_proj.base_weight`` and peft's ``base_layer.weight``, so it is not
an open_clip checkpoint.)
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raybrain.errors import SpecError

__all__ = ["PLACEMENTS", "AdapterInfo", "DoRAProjection", "adapter_parameters",
           "adapter_state_dict", "adapter_switches", "adapters_disabled", "apply_dora",
           "dora_weight", "load_adapter_state_dict"]

PLACEMENTS: tuple[str, ...] = ("attn_out", "mlp", "both")
"""Where adapters go in each adapted block: attention output projection, MLP, or both."""

#: names of the adapter parameters of a :class:`DoRAProjection`
_OWN_ADAPTER_NAMES = ("dora_magnitude", "dora_A", "dora_B")


class DoRAProjection(nn.Module):
    """DoRA on a linear layer whose owner reads ``weight``/``bias`` directly.

    Parameters
    ----------
    base : nn.Linear
        The layer to adapt (e.g. ``attn.out_proj``); its weight (out, in) and bias (out,)
        are copied into frozen parameters ``base_weight`` and ``bias``.
    rank : int
        ``r``, 1 <= r <= min(in_features, out_features).
    alpha : float
        Scaling numerator: the update is ``(alpha / r) * B @ A``.
    dropout : float
        Element-wise dropout on the update ``s * B @ A`` in training mode, 0 <= p < 1.

    Attributes
    ----------
    dora_magnitude : nn.Parameter, shape (out,)
        ``m``, initialised to the row norms of ``W0``.
    dora_A : nn.Parameter, shape (r, in)
        Kaiming-uniform initialised (``a = sqrt(5)``, as ``nn.Linear`` and peft).
    dora_B : nn.Parameter, shape (out, r)
        Zero initialised.
    weight : torch.Tensor, shape (out, in)
        The adapted weight ``W'`` (a computed property, differentiable in the adapters).
    enabled : bool
        When False, ``weight`` is the frozen ``W0`` (the untouched backbone).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        out_f, in_f = base.weight.shape
        _check_rank(rank, in_f, out_f, "attention output projection")
        if not 0.0 <= dropout < 1.0:
            raise SpecError(f"DoRA dropout must be in [0, 1), got {dropout!r}")
        if not alpha > 0:
            raise SpecError(f"DoRA alpha must be > 0, got {alpha!r}")
        self.in_features, self.out_features = in_f, out_f
        self.rank, self.alpha, self.scaling = int(rank), float(alpha), float(alpha) / rank
        self.dropout = float(dropout)
        self.enabled = True
        w0 = base.weight.detach().clone()
        self.base_weight = nn.Parameter(w0, requires_grad=False)
        self.bias = (None if base.bias is None
                     else nn.Parameter(base.bias.detach().clone(), requires_grad=False))
        self.dora_magnitude = nn.Parameter(_row_norm(w0))
        self.dora_A = nn.Parameter(torch.empty(rank, in_f, dtype=w0.dtype, device=w0.device))
        nn.init.kaiming_uniform_(self.dora_A, a=math.sqrt(5))
        self.dora_B = nn.Parameter(torch.zeros(out_f, rank, dtype=w0.dtype, device=w0.device))

    @property
    def weight(self) -> torch.Tensor:
        """The adapted weight, shape (out_features, in_features)."""
        if not self.enabled:
            return self.base_weight
        return dora_weight(self.base_weight, self.dora_magnitude, self.dora_A, self.dora_B,
                           self.scaling, self.dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W'^T + b`` for callers that do call the layer; x (..., in) -> (..., out)."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}")


def dora_weight(w0: torch.Tensor, magnitude: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """The DoRA weight ``m[:, None] * V / ||V||_row`` with ``V = W0 + drop(s * B @ A)``.

    Parameters
    ----------
    w0 : torch.Tensor, shape (out, in)
    magnitude : torch.Tensor, shape (out,)
    a : torch.Tensor, shape (r, in)
    b : torch.Tensor, shape (out, r)
    scaling : float
        ``s = alpha / r``.
    dropout : float
        Element-wise dropout probability on the update (0: none).

    Returns
    -------
    torch.Tensor, shape (out, in)
    """
    delta = scaling * (b @ a)
    if dropout > 0:
        delta = F.dropout(delta, dropout, training=True)
    v = w0 + delta
    # (m / ||V||) * V: at initialisation m and ||V|| are the same floats, so W' == W0
    return (magnitude / _row_norm(v))[:, None] * v


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    """Norm of each output row over the input axis: (out, in) -> (out,)."""
    return torch.linalg.vector_norm(w, dim=1).clamp_min(torch.finfo(w.dtype).tiny)


def _check_rank(rank, in_f: int, out_f: int, what: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SpecError(f"DoRA rank must be a positive integer, got {rank!r}")
    if rank > min(in_f, out_f):
        raise SpecError(f"DoRA rank must be <= the layer width ({min(in_f, out_f)} for the "
                        f"{what}, {out_f} x {in_f}), got {rank}")


@dataclass(frozen=True)
class AdapterInfo:
    """What :func:`apply_dora` adapted.

    Attributes
    ----------
    modules : tuple of str
        Names (in the open_clip model) of the adapted layers.
    n_parameters : int
        Number of trainable adapter parameters.
    placement, rank, text_rank, alpha, dropout, n_vision, n_text
        The settings used (``text_rank``: the rank of the text-tower adapters).
    """

    modules: tuple[str, ...]
    n_parameters: int
    placement: str
    rank: int
    text_rank: int
    alpha: float
    dropout: float
    n_vision: int
    n_text: int


def _towers(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """The residual block lists of the vision and text towers, with their name prefixes."""
    try:
        vis = model.visual.transformer.resblocks
        txt = model.transformer.resblocks
    except AttributeError:
        raise SpecError(f"DoRA needs an open_clip CLIP with a ViT image tower and a transformer "
                        f"text tower, got {type(model).__name__}") from None
    return {"vision": ("visual.transformer.resblocks", vis), "text": ("transformer.resblocks", txt)}


def apply_dora(model: nn.Module, *, placement: str = "attn_out", n_vision: int = 2,
               n_text: int = 1, rank: int = 32, alpha: float = 16.0,
               dropout: float = 0.0, text_rank: int | None = None) -> AdapterInfo:
    """Put DoRA adapters on the last blocks of an open_clip CLIP and freeze the rest.

    Paper settings: behaviour ``rank=32, n_vision=2, n_text=1``; MEG (group)
    ``rank=32, n_vision=<all>, n_text=0``; ``dropout=0.1`` in both.

    Parameters
    ----------
    model : open_clip.CLIP
        Modified in place.
    placement : {"attn_out", "mlp", "both"}
        Layers adapted in each chosen block: the attention output projection
        (:class:`DoRAProjection`), the MLP linears ``c_fc`` and ``c_proj`` (peft DoRA), or
        all three.
    n_vision, n_text : int
        Number of last blocks adapted in the vision and text towers (0 for none).
    rank : int
        DoRA rank ``r``; at most the smallest width of an adapted layer.
    text_rank : int or None
        Rank of the text-tower adapters (None: ``rank``). CLIP-HBA's individual MEG models
        use vision rank 6 with the behaviour model's rank-32 text adapters.
    alpha : float
        Scaling ``s = alpha / r`` (16 in the CLIP-HBA code).
    dropout : float
        Adapter dropout (see the module docstring for how it differs per placement).

    Returns
    -------
    AdapterInfo

    Raises
    ------
    SpecError
        Unknown placement, block counts outside ``[0, n_blocks]``, no block chosen, a rank
        above the width of an adapted layer, or a model that already has adapters.
    """
    if placement not in PLACEMENTS:
        raise SpecError(f"DoRA placement must be one of {PLACEMENTS}, got {placement!r}")
    if not 0.0 <= dropout < 1.0:
        raise SpecError(f"DoRA dropout must be in [0, 1), got {dropout!r}")
    if adapter_parameters(model):
        raise SpecError("this model already carries DoRA adapters; build a fresh model to "
                        "apply them again")
    text_rank = rank if text_rank is None else text_rank
    towers = _towers(model)
    chosen: list[tuple[str, nn.Module, int]] = []  # (name, block, rank)
    for tower, n, r in (("vision", n_vision, rank), ("text", n_text, text_rank)):
        prefix, blocks = towers[tower]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(blocks):
            raise SpecError(f"number of adapted {tower} blocks must be an integer in "
                            f"[0, {len(blocks)}], got {n!r}")
        first = len(blocks) - n
        chosen += [(f"{prefix}.{i}", blocks[i], r) for i in range(first, len(blocks))]
    if not chosen:
        raise SpecError("DoRA needs at least one adapted block; got n_vision=0 and n_text=0")

    # check every rank before changing anything
    for name, block, r in chosen:
        if placement in ("attn_out", "both"):
            w = block.attn.out_proj.weight
            _check_rank(r, w.shape[1], w.shape[0], f"attention output projection of {name}")
        if placement in ("mlp", "both"):
            for lin in ("c_fc", "c_proj"):
                w = getattr(block.mlp, lin).weight
                _check_rank(r, w.shape[1], w.shape[0], f"mlp.{lin} of {name}")

    adapted: list[str] = []
    if placement in ("mlp", "both"):
        from peft import LoraConfig, inject_adapter_in_model

        targets = [f"{name}.mlp.{lin}" for name, _, _ in chosen for lin in ("c_fc", "c_proj")]
        # a regex full match: peft's list form matches by suffix, and the text tower's
        # "transformer.resblocks.1.mlp.c_fc" is a suffix of the vision tower's name
        pattern = "|".join(re.escape(t) for t in targets)
        # text layers take r = text_rank; vision layers (names starting "visual.", which no
        # text layer name can match) take rank through rank_pattern
        vision = [re.escape(t) for t in targets if t.startswith("visual.")]
        rank_pattern = {"|".join(vision): rank} if vision and rank != text_rank else {}
        config = LoraConfig(r=text_rank if n_text else rank, lora_alpha=alpha,
                            lora_dropout=dropout, use_dora=True, rank_pattern=rank_pattern,
                            target_modules=f"(?:{pattern})", bias="none")
        inject_adapter_in_model(config, model)
        adapted += targets
    if placement in ("attn_out", "both"):
        for name, block, r in chosen:
            block.attn.out_proj = DoRAProjection(block.attn.out_proj, r, alpha, dropout)
            adapted.append(f"{name}.attn.out_proj")

    params = adapter_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    n_peft = sum(1 for _, m in model.named_modules() if _is_peft_layer(m))
    n_own = sum(1 for _, m in model.named_modules() if isinstance(m, DoRAProjection))
    if n_peft + n_own != len(adapted):  # pragma: no cover - guards a peft behaviour change
        raise RuntimeError(f"expected {len(adapted)} adapted layers, found {n_peft + n_own}")
    return AdapterInfo(tuple(sorted(adapted)), sum(p.numel() for p in params.values()),
                       placement, rank, text_rank, float(alpha), float(dropout), n_vision,
                       n_text)


def _is_peft_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(
        module, "lora_magnitude_vector")


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The DoRA adapter parameters of ``model`` by name (own and peft layers).

    Parameters
    ----------
    model : nn.Module
        An adapted open_clip model, or any module containing one (names carry its prefix).

    Returns
    -------
    dict of str to nn.Parameter
        Magnitudes (out,), ``A`` factors (r, in) and ``B`` factors (out, r), in module order.
    """
    out: dict[str, nn.Parameter] = {}
    for mname, module in model.named_modules():
        pre = f"{mname}." if mname else ""
        if isinstance(module, DoRAProjection):
            for n in _OWN_ADAPTER_NAMES:
                out[pre + n] = getattr(module, n)
        elif _is_peft_layer(module):
            for n, p in module.named_parameters():
                if n.startswith(("lora_A.", "lora_B.", "lora_magnitude_vector.")):
                    out[pre + n] = p
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter-only state dict: what an adapter checkpoint holds.

    Returns
    -------
    dict of str to torch.Tensor
        Detached copies of :func:`adapter_parameters` (on the CPU).
    """
    return {n: p.detach().cpu().clone() for n, p in adapter_parameters(model).items()}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *,
                            strict: bool = True) -> list[str]:
    """Copy adapter tensors into an adapted model.

    Parameters
    ----------
    model : nn.Module
        Adapted the same way as the model the state came from.
    state : dict of str to torch.Tensor
        From :func:`adapter_state_dict`.
    strict : bool
        True: the keys must match exactly. False: keys the model lacks are skipped and
        adapters the state lacks keep their values (e.g. a behaviour checkpoint's text
        adapters loaded into an MEG model).

    Returns
    -------
    list of str
        The keys loaded.

    Raises
    ------
    SpecError
        Missing or unexpected keys (strict), or a tensor whose shape differs.
    """
    params = adapter_parameters(model)
    missing = [k for k in params if k not in state]
    unexpected = [k for k in state if k not in params]
    if strict and (missing or unexpected):
        what = (f"missing {len(missing)} key(s), first {missing[0]!r}" if missing
                else f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
        raise SpecError(f"adapter checkpoint does not fit the model's adapters: {what}; "
                        f"expected the keys of a model adapted with the same placement and "
                        f"blocks")
    loaded = []
    with torch.no_grad():
        for k, p in params.items():
            if k not in state:
                continue
            t = torch.as_tensor(state[k])
            if tuple(t.shape) != tuple(p.shape):
                raise SpecError(f"adapter checkpoint key {k!r} has shape {tuple(t.shape)}, the "
                                f"model's has {tuple(p.shape)}; expected the same rank and widths")
            p.copy_(t.to(dtype=p.dtype, device=p.device))
            loaded.append(k)
    return loaded


def adapter_switches(module: nn.Module) -> tuple[bool, ...]:
    """On/off state of every adapter layer under ``module`` (part of cache keys)."""
    return tuple(m.enabled if isinstance(m, DoRAProjection) else not m.disable_adapters
                 for _, m in module.named_modules()
                 if isinstance(m, DoRAProjection) or _is_peft_layer(m))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every adapter of ``model`` is off: the untouched backbone.

    Own layers use their frozen ``W0``; peft layers skip their adapter branch. The adapters
    keep their values and are switched back on at exit (also after an exception).
    """
    own = [m for _, m in model.named_modules() if isinstance(m, DoRAProjection)]
    peft_layers = [m for _, m in model.named_modules() if _is_peft_layer(m)]
    own_state = [m.enabled for m in own]
    peft_state = [not m.disable_adapters for m in peft_layers]
    # peft's enable_adapters also switches requires_grad; keep the caller's choice
    grads = {p: p.requires_grad for m in peft_layers for p in m.parameters()}
    try:
        for m in own:
            m.enabled = False
        for m in peft_layers:
            m.enable_adapters(False)
        yield model
    finally:
        for m, s in zip(own, own_state):
            m.enabled = s
        for m, s in zip(peft_layers, peft_state):
            m.enable_adapters(s)
        for p, g in grads.items():
            p.requires_grad_(g)
