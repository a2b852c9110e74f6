"""CLIP-HBA-MEG: time-resolved embeddings and RDMs from reweighted vision-tower layers.

For an image batch the model computes, for every output time point t (paper section 4.3.4):

1. per-layer CLS features: the CLS token after each of the L vision blocks
   (``visual.forward_intermediates(..., output_fmt='NLC', output_extra_tokens=True)``,
   ``image_intermediates_prefix``), passed through ``ln_post`` and projected with
   ``visual.proj`` to the joint space: ``F`` of shape (L, B, E). For the last block this is
   exactly CLIP's image embedding;
2. layer weights ``w_t`` (L,): the rows of the feature-reweighting matrix ``W`` (T x L,
   initialised to the last layer) averaged over the window ``[t - h, t + h]`` (clipped at
   the ends of the time axis), then made non-negative and summing to 1 (below);
3. ``img_t = alpha_t * normalise(sum_l w_t[l] F[l])`` with ``alpha_t`` the visual scaler
   averaged over the same window (0 before stimulus onset);
4. ``raw_t = relu(exp(logit_scale) * img_t @ txt^T)`` against the unit-norm label text
   embeddings (B, 66);
5. ``e_t = relu(beta_t * (raw_t + eps * sd_t * nu_t))``, ``beta_t`` the binding strength
   averaged over the window, ``eps ~ N(0, 1)`` of shape (B, 66), ``sd_t`` (66,) the batch
   standard deviation of ``raw_t`` per dimension (detached: the noise is a perturbation,
   not something to optimise), and ``nu_t`` the noise level at t; **training mode only**
   (the CLIP-HBA code also adds it at evaluation, which makes validation metrics random);
6. ``rdm_t = 1 - Pearson(e_t)`` (B, B) (:func:`raybrain.align.temporal.pearson_rdm`).

Row normalisation of ``W``: ``w = max(w, 0); w / sum(w)``, with the gradient of
``max(w, 0)`` taken as 1 at ``w = 0`` (``torch.where(w >= 0, w, 0)``; clamp and relu give 0
there, which would pin the zero entries of the one-hot initial rows for ever). On a row
already on the simplex this is the identity, and its gradient reaches every entry including
the zeros. (The CLIP-HBA code min-max scales each row, then divides by the sum, then applies
a relu: its smallest entry always gets weight 0, so one layer can never be used.) After each
optimiser step call :meth:`CLIPHBAMEG.project_reweighting_`, which projects every row of
``W`` onto the simplex (Euclidean projection, Duchi et al. 2008), so the parameter itself
stays non-negative and sums to 1.

Note: a Pearson RDM is unchanged by a positive per-time scale of all embeddings, so
``alpha_t`` and ``beta_t`` shape the embeddings (``e_t``, RISE maps) but change the RDMs only
where they are 0 (every embedding 0: a constant RDM of ones) and through the noise. The
noise level, relative to the embeddings' spread, does change the RDMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raybrain.errors import SpecError
from raybrain.models.clip import LabelText, build_clip, n_blocks, tokenize_labels
from raybrain.models.dora import (
    AdapterInfo,
    adapter_parameters,
    adapter_state_dict,
    apply_dora,
    load_adapter_state_dict,
)

if TYPE_CHECKING:  # pragma: no cover
    import os
    from collections.abc import Sequence

__all__ = ["CLIPHBAMEG", "MEGOutput", "build_meg_model", "project_rows_to_simplex",
           "window_matrix"]


@dataclass
class MEGOutput:
    """Output of :class:`CLIPHBAMEG`.

    Attributes
    ----------
    embeddings : torch.Tensor, shape (T_out, B, n_labels)
        Predicted behavioural embeddings per time point (non-negative).
    rdms : torch.Tensor, shape (T_out, B, B)
        ``1 - Pearson r`` between the batch's embeddings per time point.
    """

    embeddings: torch.Tensor
    rdms: torch.Tensor


def window_matrix(n_times: int, time_index: np.ndarray, half_width: int) -> torch.Tensor:
    """Row-stochastic window-averaging matrix.

    Parameters
    ----------
    n_times : int
        Length T of the full time axis.
    time_index : np.ndarray of int, shape (T_out,)
        Centre of each window.
    half_width : int
        ``h``: rows ``[c - h, c + h]`` clipped to ``[0, T - 1]``.

    Returns
    -------
    torch.Tensor of float32, shape (T_out, T)
        Row ``i`` averages the rows of the window centred on ``time_index[i]``.
    """
    a = torch.zeros(len(time_index), n_times)
    for i, c in enumerate(np.asarray(time_index, dtype=np.int64)):
        lo, hi = max(0, c - half_width), min(n_times, c + half_width + 1)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


def project_rows_to_simplex(w: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al. 2008).

    Parameters
    ----------
    w : torch.Tensor, shape (R, L)

    Returns
    -------
    torch.Tensor, shape (R, L)
        Non-negative rows summing to 1; rows already on the simplex are unchanged.
    """
    u, _ = torch.sort(w, dim=1, descending=True)
    css = u.cumsum(dim=1) - 1.0
    k = torch.arange(1, w.shape[1] + 1, dtype=w.dtype, device=w.device)
    rho = ((u - css / k) > 0).sum(dim=1, keepdim=True)  # >= 1 always
    theta = css.gather(1, rho - 1) / rho.to(w.dtype)
    return (w - theta).clamp_min(0.0)


