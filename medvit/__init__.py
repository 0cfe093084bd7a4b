"""medvit: from-scratch Vision Transformers (2D and 3D, optional hybrid conv stem) in pure PyTorch."""

from .explain import attention_maps, attention_rollout, readout_weights, rollout_heatmap
from .layers import Attention, Block, ConvStem, DropPath, Mlp, PatchEmbed
from .mae import MAEOutput, MaskedAutoencoder, patchify, random_masking, unpatchify
from .pos_embed import resample_pos_embed, sincos_grid
from .timm_weights import from_timm
from .vit import PRESETS, VisionTransformer, create_model, list_models

__all__ = [
    "PRESETS",
    "Attention",
    "Block",
    "ConvStem",
    "DropPath",
    "MAEOutput",
    "MaskedAutoencoder",
    "Mlp",
    "PatchEmbed",
    "VisionTransformer",
    "attention_maps",
    "attention_rollout",
    "create_model",
    "from_timm",
    "list_models",
    "patchify",
    "random_masking",
    "readout_weights",
    "resample_pos_embed",
    "rollout_heatmap",
    "sincos_grid",
    "unpatchify",
]
__version__ = "0.1.0"
