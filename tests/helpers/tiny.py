"""Tiny configurations that mirror the package's real ones, for tests that must run in seconds."""

import torch

from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.models.stage1.vqgan import VQGANConfig

# 16 px images, factor 2 → an 8×8 grid of 64 tokens; a 24-code book.
TINY_VQGAN = dict(
    resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
    z_channels=8, embed_dim=8, n_embed=24, norm_groups=4,
)


def tiny_artist_config(text_vocab_size=40, entity_dim=None, text_len=6, **gpt) -> ArtistConfig:
    return ArtistConfig.build(
        VQGANConfig(**TINY_VQGAN), text_vocab_size=text_vocab_size, text_len=text_len,
        n_layer=2, n_head=2, n_embd=16, entity_dim=entity_dim, **gpt,
    )


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Perturb every parameter so that zero-initialised biases and positions matter in checks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module
