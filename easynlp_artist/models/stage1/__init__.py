"""Stage 1: the VQGAN image tokenizer."""

from .vqgan import (
    TAMING_PREFIX,
    VQGAN,
    VQGANConfig,
    build_vq_model,
    convert_taming_state_dict,
    convert_to_taming_state_dict,
    images_to_uint8,
)

__all__ = [
    "TAMING_PREFIX",
    "VQGAN",
    "VQGANConfig",
    "build_vq_model",
    "convert_taming_state_dict",
    "convert_to_taming_state_dict",
    "images_to_uint8",
]
