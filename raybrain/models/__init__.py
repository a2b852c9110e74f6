"""Models whose intermediate representations are aligned with brain data (pure torch).

- :mod:`raybrain.models.gru`: the B2M memory-task GRU (one model or a stack of seeds);
- :mod:`raybrain.models.vae`: the B2M driving VAE;
- :mod:`raybrain.models.brain_loop`: the brain-in-the-loop structural alignment model
  (brain encoder, MLP adaptor, multiplex GNN, the two steps' losses, evaluation);
- :mod:`raybrain.models.graphs`: kNN graphs as ``edge_index`` (no pyg-lib needed);
- :mod:`raybrain.models.backbones`: frozen backbone features (feature files, open_clip,
  torchvision);
- CLIP-HBA (open_clip and peft imported only when used): :mod:`raybrain.models.clip`
  (builder, behaviour head), :mod:`raybrain.models.dora` (DoRA adapters),
  :mod:`raybrain.models.clip_meg` (the MEG model), :mod:`raybrain.models.saliency` (RISE);
- causal language models (Hugging Face ``transformers`` + ``peft``, imported only when
  used: loading, scoring, layer states, steering hooks, adapters): :mod:`raybrain.models.lm`.
"""

from raybrain.models.gru import MemoryGRU, MemoryGRUStack, scaled_sigmoid

__all__ = ["MemoryGRU", "MemoryGRUStack", "scaled_sigmoid"]
