"""medvit: from-scratch Vision Transformers (2D and 3D, optional hybrid conv stem, DeiT distillation) in pure PyTorch."""

from .explain import attention_maps, attention_rollout, readout_weights, rollout_heatmap
from .layers import Attention, Block, ConvStem, DropPath, Mlp, PatchEmbed
from .mae import MAEOutput, MaskedAutoencoder, patchify, random_masking, unpatchify
from .pos_embed import resample_pos_embed, sincos_grid, sincos_pos_embed, split_pos_embed
from .timm_weights import from_timm
from .vit import PRESETS, DistilledVisionTransformer, VisionTransformer, build_vit, create_model, list_models

__all__ = [
    "PRESETS",
    "Attention",
    "Block",
    "ConvStem",
    "DistilledVisionTransformer",
    "DropPath",
    "MAEOutput",
    "MaskedAutoencoder",
    "Mlp",
    "PatchEmbed",
    "VisionTransformer",
    "attention_maps",
    "attention_rollout",
    "build_vit",
    "create_model",
    "from_timm",
    "list_models",
    "patchify",
    "random_masking",
    "readout_weights",
    "resample_pos_embed",
    "rollout_heatmap",
    "sincos_grid",
    "sincos_pos_embed",
    "split_pos_embed",
    "unpatchify",
]
__version__ = "0.1.0"
