"""Models whose intermediate representations are aligned with brain data (pure torch).

- :mod:`raybrain.models.gru`: the B2M memory-task GRU;
- :mod:`raybrain.models.vae`: the B2M driving VAE;
- :mod:`raybrain.models.brain_loop`: the brain-in-the-loop structural alignment model
  (brain encoder, MLP adaptor, multiplex GNN, the two steps' losses, evaluation);
- :mod:`raybrain.models.graphs`: kNN graphs as ``edge_index`` (no pyg-lib needed);
- :mod:`raybrain.models.backbones`: frozen backbone features (feature files, open_clip,
  torchvision).
"""

from raybrain.models.gru import MemoryGRU, scaled_sigmoid

__all__ = ["MemoryGRU", "scaled_sigmoid"]
