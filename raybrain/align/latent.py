"""Brain latent transfer: mean squared error between model and brain embeddings.

This is the B2M "brain latent transfer" objective (paper eq. 3): for each valid time
point, the mean over the E embedding dimensions of the squared difference between model
and brain embedding; the loss is the mean of that over the valid time points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raybrain.align.contrastive import _valid_rows
from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["latent_mse", "latent_transfer"]


def latent_mse(
    model_emb: torch.Tensor,
    brain_emb: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Brain latent transfer loss (B2M eq. 3), averaged over valid time points.

    Parameters
    ----------
    model_emb : torch.Tensor, shape (..., E)
        Model embeddings, typically (batch, time, E). Gradients flow through it.
    brain_emb : torch.Tensor, shape (..., E)
        Brain embeddings for the same time points (same shape as ``model_emb``).
    mask : torch.Tensor of bool, shape (...), optional
        True for a valid time point that has brain data. None (default) means all valid.
        Masked-out time points have no effect on the loss or the gradient.

    Returns
    -------
    torch.Tensor, shape ()
        ``mean_t mean_e (model[t, e] - brain[t, e])**2`` over the valid time points ``t``.
        Since every time point has the same E, this equals the mean over all valid
        entries.

    Raises
    ------
    SpecError
        If the shapes differ, the mask has the wrong shape or dtype, or no time point
        is valid.
    """
    model_rows, brain_rows = _valid_rows(model_emb, brain_emb, mask, "latent_mse")
    if model_rows.shape[0] < 1:
        raise SpecError("latent_mse: needs at least 1 valid time point, but got 0")
    per_point = (model_rows - brain_rows).pow(2).mean(dim=-1)  # (N,)
    return per_point.mean()


def latent_transfer(
    model_emb: torch.Tensor,
    brain_emb: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float | None = None,
) -> torch.Tensor:
    """:func:`latent_mse` with the transfer-loss registry's signature.

    Every entry of ``raybrain.align.TRANSFER_LOSSES`` is called as
    ``fn(model_emb, brain_emb, mask, temperature)``. The latent loss has no temperature:
    the argument exists only so the two losses are interchangeable, and its value is
    never used.

    Parameters
    ----------
    model_emb, brain_emb : torch.Tensor, shape (..., E)
        See :func:`latent_mse`.
    mask : torch.Tensor of bool, shape (...), optional
        See :func:`latent_mse`.
    temperature : float or None
        Not used.

    Returns
    -------
    torch.Tensor, shape ()
    """
    del temperature
    return latent_mse(model_emb, brain_emb, mask)
