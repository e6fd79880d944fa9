"""Dead-code restarts: unused codes move onto encoder outputs, used ones stay, counts persist."""

import pytest
import torch

from easynlp_artist.models.stage1.losses import DeadCodeRestarter


def test_only_codes_unused_for_a_whole_window_restart_onto_latents():
    torch.manual_seed(0)
    codebook = torch.randn(6, 4)
    before = codebook.clone()
    latents = torch.randn(2, 4, 3, 3) * 5  # (B, D, h, w), far from every code
    restarter = DeadCodeRestarter(6, every=2)
    assert restarter.update(codebook, latents, torch.tensor([[0, 1, 1]])) == 0  # not yet due
    assert torch.equal(codebook, before)
    assert restarter.update(codebook, latents, torch.tensor([[2, 2, 0]])) == 3  # codes 3, 4, 5 never used
    assert torch.equal(codebook[:3], before[:3])
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    for row in codebook[3:]:
        assert torch.cdist(row[None], flat).min() < 0.1 * flat.std() * 4  # a latent plus a little noise
    assert restarter.counts.sum() == 0 and int(restarter.calls) == 2
    assert set(dict(restarter.named_buffers())) == {"counts", "calls"}  # saved with the model


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be >= 1"):
        DeadCodeRestarter(4, every=0)
