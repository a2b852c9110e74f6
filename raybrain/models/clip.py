"""open_clip models for CLIP-HBA: building, label text, and the behaviour head.

- :func:`build_clip`: an open_clip CLIP by name (``"ViT-L-14"`` for real use;
  :data:`TINY_MODEL`, a 4-block width-64 ViT on 32 x 32 images registered with
  ``open_clip.add_model_config``, for tests and quick specs), weights from a local
  checkpoint file or random. Nothing is ever downloaded: ``pretrained`` is a file path or
  None. OpenAI's ViT-L/14 weights were trained with QuickGELU: pass ``quick_gelu=True``.
- :func:`tokenize_labels`: the label prompts as token ids. CLIP-HBA feeds each SPoSE
  dimension label to the text tower as it is, one prompt per label, with no template.
- :class:`CLIPHBABehavior`: prediction ``logit_scale.exp() * cos(image, label text)``,
  shape (B, n_labels), the CLIP-HBA behaviour head (no softmax).
- :func:`build_behavior_model`: build + DoRA (:mod:`raybrain.models.dora`) + head.

The MEG model is in :mod:`raybrain.models.clip_meg`, RISE saliency in
:mod:`raybrain.models.saliency`. ``open_clip`` (and peft) are imported inside the
functions that use them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from raybrain.errors import SpecError
from raybrain.models.dora import AdapterInfo, adapter_switches, apply_dora

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

__all__ = ["TINY_MODEL", "TINY_CONFIG", "CLIPHBABehavior", "LabelText", "build_behavior_model",
           "build_clip", "n_blocks", "register_tiny_model", "tokenize_labels"]

TINY_MODEL = "raybrain-tiny-vit"
"""Name of the tiny ViT-CLIP registered by :func:`register_tiny_model`."""

TINY_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
"""open_clip config of :data:`TINY_MODEL`: 4 vision blocks of width 64 on 32 x 32 images
(16 patches of 8 x 8, 4 heads), 2 text blocks of width 64 with open_clip's tokenizer
(context 16), a 64-d joint space. About 3.5 M parameters, 3.2 M of them the token table."""


def register_tiny_model() -> str:
    """Register :data:`TINY_MODEL` with open_clip (idempotent) and return its name."""
    import open_clip

    if open_clip.get_model_config(TINY_MODEL) is None:
        # add_model_config reads the file into open_clip's registry at once; the file
        # can go afterwards (later rescans skip a missing directory)
        d = tempfile.mkdtemp(prefix="raybrain-openclip-")
        try:
            Path(d, f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
            open_clip.add_model_config(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return TINY_MODEL


def _model_config(model_name: str) -> dict:
    import open_clip

    if not isinstance(model_name, str) or not model_name:
        raise SpecError(f"CLIP model name must be a non-empty string, got {model_name!r}")
    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise SpecError(f"CLIP model {model_name!r}: hub and directory names are not accepted "
                        f"(nothing is downloaded); expected an open_clip architecture name such "
                        f"as 'ViT-L-14' with pretrained=<checkpoint file>")
    if model_name == TINY_MODEL:
        register_tiny_model()
    cfg = open_clip.get_model_config(model_name.replace("/", "-"))
    if cfg is None:
        raise SpecError(f"unknown CLIP model {model_name!r}; expected an open_clip architecture "
                        f"name (open_clip.list_models(), e.g. 'ViT-L-14') or {TINY_MODEL!r}")
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get(
            "text_cfg", {}):
        raise SpecError(f"CLIP model {model_name!r} uses a timm or Hugging Face tower; "
                        f"CLIP-HBA needs open_clip's own ViT and text transformer")
    return cfg


def build_clip(model_name: str, pretrained: str | os.PathLike | None = None, *,
               quick_gelu: bool = False, weights_only: bool = True) -> nn.Module:
    """An open_clip CLIP in eval mode, with random weights or a local checkpoint.

    Parameters
    ----------
    model_name : str
        open_clip architecture (``"ViT-L-14"``; ``"/"`` is read as ``"-"``) or
        :data:`TINY_MODEL`.
    pretrained : path or None
        A checkpoint file open_clip can read (a state dict, ``{"state_dict": ...}``,
        safetensors); it must fit the architecture exactly. None: random weights.
    quick_gelu : bool
        Use QuickGELU activations (needed for OpenAI's weights).
    weights_only : bool
        Passed to ``torch.load`` (True refuses pickled code in a checkpoint). OpenAI's
        original ``ViT-L-14.pt`` is a TorchScript archive and needs False.

    Returns
    -------
    open_clip.CLIP
        On the CPU, float32, ``eval()`` mode, every parameter trainable (freeze with
        :func:`raybrain.models.dora.apply_dora`).

    Raises
    ------
    SpecError
        Unknown model name, a missing checkpoint file, or a checkpoint that does not fit
        the architecture (one line: the first missing/unexpected key or shape mismatch).
    """
    import open_clip

    _model_config(model_name)
    name = model_name.replace("/", "-")
    path = None
    if pretrained is not None:
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise SpecError(f"CLIP checkpoint '{path}' not found; expected an existing file "
                            f"(pretrained tags are not downloaded here)")
    try:
        model = open_clip.create_model(name, pretrained=path, force_quick_gelu=quick_gelu,
                                       weights_only=weights_only)
    except (RuntimeError, KeyError, ValueError, OSError, EOFError) as exc:
        if path is None:
            raise
        if weights_only and "TorchScript" in str(exc):
            raise SpecError(f"CLIP checkpoint '{path}' is a TorchScript archive (OpenAI's "
                            f"original format), which torch.load refuses with weights_only="
                            f"True; pass weights_only=False for a file you trust") from None
        raise SpecError(f"CLIP checkpoint '{path}' does not fit model {model_name!r}: "
                        f"{_state_dict_error(exc)}") from None
    except Exception as exc:  # unpickling errors and the like: a broken file
        if path is None:
            raise
        raise SpecError(f"CLIP checkpoint '{path}' could not be read for model "
                        f"{model_name!r} ({type(exc).__name__}: {_first_line(exc)})") from None
    model.eval()
    return model


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _state_dict_error(exc: BaseException) -> str:
    """One line from ``load_state_dict``'s multi-line report."""
    text = str(exc)
    for marker in ("size mismatch for", "Missing key(s)", "Unexpected key(s)"):
        i = text.find(marker)
        if i >= 0:
            line = text[i:].splitlines()[0].strip().rstrip(".")
            return (line[:300] + "...") if len(line) > 300 else line
    return f"{type(exc).__name__}: {_first_line(exc)}"


def n_blocks(model: nn.Module) -> tuple[int, int]:
    """(vision blocks, text blocks) of an open_clip CLIP."""
    return len(model.visual.transformer.resblocks), len(model.transformer.resblocks)


def tokenize_labels(model_name: str, labels: Sequence[str]) -> torch.Tensor:
    """Token ids of the label prompts, one prompt per label, no template.

    Parameters
    ----------
    model_name : str
    labels : sequence of str
        E.g. the 66 SPoSE dimension labels (``"metallic; artificial"``...).

    Returns
    -------
    torch.Tensor of int64, shape (n_labels, context_length)
    """
    labels = list(labels)
    if not labels or not all(isinstance(s, str) and s.strip() for s in labels):
        raise SpecError(f"labels must be a non-empty list of non-empty strings, got "
                        f"{labels[:3]!r}{'...' if len(labels) > 3 else ''}")
    _model_config(model_name)
    return _tokenizer(model_name.replace("/", "-"))(labels)


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str):
    """open_clip's tokenizer for an architecture (reading its vocabulary takes ~0.1 s)."""
    import open_clip

    return open_clip.get_tokenizer(name)


