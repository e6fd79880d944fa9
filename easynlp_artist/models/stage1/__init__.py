"""Stage 1: the VQGAN image tokenizer."""

from .losses import (
    PatchDiscriminator,
    VQGANLossConfig,
    adaptive_weight,
    build_discriminator,
    discriminator_loss,
    reconstruction_loss,
    vqgan_training_step,
)
from .vqgan import (
    TAMING_PREFIX,
    VQGAN,
    VQGANConfig,
    build_vq_model,
    convert_taming_state_dict,
    convert_to_taming_state_dict,
    images_to_uint8,
    select_first_stage,
)

__all__ = [
    "PatchDiscriminator",
    "VQGANLossConfig",
    "adaptive_weight",
    "build_discriminator",
    "discriminator_loss",
    "reconstruction_loss",
    "vqgan_training_step",
    "TAMING_PREFIX",
    "VQGAN",
    "VQGANConfig",
    "build_vq_model",
    "convert_taming_state_dict",
    "convert_to_taming_state_dict",
    "images_to_uint8",
    "select_first_stage",
]
