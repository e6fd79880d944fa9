"""VQGAN training objective: values against direct formulas, discriminator schedule, gradients, learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from easynlp_artist.models.stage1 import (
    VQGAN,
    PatchDiscriminator,
    VQGANConfig,
    VQGANLossConfig,
    build_discriminator,
    vqgan_training_step,
)

CFG = VQGANConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                  z_channels=8, embed_dim=8, n_embed=64, norm_groups=4)


def make(seed=0, **loss_kwargs):
    torch.manual_seed(seed)
    loss_cfg = VQGANLossConfig(disc_ndf=8, disc_layers=2, **loss_kwargs)
    model = VQGAN(CFG)
    with torch.no_grad():  # a codebook at the latents' scale, so that several codes are in use
        model.codebook.normal_()
    return model, build_discriminator(loss_cfg, CFG.in_channels), loss_cfg


def images(batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, CFG.in_channels, CFG.resolution, CFG.resolution, generator=gen) * 2 - 1


class CallCounter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self.hook)

    def hook(self, *_):
        self.calls += 1


def test_discriminator_off_before_disc_start_and_on_after():
    model, disc, loss_cfg = make(disc_start=5)
    counter = CallCounter(disc)
    x = images()
    before = vqgan_training_step(model, disc, x, step=4, loss_cfg=loss_cfg)
    assert counter.calls == 0 and before["disc_active"] is False
    assert before["d_loss"].item() == 0.0 and not before["d_loss"].requires_grad
    assert before["g_adv"] == 0.0 and before["d"] == 0.0 and before["disc_weight"] == 0.0
    torch.testing.assert_close(before["loss"].detach(), torch.tensor(before["rec"] + before["codebook"]))

    after = vqgan_training_step(model, disc, x, step=5, loss_cfg=loss_cfg)
    assert counter.calls == 3 and after["disc_active"] is True
    for key in ("rec", "codebook", "g_adv", "d", "disc_weight", "codebook_usage"):
        assert math.isfinite(after[key]), key
    assert after["d"] > 0 and after["disc_weight"] > 0
    after["loss"].backward()
    assert all(p.grad is None for p in disc.parameters())  # the generator loss does not train D
    assert model.last_layer.grad is not None
    after["d_loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())

    no_disc = vqgan_training_step(model, None, x, step=100, loss_cfg=loss_cfg)
    assert no_disc["disc_active"] is False and no_disc["d"] == 0.0


@pytest.mark.parametrize("rec_kind", ["l1", "l2"])
def test_loss_values_match_direct_formulas(rec_kind):
    model, disc, loss_cfg = make(disc_start=0, adaptive_disc_weight=False, rec_loss=rec_kind,
                                 codebook_weight=0.5, disc_weight=0.3, disc_factor=2.0)
    x = images()
    out = vqgan_training_step(model, disc, x, step=0, loss_cfg=loss_cfg)
    with torch.no_grad():
        reconstruction, codebook_loss, codes = model(x)
        diff = reconstruction - x
        rec = diff.abs().mean() if rec_kind == "l1" else (diff**2).mean()
        real, fake = disc(x), disc(reconstruction)
        g_adv = -fake.mean()
        d = 2.0 * 0.5 * (torch.clamp(1 - real, min=0).mean() + torch.clamp(1 + fake, min=0).mean())
        total = rec + 0.5 * codebook_loss + 2.0 * 0.3 * g_adv
    assert out["rec"] == pytest.approx(rec.item(), rel=1e-5)
    assert out["g_adv"] == pytest.approx(g_adv.item(), rel=1e-5, abs=1e-7)
    assert out["d"] == pytest.approx(d.item(), rel=1e-5)
    assert out["disc_weight"] == 0.3
    torch.testing.assert_close(out["loss"].detach(), total)
    assert out["codebook_usage"] == len(torch.unique(codes)) / CFG.n_embed


def test_adaptive_weight_matches_manual_gradient_norms():
    model, disc, loss_cfg = make(disc_start=0, disc_weight=0.8)
    x = images()
    out = vqgan_training_step(model, disc, x, step=0, loss_cfg=loss_cfg)
    reconstruction, _, _ = model(x)
    rec = (reconstruction - x).abs().mean()
    g_adv = -disc(reconstruction).mean()
    rec_grad = torch.autograd.grad(rec, model.last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(g_adv, model.last_layer)[0]
    expected = 0.8 * (rec_grad.norm() / (adv_grad.norm() + 1e-4)).item()
    assert out["disc_weight"] == pytest.approx(expected, rel=1e-4)


def test_reconstruction_gradient_reaches_encoder_through_straight_through():
    model, disc, loss_cfg = make(codebook_weight=0.0)
    out = vqgan_training_step(model, disc, images(), step=0, loss_cfg=loss_cfg)
    out["loss"].backward()  # reconstruction only: the encoder gets gradient only through z_q
    grad = model.vq_model.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.codebook.grad is None or model.codebook.grad.abs().sum() == 0


def test_codebook_usage_equals_unique_fraction():
    model, _, loss_cfg = make()
    x = images(batch=3)
    out = vqgan_training_step(model, None, x, step=0, loss_cfg=loss_cfg)
    codes = model.encode(x)
    assert out["codebook_usage"] == len(torch.unique(codes)) / CFG.n_embed
    assert 1 / CFG.n_embed < out["codebook_usage"] <= 1.0


def test_a_few_steps_reduce_reconstruction_loss():
    model, _, loss_cfg = make(seed=3)
    coarse = images(batch=2, seed=4)[:, :, ::4, ::4]  # smooth images a tiny model can learn quickly
    x = F.interpolate(coarse, size=CFG.resolution, mode="bilinear", align_corners=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(20):
        out = vqgan_training_step(model, None, x, step=step, loss_cfg=loss_cfg)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append(out["rec"])
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.75 * history[0], history


def test_patch_discriminator_shapes_and_validation():
    disc = PatchDiscriminator(in_channels=3, ndf=8, n_layers=2)
    assert disc.min_input_size == 12
    assert disc(torch.zeros(2, 3, 16, 16)).shape == (2, 1, 2, 2)
    assert disc(torch.zeros(1, 3, 12, 12)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 12x12"):
        disc(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        PatchDiscriminator(ndf=0)
    # per-image output does not depend on the other images of the batch (no batch statistics)
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(disc(x)[:1], disc(x[:1]))


def test_loss_config_validation():
    assert VQGANLossConfig.from_dict(VQGANLossConfig().to_dict()) == VQGANLossConfig()
    with pytest.raises(ValueError, match="rec_loss"):
        VQGANLossConfig(rec_loss="l3")
    with pytest.raises(ValueError, match="disc_loss"):
        VQGANLossConfig(disc_loss="wgan")
    with pytest.raises(ValueError, match="disc_start=-1"):
        VQGANLossConfig(disc_start=-1)
    with pytest.raises(ValueError, match="unknown VQGANLossConfig keys: \\['perceptual_weight'\\]"):
        VQGANLossConfig.from_dict({"perceptual_weight": 1.0})


def test_vanilla_discriminator_loss():
    model, disc, loss_cfg = make(disc_start=0, disc_loss="vanilla")
    x = images()
    out = vqgan_training_step(model, disc, x, step=0, loss_cfg=loss_cfg)
    with torch.no_grad():
        reconstruction, _, _ = model(x)
        real, fake = disc(x), disc(reconstruction)
        expected = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert out["d"] == pytest.approx(expected.item(), rel=1e-5)
