"""RISE saliency maps (Petsiuk et al. 2018) for CLIP-HBA models.

RISE draws N random masks: a coarse ``grid x grid`` binary grid (each cell kept with
probability ``p_keep``), upsampled bilinearly to ``(grid + 1) * cell`` pixels and cropped
at a random offset to the image size, so masks are smooth and shifted by sub-cell amounts.
With ``s_i`` the model's score of the masked image ``I * M_i``, the saliency map is::

    S(x) = sum_i s_i M_i(x) / (N * p_keep)

i.e. the expected score given that pixel x is kept. Images are normalised, so a masked
pixel takes value 0: the normalisation mean (a neutral grey).

CLIP-HBA-MEG has no class score; as the paper, the score of a masked image is the cosine
similarity between its embedding and the unmasked image's embedding (``mode="cosine"``):
a region whose masking moves the embedding away is salient. ``mode="output"`` uses the
model outputs themselves as scores (one map per output, e.g. per SPoSE dimension).
:func:`meg_saliency` gives a map per chosen time point, scaled by the visual scaler
``alpha_t`` as the paper's "dynamic attention". Everything is deterministic in ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from raybrain.errors import SpecError

__all__ = ["meg_saliency", "rise_masks", "rise_saliency"]


def rise_masks(n_masks: int, size: int | tuple[int, int], *, grid: int = 7,
               p_keep: float = 0.5, seed: int = 0) -> np.ndarray:
    """RISE masks.

    Parameters
    ----------
    n_masks : int
    size : int or (H, W)
    grid : int
        Cells per side of the coarse grid (>= 2).
    p_keep : float
        Probability that a cell is kept, in (0, 1].
    seed : int

    Returns
    -------
    np.ndarray of float32, shape (n_masks, H, W), values in [0, 1]
    """
    h, w = (size, size) if isinstance(size, int) else size
    if n_masks < 1 or grid < 2 or not 0 < p_keep <= 1 or h < 1 or w < 1:
        raise SpecError(f"RISE needs n_masks >= 1, grid >= 2, 0 < p_keep <= 1 and a positive "
                        f"size, got n_masks={n_masks}, grid={grid}, p_keep={p_keep}, "
                        f"size={(h, w)}")
    rng = np.random.default_rng(seed)
    cell_h, cell_w = int(np.ceil(h / grid)), int(np.ceil(w / grid))
    up_h, up_w = (grid + 1) * cell_h, (grid + 1) * cell_w
    cells = (rng.uniform(size=(n_masks, 1, grid, grid)) < p_keep).astype(np.float32)
    up = F.interpolate(torch.from_numpy(cells), size=(up_h, up_w), mode="bilinear",
                       align_corners=False).numpy()[:, 0]
    dy = rng.integers(0, cell_h, n_masks)
    dx = rng.integers(0, cell_w, n_masks)
    out = np.stack([up[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n_masks)])
    return np.clip(out, 0.0, 1.0)  # bilinear rounding can give 1 + 1e-7


def rise_saliency(score_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, *,
                  n_masks: int = 500, grid: int = 7, p_keep: float = 0.5, seed: int = 0,
                  batch_size: int = 50, mode: str = "cosine") -> np.ndarray:
    """RISE saliency of one image.

    Parameters
    ----------
    score_fn : callable
        Images (n, 3, H, W) -> outputs (n, ..., D) (``mode="cosine"``) or (n, ...)
        (``mode="output"``); called under ``torch.no_grad``.
    image : torch.Tensor, shape (3, H, W)
        Normalised image.
    n_masks, grid, p_keep, seed
        See :func:`rise_masks`.
    batch_size : int
        Masked images per call of ``score_fn``.
    mode : {"cosine", "output"}
        Score: cosine similarity of the masked image's output with the unmasked one's over
        the last axis, or the outputs themselves.

    Returns
    -------
    np.ndarray of float32, shape (..., H, W)
        ``(...)`` is the output shape without the leading n (and without D for "cosine").
    """
    if mode not in ("cosine", "output"):
        raise SpecError(f"RISE mode must be 'cosine' or 'output', got {mode!r}")
    if image.ndim != 3:
        raise SpecError(f"RISE needs one image of shape (3, H, W), got {tuple(image.shape)}")
    if batch_size < 1:
        raise SpecError(f"batch_size must be >= 1, got {batch_size}")
    h, w = image.shape[1:]
    masks = torch.from_numpy(rise_masks(n_masks, (h, w), grid=grid, p_keep=p_keep, seed=seed))
    masks = masks.to(device=image.device, dtype=image.dtype)
    total = None
    with torch.no_grad():
        ref = score_fn(image[None])[0] if mode == "cosine" else None
        for i0 in range(0, n_masks, batch_size):
            m = masks[i0:i0 + batch_size]  # (b, H, W)
            out = score_fn(image[None] * m[:, None])
            if mode == "cosine":
                s = F.cosine_similarity(out, ref.expand_as(out), dim=-1, eps=1e-12)
            else:
                s = out
            # (b, ...) x (b, H, W) -> (..., H, W)
            part = torch.einsum("b...,bhw->...hw", s.to(m.dtype), m)
            total = part if total is None else total + part
    return (total / (n_masks * p_keep)).detach().cpu().numpy().astype(np.float32)


def meg_saliency(model, image: torch.Tensor, time_index, *, scale_by_alpha: bool = True,
                 **rise_kwargs) -> np.ndarray:
    """Cosine RISE maps of a CLIP-HBA-MEG model at chosen time points.

    Parameters
    ----------
    model : raybrain.models.clip_meg.CLIPHBAMEG
        Put in eval mode for the call (no training noise) and restored afterwards.
    image : torch.Tensor, shape (3, H, W)
    time_index : array_like of int, shape (K,)
        Time points (rows of the model's time axis).
    scale_by_alpha : bool
        Multiply each map by the window-averaged visual scaler ``alpha_t``.
    **rise_kwargs
        Passed to :func:`rise_saliency` (``n_masks``, ``grid``, ``p_keep``, ``seed``,
        ``batch_size``).

    Returns
    -------
    np.ndarray of float32, shape (K, H, W)
    """
    from raybrain.models.clip_meg import window_matrix

    idx = np.atleast_1d(np.asarray(time_index))
    was_training = model.training
    model.eval()
    try:
        maps = rise_saliency(lambda x: model(x, idx).embeddings.transpose(0, 1), image,
                             mode="cosine", **rise_kwargs)
    finally:
        model.train(was_training)
    if scale_by_alpha:
        a = (window_matrix(model.n_times, model._check_index(idx), model.half_width)
             @ model.alpha.cpu().float()).numpy()
        maps = maps * a[:, None, None].astype(np.float32)
    return maps
