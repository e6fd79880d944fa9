"""Stage 1: the VQGAN image tokenizer."""

from .convert import (
    TAMING_PREFIX,
    convert_taming_state_dict,
    convert_to_taming_state_dict,
    load_taming_state_dict,
    select_first_stage,
    to_taming_state_dict,
)
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
    VQGAN,
    VQGANConfig,
    build_vq_model,
    images_to_uint8,
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
    "load_taming_state_dict",
    "select_first_stage",
    "to_taming_state_dict",
]
