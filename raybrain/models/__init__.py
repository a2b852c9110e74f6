"""Models whose intermediate representations are aligned with brain data (pure torch).

Causal language models (Hugging Face ``transformers`` + ``peft``: loading, scoring,
layer states, steering hooks, adapters) are in :mod:`raybrain.models.lm`, which imports
them only when used.
"""

from raybrain.models.gru import MemoryGRU, scaled_sigmoid

__all__ = ["MemoryGRU", "scaled_sigmoid"]