class LabelText(nn.Module):
    """L2-normalised text embeddings of fixed label prompts.

    While a text-tower parameter requires a gradient the embeddings are recomputed on every
    call (in the tower's current mode, so adapter dropout applies in training). When none
    does, the tower is frozen: the embeddings are computed once, in eval mode (no dropout)
    and without a graph, and reused until a text-tower parameter changes (an optimiser step
    or ``load_state_dict``: every in-place change bumps the tensor's version counter) or a
    text adapter is switched on or off.

    Parameters
    ----------
    clip : open_clip.CLIP
    tokens : torch.Tensor of int64, shape (n_labels, context_length)
    """

    def __init__(self, clip: nn.Module, tokens: torch.Tensor):
        super().__init__()
        self._clip = [clip]  # not a submodule: the owner registers the CLIP once
        self.register_buffer("tokens", torch.as_tensor(tokens, dtype=torch.long), persistent=False)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _text_params(self) -> list[torch.Tensor]:
        return [p for n, p in self._clip[0].named_parameters() if not n.startswith("visual.")]

    def forward(self) -> torch.Tensor:
        """Text embeddings, shape (n_labels, embed_dim), unit norm."""
        clip = self._clip[0]
        params = self._text_params()
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if grad:
            self._cache = None
            return clip.encode_text(self.tokens, normalize=True)
        key = (tuple((p.data_ptr(), p._version) for p in params),
               adapter_switches(clip.transformer), self.tokens.device)
        if self._cache is None or self._cache[0] != key:
            was = clip.transformer.training
            clip.transformer.eval()  # a frozen text tower is evaluated without dropout
            try:
                with torch.no_grad():
                    self._cache = (key, clip.encode_text(self.tokens, normalize=True))
            finally:
                clip.transformer.train(was)
        return self._cache[1]


