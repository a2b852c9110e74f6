"""The brain term of steering fine-tuning: pull states along the joint directions (torch).

For a batch of ``b`` problems with pooled layer states ``H`` (b, hidden), an orthonormal
basis ``B`` (rank, hidden) of the joint directions and the brain's coordinates ``Y``
(b, rank) of the same problems on those directions
(:meth:`raybrain.align.predictivity.JointDirections.brain_coordinates`), the states'
coordinates are ``Z = (H - mean_batch(H)) B^T`` and

    L_dir = 1 - (1 / rank) * sum_k pearson_batch(Z[:, k], Y[:, k]).

It is 0 when the states' coordinate on every joint direction follows the brain's
coordinate exactly (up to scale and offset), 1 when unrelated, 2 when reversed. The
term is scale-free (hidden states and brain scores need no common unit) and moves the
states only through their components inside the subspace: ``dL/dH`` lies in the row
space of ``B``.
"""

from __future__ import annotations

__all__ = ["direction_alignment_loss"]


def direction_alignment_loss(states, basis, targets, eps: float = 1e-12):
    """``1 - mean_k r_k``: batch Pearson correlation per direction (module docstring).

    Parameters
    ----------
    states : torch.Tensor, shape (b, hidden)
        Pooled layer states, b >= 2.
    basis : torch.Tensor, shape (rank, hidden)
        Orthonormal rows (not trained; used as given).
    targets : torch.Tensor, shape (b, rank)
        Brain coordinates of the batch's problems.
    eps : float
        Added to each variance (a constant coordinate gives r = 0, not NaN).

    Returns
    -------
    torch.Tensor, scalar
    """
    import torch

    if states.ndim != 2 or basis.ndim != 2 or targets.ndim != 2:
        raise ValueError(f"expected states (b, hidden), basis (rank, hidden), targets "
                         f"(b, rank); got {tuple(states.shape)}, {tuple(basis.shape)}, "
                         f"{tuple(targets.shape)}")
    b, hidden = states.shape
    if basis.shape[1] != hidden or targets.shape != (b, basis.shape[0]):
        raise ValueError(f"shapes do not match: states {tuple(states.shape)}, basis "
                         f"{tuple(basis.shape)}, targets {tuple(targets.shape)}")
    if b < 2:
        raise ValueError(f"a batch correlation needs at least 2 problems, got {b}")
    z = (states - states.mean(0, keepdim=True)) @ basis.T  # (b, rank)
    y = targets - targets.mean(0, keepdim=True)
    zs = z / torch.sqrt((z * z).mean(0) + eps)
    ys = y / torch.sqrt((y * y).mean(0) + eps)
    r = (zs * ys).mean(0)  # (rank,)
    return 1.0 - r.mean()
