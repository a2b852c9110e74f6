"""Models whose intermediate representations are aligned with brain data (pure torch).

CLIP-HBA (open_clip and peft imported only when used): :mod:`raybrain.models.clip`
(builder, behaviour head), :mod:`raybrain.models.dora` (DoRA adapters),
:mod:`raybrain.models.clip_meg` (the MEG model), :mod:`raybrain.models.saliency` (RISE).
"""

from raybrain.models.gru import MemoryGRU, scaled_sigmoid

__all__ = ["MemoryGRU", "scaled_sigmoid"]