class CLIPHBABehavior(nn.Module):
    """CLIP-HBA behaviour model: scaled cosine of each image with each label's text.

    ``pred[b, k] = exp(logit_scale) * <img_b / |img_b|, txt_k / |txt_k|>``, as the
    CLIP-HBA code (no softmax; about 100 x cosine with pretrained weights).

    Parameters
    ----------
    clip : open_clip.CLIP
        Usually adapted with :func:`raybrain.models.dora.apply_dora`.
    tokens : torch.Tensor of int64, shape (n_labels, context_length)
        From :func:`tokenize_labels`.
    target_dim : int or None
        Number of target dimensions (66 for SPoSE); must equal ``n_labels``.
    """

    def __init__(self, clip: nn.Module, tokens: torch.Tensor, target_dim: int | None = None):
        super().__init__()
        n_labels = int(tokens.shape[0])
        if target_dim is not None and n_labels != target_dim:
            raise SpecError(f"number of labels ({n_labels}) must equal the target dimension "
                            f"({target_dim}); expected one label per target column")
        self.clip = clip
        self.text = LabelText(clip, tokens)
        self.n_labels = n_labels

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings, images (B, 3, H, W) -> (B, embed_dim), unit norm."""
        return self.clip.encode_image(images, normalize=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted behavioural embedding, images (B, 3, H, W) -> (B, n_labels)."""
        img = self.image_embeddings(images)
        return self.clip.logit_scale.exp() * img @ self.text().T


def build_behavior_model(model_name: str, labels: Sequence[str], *,
                         pretrained: str | os.PathLike | None = None, quick_gelu: bool = False,
                         placement: str = "attn_out", n_vision: int = 2, n_text: int = 1,
                         rank: int = 32, alpha: float = 16.0, dropout: float = 0.1,
                         target_dim: int | None = None, text_rank: int | None = None) -> tuple[CLIPHBABehavior, AdapterInfo]:
    """Build the CLIP-HBA behaviour model (paper: ViT-L-14, r 32, last 2 vision + 1 text).

    Parameters are those of :func:`build_clip` and :func:`raybrain.models.dora.apply_dora`;
    ``labels`` are the prompts (one per target dimension, checked against ``target_dim``).

    Returns
    -------
    model : CLIPHBABehavior
        Only the adapters require gradients.
    info : AdapterInfo
    """
    labels = list(labels)
    if target_dim is not None and len(labels) != target_dim:
        raise SpecError(f"number of labels ({len(labels)}) must equal the target dimension "
                        f"({target_dim}); expected one label per target column")
    tokens = tokenize_labels(model_name, labels)
    clip = build_clip(model_name, pretrained, quick_gelu=quick_gelu)
    info = apply_dora(clip, placement=placement, n_vision=n_vision, n_text=n_text, rank=rank,
                      alpha=alpha, dropout=dropout, text_rank=text_rank)
    return CLIPHBABehavior(clip, tokens, target_dim), info
