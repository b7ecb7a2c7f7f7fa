"""The networks' parts beyond diffusers' classes: loading the components, the attention processors, FP8 layers and LoRA
merging.
"""

from .loading import FramePackModels, all_blocks, encoder_dtype, load_models, load_transformer

__all__ = ["FramePackModels", "all_blocks", "encoder_dtype", "load_models", "load_transformer"]
