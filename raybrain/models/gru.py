"""The recurrent network of the B2M memory task.

Layout (B2M paper, section 4.2): a one-layer GRU over the one-hot input sequence, dropout,
a linear projection to a small embedding (the layer aligned with the brain), and a linear
output head squashed by a scaled sigmoid into [-bound, bound].
"""

from __future__ import annotations

import torch
from torch import nn


def scaled_sigmoid(x: torch.Tensor, bound: float = 1.5) -> torch.Tensor:
    """Map reals to ``(-bound, bound)``: ``2 * bound * sigmoid(x) - bound``."""
    return 2.0 * bound * torch.sigmoid(x) - bound


class MemoryGRU(nn.Module):
    """GRU -> dropout -> linear embedding -> linear output -> scaled sigmoid.

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
        super().__init__()
        self.gru = nn.GRU(input_size, hidden, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.embed = nn.Linear(hidden, embed_dim)
        self.head = nn.Linear(embed_dim, 1)
        self.bound = bound

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a batch of sequences.

        Parameters
        ----------
        x : Tensor, shape (batch, time, input_size)

        Returns
        -------
        output : Tensor, shape (batch, time)
            Response in ``(-bound, bound)`` at every time bin.
        embedding : Tensor, shape (batch, time, embed_dim)
            The representation aligned with the brain.
        """
        h, _ = self.gru(x)
        emb = self.embed(self.dropout(h))
        out = scaled_sigmoid(self.head(emb).squeeze(-1), self.bound)
        return out, emb
