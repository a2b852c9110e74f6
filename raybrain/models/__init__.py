"""Models whose intermediate representations are aligned with brain data (pure torch)."""

from raybrain.models.gru import MemoryGRU, scaled_sigmoid

__all__ = ["MemoryGRU", "scaled_sigmoid"]