def _curve(x, n_times: int, name: str, default: float) -> torch.Tensor:
    if x is None:
        return torch.full((n_times,), float(default))
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.shape != (n_times,):
        raise SpecError(f"{name} must have one value per time point, shape ({n_times},), got "
                        f"shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise SpecError(f"{name} must be finite and >= 0, got min {np.nanmin(a)!r}")
    return torch.as_tensor(a, dtype=torch.float32)


class CLIPHBAMEG(nn.Module):
    """CLIP-HBA-MEG model (see the module docstring for the computation).

    Parameters
    ----------
    clip : open_clip.CLIP
        ViT image tower with token pooling; usually adapted with
        :func:`raybrain.models.dora.apply_dora`.
    tokens : torch.Tensor of int64, shape (n_labels, context_length)
        Label prompts (:func:`raybrain.models.clip.tokenize_labels`).
    n_times : int
        Length T of the target time axis (rows of the reweighting matrix).
    alpha, beta, noise_level : array_like of shape (T,) or None
        Visual scaler, binding strength and noise level per time point
        (:mod:`raybrain.data.meg_targets` computes them from target RDMs). None: 1, 1, 0.
    half_width : int
        Half-width ``h`` of the sliding window, in samples (CLIP-HBA: 15 ms at 5 ms -> 3).
    time_index : array_like of int, shape (T_out,), or None
        Time points predicted by default (None: all T).
    target_dim : int or None
        Checked against the number of labels.

    Attributes
    ----------
    reweighting : nn.Parameter, shape (T, L)
        The feature-reweighting matrix, initialised to one-hot on the last layer.
    """

    def __init__(self, clip: nn.Module, tokens: torch.Tensor, n_times: int, *, alpha=None,
                 beta=None, noise_level=None, half_width: int = 3, time_index=None,
                 target_dim: int | None = None):
        super().__init__()
        n_labels = int(tokens.shape[0])
        if target_dim is not None and n_labels != target_dim:
            raise SpecError(f"number of labels ({n_labels}) must equal the target dimension "
                            f"({target_dim}); expected one label per target column")
        if isinstance(n_times, bool) or not isinstance(n_times, int) or n_times < 1:
            raise SpecError(f"n_times must be a positive integer, got {n_times!r}")
        if isinstance(half_width, bool) or not isinstance(half_width, int) or half_width < 0:
            raise SpecError(f"window half-width must be an integer >= 0 (samples), got "
                            f"{half_width!r}")
        visual = clip.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(
                visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool",
                                                                  False):
            raise SpecError("CLIP-HBA-MEG needs a ViT image tower pooled on the CLS token "
                            "(open_clip pool_type 'tok', no attentional pooler)")
        self.clip = clip
        self.text = LabelText(clip, tokens)
        self.n_labels, self.n_times, self.half_width = n_labels, n_times, half_width
        self.n_layers = n_blocks(clip)[0]
        w = torch.zeros(n_times, self.n_layers)
        w[:, -1] = 1.0
        self.reweighting = nn.Parameter(w)
        self.register_buffer("alpha", _curve(alpha, n_times, "alpha (visual scaler)", 1.0))
        self.register_buffer("beta", _curve(beta, n_times, "beta (binding strength)", 1.0))
        self.register_buffer("noise_level", _curve(noise_level, n_times, "noise level", 0.0))
        self.time_index = self._check_index(time_index)

    def _check_index(self, time_index) -> np.ndarray:
        if time_index is None:
            return np.arange(self.n_times)
        idx = np.asarray(time_index)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < 0 or (
                idx.max() >= self.n_times):
            raise SpecError(f"time_index must be a non-empty 1-D array of integers in "
                            f"[0, {self.n_times}), got {idx.tolist()[:5]}")
        return idx.astype(np.int64)

    # -- pieces -----------------------------------------------------------------------
    def layer_features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-layer CLS features in the joint space, images (B, 3, H, W) -> (L, B, E)."""
        visual = self.clip.visual
        out = visual.forward_intermediates(images, output_fmt="NLC", output_extra_tokens=True,
                                           intermediates_only=True)
        cls = torch.stack([p[:, 0] for p in out["image_intermediates_prefix"]])  # (L, B, W)
        return visual.ln_post(cls) @ visual.proj

    def layer_weights(self, time_index=None) -> torch.Tensor:
        """Effective layer weights per output time point, shape (T_out, L), rows on the simplex."""
        idx = self.time_index if time_index is None else self._check_index(time_index)
        a = window_matrix(self.n_times, idx, self.half_width).to(self.reweighting)
        w = a @ self.reweighting
        # max(w, 0) whose gradient at 0 is 1 (clamp's and relu's are 0 there, which would
        # pin the zero entries of the one-hot initial rows)
        w = torch.where(w >= 0, w, torch.zeros_like(w))
        return w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)

    # -- forward ----------------------------------------------------------------------
    def forward(self, images: torch.Tensor, time_index=None,
                generator: torch.Generator | None = None) -> MEGOutput:
        """Time-resolved embeddings and RDMs of an image batch.

        Parameters
        ----------
        images : torch.Tensor, shape (B, 3, H, W)
        time_index : array_like of int, shape (T_out,), or None
            Time points to predict (default: those given at construction).
        generator : torch.Generator or None
            Source of the training noise (None: torch's global generator).

        Returns
        -------
        MEGOutput
            ``embeddings`` (T_out, B, n_labels), ``rdms`` (T_out, B, B).
        """
        idx = self.time_index if time_index is None else self._check_index(time_index)
        feats = self.layer_features(images)  # (L, B, E)
        a = window_matrix(self.n_times, idx, self.half_width).to(feats)
        w = self.layer_weights(idx).to(feats)  # (T_out, L)
        alpha = a @ self.alpha.to(feats)
        beta = a @ self.beta.to(feats)
        img = torch.einsum("tl,lbe->tbe", w, feats)
        img = img / img.norm(dim=-1, keepdim=True).clamp_min(1e-12) * alpha[:, None, None]
        raw = F.relu(self.clip.logit_scale.exp() * img @ self.text().T.to(feats))
        if self.training:
            level = self.noise_level.to(feats)[torch.as_tensor(idx, device=feats.device)]
            if bool((level > 0).any()):
                eps = torch.randn(raw.shape, generator=generator, dtype=raw.dtype,
                                  device=raw.device)
                sd = raw.detach().std(dim=1, keepdim=True) if raw.shape[1] > 1 else 0.0
                raw = raw + eps * sd * level[:, None, None]
        emb = F.relu(beta[:, None, None] * raw)
        from raybrain.align.temporal import pearson_rdm

        return MEGOutput(emb, pearson_rdm(emb))

    # -- training helpers -------------------------------------------------------------
    @torch.no_grad()
    def project_reweighting_(self) -> None:
        """Project every row of :attr:`reweighting` onto the simplex (call after each step)."""
        self.reweighting.copy_(project_rows_to_simplex(self.reweighting))

    def reweighting_parameters(self) -> list[nn.Parameter]:
        """``[reweighting]``, for an optimiser group of its own."""
        return [self.reweighting]

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The CLIP's DoRA parameters by name (``clip.``-prefixed)."""
        return adapter_parameters(self)

    def set_adapters_trainable(self, trainable: bool, *, magnitude: bool = True,
                               towers: Sequence[str] = ("vision",)) -> None:
        """Switch the adapters' ``requires_grad`` (stage 1: off; stage 2: on).

        Parameters
        ----------
        trainable : bool
        magnitude : bool
            Whether the DoRA magnitudes train too (the CLIP-HBA MEG code keeps them frozen).
        towers : sequence of {"vision", "text"}
            Which towers' adapters are switched; the others are frozen.
        """
        bad = set(towers) - {"vision", "text"}
        if bad:
            raise SpecError(f"towers must be 'vision' and/or 'text', got {sorted(bad)}")
        for name, p in self.adapter_parameters().items():
            tower = "vision" if name.startswith("clip.visual.") else "text"
            is_mag = "magnitude" in name
            p.requires_grad_(bool(trainable and tower in towers and (magnitude or not is_mag)))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: ``reweighting`` and every adapter tensor (CPU copies)."""
        state = {"reweighting": self.reweighting.detach().cpu().clone()}
        state.update(adapter_state_dict(self))
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict` (keys and shapes must match)."""
        if "reweighting" not in state:
            raise SpecError("MEG checkpoint has no 'reweighting' entry; expected the output of "
                            "trainable_state_dict()")
        w = torch.as_tensor(state["reweighting"])
        if tuple(w.shape) != tuple(self.reweighting.shape):
            raise SpecError(f"MEG checkpoint reweighting matrix has shape {tuple(w.shape)}, the "
                            f"model's is {tuple(self.reweighting.shape)} (time points x layers)")
        load_adapter_state_dict(self, {k: v for k, v in state.items() if k != "reweighting"})
        with torch.no_grad():
            self.reweighting.copy_(w)


def build_meg_model(model_name: str, labels: Sequence[str], n_times: int, *,
                    pretrained: str | os.PathLike | None = None, quick_gelu: bool = False,
                    placement: str = "attn_out", n_vision: int | None = None, n_text: int = 0,
                    rank: int = 32, text_rank: int | None = None, alpha_dora: float = 16.0,
                    dropout: float = 0.1,
                    alpha=None, beta=None, noise_level=None, half_width: int = 3,
                    time_index=None, target_dim: int | None = None
                    ) -> tuple[CLIPHBAMEG, AdapterInfo]:
    """Build CLIP-HBA-MEG (paper: ViT-L-14, DoRA r 32 on all 24 vision blocks).

    Parameters
    ----------
    n_vision : int or None
        Adapted vision blocks (None: all).
    text_rank : int or None
        Rank of text-tower adapters (None: ``rank``), e.g. 32 to receive a behaviour
        model's text adapters (load them with
        :func:`raybrain.models.dora.load_adapter_state_dict`, ``strict=False``, keeping the
        keys that start with ``"clip.transformer."``) under a vision rank of 6.
    alpha_dora : float
        DoRA scaling numerator (``alpha`` is the visual scaler curve here).
    Others
        As :func:`raybrain.models.clip.build_behavior_model` and :class:`CLIPHBAMEG`.

    Returns
    -------
    model : CLIPHBAMEG
        Adapters frozen (stage 1); ``reweighting`` trainable. Stage 2:
        ``model.set_adapters_trainable(True)``.
    info : AdapterInfo
    """
    labels = list(labels)
    if target_dim is not None and len(labels) != target_dim:
        raise SpecError(f"number of labels ({len(labels)}) must equal the target dimension "
                        f"({target_dim}); expected one label per target column")
    tokens = tokenize_labels(model_name, labels)
    clip = build_clip(model_name, pretrained, quick_gelu=quick_gelu)
    nv = n_blocks(clip)[0] if n_vision is None else n_vision
    info = apply_dora(clip, placement=placement, n_vision=nv, n_text=n_text, rank=rank,
                      text_rank=text_rank, alpha=alpha_dora, dropout=dropout)
    model = CLIPHBAMEG(clip, tokens, n_times, alpha=alpha, beta=beta, noise_level=noise_level,
                       half_width=half_width, time_index=time_index, target_dim=target_dim)
    model.set_adapters_trainable(False)
    return model, info
