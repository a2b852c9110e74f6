"""Brain contrastive transfer: an InfoNCE objective between brain and model embeddings.

This is the B2M "brain contrastive learning" objective (paper eq. 2). Each valid time
point is an anchor: its brain embedding should be more similar (dot product over a
temperature) to the model embedding of the same time point than to the model
embeddings of every other valid time point in the batch.

``torch`` is imported inside the functions so that ``import raybrain.align`` (which the
CLI needs for the registry names) stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["info_nce"]


def _valid_rows(
    model_emb: torch.Tensor,
    brain_emb: torch.Tensor,
    mask: torch.Tensor | None,
    loss_name: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a (model, brain, mask) triple and return the valid rows of both.

    Parameters
    ----------
    model_emb, brain_emb : torch.Tensor, shape (..., E)
        Model and brain embeddings; the shapes must be identical and have at least
        one leading axis.
    mask : torch.Tensor of bool, shape (...), or None
        True where the time point is valid (has brain data). None means all valid.
    loss_name : str
        Used in error messages.

    Returns
    -------
    model_rows, brain_rows : torch.Tensor, shape (N, E)
        The valid time points, flattened across all leading axes in row-major order.
    """
    import torch

    if not isinstance(model_emb, torch.Tensor) or not isinstance(brain_emb, torch.Tensor):
        raise SpecError(
            f"{loss_name}: model_emb and brain_emb must be torch tensors, but got "
            f"({type(model_emb).__name__}, {type(brain_emb).__name__})"
        )
    if model_emb.shape != brain_emb.shape:
        raise SpecError(
            f"{loss_name}: model_emb and brain_emb must have the same shape (..., E), but got "
            f"model_emb {tuple(model_emb.shape)} and brain_emb {tuple(brain_emb.shape)}"
        )
    if model_emb.ndim < 2:
        raise SpecError(
            f"{loss_name}: embeddings must have shape (..., E) with at least one leading "
            f"axis (e.g. (batch, time, E)), but got shape {tuple(model_emb.shape)}"
        )
    emb_dim = model_emb.shape[-1]
    if mask is None:
        return model_emb.reshape(-1, emb_dim), brain_emb.reshape(-1, emb_dim)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SpecError(f"{loss_name}: mask must be a bool tensor or None, but got {got}")
    if mask.shape != model_emb.shape[:-1]:
        raise SpecError(
            f"{loss_name}: mask must have the embeddings' shape without the last axis "
            f"{tuple(model_emb.shape[:-1])}, but got {tuple(mask.shape)}"
        )
    flat_mask = mask.reshape(-1).to(model_emb.device)
    return model_emb.reshape(-1, emb_dim)[flat_mask], brain_emb.reshape(-1, emb_dim)[flat_mask]


def _check_temperature(temperature: float) -> float:
    try:
        tau = float(temperature)
    except (TypeError, ValueError):
        raise SpecError(
            f"info_nce: temperature must be a positive number, but got {temperature!r}"
        ) from None
    if not (math.isfinite(tau) and tau > 0):
        raise SpecError(f"info_nce: temperature must be finite and > 0, but got {temperature!r}")
    return tau


def info_nce(
    model_emb: torch.Tensor,
    brain_emb: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Brain contrastive transfer loss (B2M eq. 2), averaged over anchors.

    The valid time points of the whole batch are flattened into ``N`` anchors. With
    ``B`` the (N, E) brain rows and ``M`` the (N, E) model rows, the similarity matrix is
    ``S = B @ M.T / temperature``; row ``i`` holds brain anchor ``i`` against every model
    row, its positive is ``S[i, i]`` and the other ``N - 1`` entries are its negatives.
    The loss is the mean over anchors of ``-log softmax(S[i])[i]``, evaluated with a
    log-sum-exp (``cross_entropy``), so large similarities do not overflow.

    Masked-out (padded) time points are neither anchors nor negatives: their values have
    no effect on the loss or on the gradient. The embeddings are used as given (no
    normalisation), as in the paper's equation.

    The paper writes the transfer loss as a sum over anchors; the mean used here differs
    by the factor ``N``, which keeps the scale of the loss, and so the meaning of the
    mixing weight ``alpha``, independent of batch size and sequence length.

    Parameters
    ----------
    model_emb : torch.Tensor, shape (..., E)
        Model embeddings, typically (batch, time, E). Gradients flow through it.
    brain_emb : torch.Tensor, shape (..., E)
        Brain embeddings for the same time points (same shape as ``model_emb``).
    mask : torch.Tensor of bool, shape (...), optional
        True for a valid time point that has brain data. None (default) means all valid.
    temperature : float, default 0.1
        Softmax temperature ``tau`` > 0 dividing the similarities.

    Returns
    -------
    torch.Tensor, shape ()
        The scalar loss, in the embeddings' dtype.

    Raises
    ------
    SpecError
        If the shapes differ, the mask has the wrong shape or dtype, the temperature is
        not a finite positive number, or fewer than 2 time points are valid (a single
        anchor has no negatives and its loss would be identically zero).
    """
    import torch
    import torch.nn.functional as F

    tau = _check_temperature(temperature)
    model_rows, brain_rows = _valid_rows(model_emb, brain_emb, mask, "info_nce")
    n_anchors = model_rows.shape[0]
    if n_anchors < 2:
        raise SpecError(
            f"info_nce: needs at least 2 valid time points (one positive and at least one "
            f"negative per anchor), but got {n_anchors}"
        )
    similarity = brain_rows @ model_rows.T / tau  # (N, N); row = brain anchor
    targets = torch.arange(n_anchors, device=similarity.device)
    return F.cross_entropy(similarity, targets, reduction="mean")
