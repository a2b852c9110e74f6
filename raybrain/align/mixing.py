"""Mixing the task loss with a transfer loss (B2M eq. 1)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raybrain.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    LossLike = torch.Tensor | float

__all__ = ["mix_losses"]


def mix_losses(
    task_loss: LossLike,
    transfer_loss: LossLike | None,
    alpha: float,
) -> LossLike:
    """Total loss ``(1 - alpha) * task_loss + alpha * transfer_loss`` (B2M eq. 1).

    Parameters
    ----------
    task_loss : torch.Tensor, shape (), or float
        The learner's own loss.
    transfer_loss : torch.Tensor, shape (), float, or None
        The brain transfer loss (e.g. :func:`raybrain.align.info_nce`). May be None only
        when ``alpha == 0``.
    alpha : float
        Transfer weight in [0, 1]. ``alpha == 0`` returns ``task_loss`` itself (the same
        object, so a run without transfer is bit-identical to plain training and the
        transfer loss need not be computed); ``alpha == 1`` trains on the transfer loss
        alone (the task term is kept with weight 0, so a non-finite task loss still
        shows up in the total).

    Returns
    -------
    torch.Tensor, shape (), or float
        The weighted sum.

    Raises
    ------
    SpecError
        If ``alpha`` is not a number in [0, 1], or ``transfer_loss`` is None while
        ``alpha > 0``.
    """
    if isinstance(alpha, bool):
        raise SpecError(f"mix_losses: alpha must be a number in [0, 1], but got {alpha!r}")
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise SpecError(
            f"mix_losses: alpha must be a number in [0, 1], but got {alpha!r}"
        ) from None
    if not (math.isfinite(a) and 0.0 <= a <= 1.0):
        raise SpecError(f"mix_losses: 0 <= alpha <= 1 must hold, but got alpha={alpha!r}")
    if a == 0.0:
        return task_loss
    if transfer_loss is None:
        raise SpecError(
            f"mix_losses: transfer_loss is required when alpha > 0, but got None "
            f"with alpha={alpha!r}"
        )
    return (1.0 - a) * task_loss + a * transfer_loss
