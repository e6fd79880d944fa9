"""VQGAN: config validation, encode/decode contract, and taming weight conversion checked against an
independent plain-torch taming-style forward pass written here."""

import json

import pytest
import torch
import torch.nn.functional as F

import easynlp_artist.models.stage1.vqgan as vqgan_module
from easynlp_artist.models.stage1 import (
    TAMING_PREFIX,
    VQGAN,
    VQGANConfig,
    convert_taming_state_dict,
    convert_to_taming_state_dict,
    images_to_uint8,
    load_taming_state_dict,
    select_first_stage,
    to_taming_state_dict,
)

# attention at level 0 (with down-sampling, decoder without up-sampling) and at the last level
# (encoder without down-sampling, decoder with up-sampling); nin_shortcuts where channels change.
CFG = VQGANConfig(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16, 4),
                  z_channels=12, embed_dim=6, n_embed=32, norm_groups=4)


# ---- independent taming-style reference --------------------------------------------------------------

def taming_shapes(cfg: VQGANConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of taming's Encoder/Decoder/VQModel, from its architecture."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k):
        shapes[name + ".weight"] = (cout, cin, k, k)
        shapes[name + ".bias"] = (cout,)

    def norm(name, c):
        shapes[name + ".weight"] = (c,)
        shapes[name + ".bias"] = (c,)

    def block(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    levels = len(cfg.ch_mult)
    chans = [cfg.ch * m for m in cfg.ch_mult]
    res = [cfg.resolution // 2**i for i in range(levels)]
    conv("encoder.conv_in", cfg.in_channels, cfg.ch, 3)
    c = cfg.ch
    for i in range(levels):
        for j in range(cfg.num_res_blocks):
            block(f"encoder.down.{i}.block.{j}", c, chans[i])
            c = chans[i]
            if res[i] in cfg.attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", c)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    for part in ("encoder", "decoder"):
        mid = chans[-1]
        block(f"{part}.mid.block_1", mid, mid)
        attn(f"{part}.mid.attn_1", mid)
        block(f"{part}.mid.block_2", mid, mid)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", c, cfg.z_channels, 3)
    conv("decoder.conv_in", cfg.z_channels, chans[-1], 3)
    c = chans[-1]
    for i in reversed(range(levels)):
        for j in range(cfg.num_res_blocks + 1):
            block(f"decoder.up.{i}.block.{j}", c, chans[i])
            c = chans[i]
            if res[i] in cfg.attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", c)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", c, cfg.out_channels, 3)
    conv("quant_conv", cfg.z_channels, cfg.embed_dim, 1)
    conv("post_quant_conv", cfg.embed_dim, cfg.z_channels, 1)
    shapes["quantize.embedding.weight"] = (cfg.n_embed, cfg.embed_dim)
    return shapes


def random_taming_state_dict(cfg: VQGANConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in taming_shapes(cfg).items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if name.endswith(".bias"):
            t = 0.1 * t
        elif len(shape) == 4:
            t = t / (shape[1] * shape[2] * shape[3]) ** 0.5
        elif len(shape) == 1:
            t = 1 + 0.1 * t
        sd[name] = t
    return sd


class TamingReference:
    def __init__(self, sd, cfg):
        self.sd, self.cfg = sd, cfg

    def conv(self, x, name, stride=1, padding=None):
        w = self.sd[name + ".weight"]
        padding = w.shape[-1] // 2 if padding is None else padding
        return F.conv2d(x, w, self.sd[name + ".bias"], stride=stride, padding=padding)

    def norm(self, x, name):
        return F.group_norm(x, self.cfg.norm_groups, self.sd[name + ".weight"], self.sd[name + ".bias"], eps=1e-6)

    def block(self, x, name):
        h = self.conv(F.silu(self.norm(x, name + ".norm1")), name + ".conv1")
        h = self.conv(F.silu(self.norm(h, name + ".norm2")), name + ".conv2")
        if name + ".nin_shortcut.weight" in self.sd:
            x = self.conv(x, name + ".nin_shortcut")
        return x + h

    def attn(self, x, name):
        b, c, hh, ww = x.shape
        h = self.norm(x, name + ".norm")
        q, k, v = (self.conv(h, f"{name}.{p}").reshape(b, c, hh * ww) for p in "qkv")
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=2)  # (B, query, key)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hh, ww)
        return x + self.conv(out, name + ".proj_out")

    def maybe_attn(self, x, name):
        return self.attn(x, name) if name + ".q.weight" in self.sd else x

    def mid(self, x, part):
        x = self.block(x, f"{part}.mid.block_1")
        x = self.attn(x, f"{part}.mid.attn_1")
        return self.block(x, f"{part}.mid.block_2")

    def encode(self, x):
        levels = len(self.cfg.ch_mult)
        h = self.conv(x, "encoder.conv_in")
        for i in range(levels):
            for j in range(self.cfg.num_res_blocks):
                h = self.maybe_attn(self.block(h, f"encoder.down.{i}.block.{j}"), f"encoder.down.{i}.attn.{j}")
            if i != levels - 1:
                h = self.conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2, padding=0)
        h = self.mid(h, "encoder")
        h = self.conv(F.silu(self.norm(h, "encoder.norm_out")), "encoder.conv_out")
        return self.conv(h, "quant_conv")

    def quantize(self, z):
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(b, h * w, 1, d)
        codebook = self.sd["quantize.embedding.weight"]
        codes = ((flat - codebook) ** 2).sum(-1).argmin(-1)  # (B, h*w), row-major over (h, w)
        return codes

    def decode(self, codes, grid):
        b = codes.shape[0]
        zq = self.sd["quantize.embedding.weight"][codes].reshape(b, grid, grid, -1).permute(0, 3, 1, 2)
        h = self.conv(self.conv(zq, "post_quant_conv"), "decoder.conv_in")
        h = self.mid(h, "decoder")
        for i in reversed(range(len(self.cfg.ch_mult))):
            for j in range(self.cfg.num_res_blocks + 1):
                h = self.maybe_attn(self.block(h, f"decoder.up.{i}.block.{j}"), f"decoder.up.{i}.attn.{j}")
            if i != 0:
                h = self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
        return self.conv(F.silu(self.norm(h, "decoder.norm_out")), "decoder.conv_out")


@pytest.fixture(scope="module")
def loaded():
    sd = random_taming_state_dict(CFG)
    model = VQGAN(CFG).double().eval()
    load_taming_state_dict(model, {TAMING_PREFIX + k: v for k, v in sd.items()})
    return model, TamingReference(sd, CFG), sd


def test_conversion_matches_independent_taming_forward(loaded):
    model, ref, _ = loaded
    images = torch.rand(3, CFG.in_channels, CFG.resolution, CFG.resolution, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        latents = model.encode_latents(images)
        ref_latents = ref.encode(images)
        torch.testing.assert_close(latents, ref_latents, rtol=1e-9, atol=1e-9)
        codes = model.encode(images)
        ref_codes = ref.quantize(ref_latents)
        assert codes.shape == (3, CFG.num_tokens) and codes.dtype == torch.long
        assert torch.equal(codes, ref_codes)
        assert len(torch.unique(codes)) > 1
        torch.testing.assert_close(model.decode(codes), ref.decode(codes, CFG.grid_size), rtol=1e-9, atol=1e-9)
        # the grid form decodes identically
        torch.testing.assert_close(model.decode(codes.view(3, CFG.grid_size, CFG.grid_size)), model.decode(codes))


def test_codes_are_row_major(loaded):
    model, _, _ = loaded
    images = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        latents = model.encode_latents(images)[0]  # (D, h, w)
        codes = model.encode(images)[0]
    codebook = model.codebook.detach()
    for r in range(CFG.grid_size):
        for c in range(CFG.grid_size):
            nearest = ((codebook - latents[:, r, c]) ** 2).sum(1).argmin()
            assert codes[r * CFG.grid_size + c] == nearest


def test_blockwise_nearest_codes_match_one_block(loaded, monkeypatch):
    model, _, _ = loaded
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        whole = model.encode(images)
        monkeypatch.setattr(vqgan_module, "DISTANCE_BLOCK_ELEMENTS", 3 * CFG.n_embed)  # 3 rows per block
        assert torch.equal(model.encode(images), whole)


def test_cpu_decode_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = VQGAN(CFG).eval()  # float32: where oneDNN's batch-size-dependent kernels round differently
    codes = torch.randint(0, CFG.n_embed, (5, CFG.num_tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = model.decode(codes)
        for i in range(len(codes)):
            assert torch.equal(model.decode(codes[i : i + 1]), batch[i : i + 1])
        assert torch.equal(model.decode(codes[[3, 1]]), batch[[3, 1]])
        # one decoder call for the whole batch: the same images up to rounding
        torch.testing.assert_close(model.decode_latents(model.embed_codes(codes)), batch)


def test_round_trip_taming_diffusers_taming_is_identical(loaded):
    model, _, sd = loaded
    back = to_taming_state_dict(model)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k
    prefixed = to_taming_state_dict(model, prefix=TAMING_PREFIX)
    assert all(k.startswith(TAMING_PREFIX) for k in prefixed)
    again = convert_to_taming_state_dict(convert_taming_state_dict(sd, CFG), CFG)
    assert all(torch.equal(again[k], sd[k]) for k in sd)


def test_key_map_covers_taming_layout_exactly():
    diffusers_keys = set(VQGAN(CFG).vq_model.state_dict())
    converted = convert_taming_state_dict(random_taming_state_dict(CFG), CFG)
    assert set(converted) == diffusers_keys
    assert converted["decoder.up_blocks.0.upsamplers.0.conv.weight"].shape == (16, 16, 3, 3)
    assert converted["encoder.mid_block.attentions.0.to_q.weight"].shape == (16, 16)


def test_conversion_errors_list_keys():
    sd = random_taming_state_dict(CFG)
    extra = dict(sd, **{"encoder.down.9.block.0.conv1.weight": torch.zeros(1), "loss.logvar": torch.zeros(())})
    with pytest.raises(ValueError, match=r"unexpected 2 key\(s\): encoder\.down\.9\.block\.0\.conv1\.weight, loss\.logvar"):
        convert_taming_state_dict(extra, CFG)
    missing = {k: v for k, v in sd.items() if not k.startswith("decoder.up.2.attn.1.")}
    with pytest.raises(ValueError, match=r"missing 10 key\(s\): decoder\.up\.2\.attn\.1\.k\.bias"):
        convert_taming_state_dict(missing, CFG)
    wrong = dict(sd, **{"quantize.embedding.weight": torch.zeros(CFG.n_embed + 1, CFG.embed_dim)})
    with pytest.raises(ValueError, match=r"quantize\.embedding\.weight: got \(33, 6\), expected \(32, 6\)"):
        convert_taming_state_dict(wrong, CFG)
    squeezed = dict(sd, **{"encoder.mid.attn_1.q.weight": sd["encoder.mid.attn_1.q.weight"][:, :, 0, 0]})
    with pytest.raises(ValueError, match="shape mismatch"):
        convert_taming_state_dict(squeezed, CFG)
    with pytest.raises(ValueError, match="unexpected"):
        convert_to_taming_state_dict(dict(VQGAN(CFG).vq_model.state_dict(), extra=torch.zeros(1)), CFG)


def test_select_first_stage_from_app_state_dict():
    sd = random_taming_state_dict(CFG)
    app = {TAMING_PREFIX + k: v for k, v in sd.items()}
    app["transformer.tok_emb.weight"] = torch.zeros(4, 2)
    selected = select_first_stage(app)
    assert set(selected) == set(sd) and all(selected[k] is sd[k] for k in sd)
    assert select_first_stage(sd) == sd
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\): transformer\.tok_emb\.weight"):
        convert_taming_state_dict(app, CFG)


def test_long_key_lists_are_truncated():
    with pytest.raises(ValueError, match=r"missing \d+ key\(s\): .*\.\.\. \(\d+ more\)"):
        convert_taming_state_dict({}, CFG)


def test_default_config_matches_taming_f16():
    cfg = VQGANConfig()
    assert (cfg.downsample_factor, cfg.grid_size, cfg.num_tokens) == (16, 16, 256)
    model = VQGAN(cfg)
    assert sum(p.numel() for p in model.parameters()) == 76_073_859
    assert model.vq_model.config.down_block_types[-1] == "AttnDownEncoderBlock2D"
    assert model.vq_model.config.up_block_types[0] == "AttnUpDecoderBlock2D"
    assert sum(t.startswith("Attn") for t in model.vq_model.config.down_block_types) == 1


def test_config_dict_round_trip_and_validation():
    data = json.loads(json.dumps(CFG.to_dict()))
    assert VQGANConfig.from_dict(data) == CFG
    with pytest.raises(ValueError, match="unknown VQGANConfig fields: double_z"):
        VQGANConfig.from_dict(dict(data, double_z=False))
    with pytest.raises(ValueError, match="resolution=18 is not divisible"):
        VQGANConfig(resolution=18, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="norm_groups=32 must divide .* \\[48\\]"):
        VQGANConfig(ch=48)
    with pytest.raises(ValueError, match="attn_resolutions \\[32\\]"):
        VQGANConfig(resolution=16, ch_mult=(1, 2), attn_resolutions=(32,))
    with pytest.raises(ValueError, match="n_embed=0"):
        VQGANConfig(n_embed=0)
    with pytest.raises(ValueError, match="ch_mult"):
        VQGANConfig(ch_mult=())
    with pytest.raises(ValueError, match="beta"):
        VQGANConfig(beta=-1.0)


def test_code_and_image_validation(loaded):
    model, _, _ = loaded
    with pytest.raises(ValueError, match=r"\[0, n_embed=32\), got values in \[0, 32\]"):
        model.decode(torch.tensor([[0] * (CFG.num_tokens - 1) + [CFG.n_embed]]))
    with pytest.raises(ValueError, match="got values in \\[-1, 0\\]"):
        model.decode(torch.tensor([[-1] + [0] * (CFG.num_tokens - 1)]))
    with pytest.raises(ValueError, match="integer tensor"):
        model.decode(torch.zeros(1, CFG.num_tokens))
    with pytest.raises(ValueError, match="num_tokens=16"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.zeros(1, 1, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(1, 3, 18, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="out of|integer tensor|n_embed"):
        model.codebook_usage(torch.tensor([CFG.n_embed]))


def test_codebook_usage_and_uint8():
    model = VQGAN(CFG)
    codes = torch.tensor([[0, 3, 3, 7], [7, 1, 0, 31]])
    assert model.codebook_usage(codes) == pytest.approx(5 / CFG.n_embed)
    images = torch.tensor([-2.0, -1.0, 0.0, 1.0, 1.5]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    pixels = images_to_uint8(images)
    assert pixels.shape == (1, 1, 5, 3) and pixels.dtype == torch.uint8
    assert pixels[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    out = model.decode_to_uint8(torch.zeros(2, CFG.num_tokens, dtype=torch.long))
    assert out.shape == (2, CFG.resolution, CFG.resolution, CFG.out_channels) and out.dtype == torch.uint8


def test_forward_codebook_loss_and_straight_through():
    torch.manual_seed(0)
    model = VQGAN(CFG)
    with torch.no_grad():
        model.codebook.normal_()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    reconstruction, loss, codes = model(images)
    assert reconstruction.shape == images.shape and codes.shape == (2, CFG.num_tokens)
    with torch.no_grad():
        latents = model.encode_latents(images)
        chosen = model.codebook[codes].view(2, CFG.grid_size, CFG.grid_size, -1).permute(0, 3, 1, 2)
        expected = (1 + CFG.beta) * ((latents - chosen) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    # straight-through: the gradient w.r.t. the latents equals the gradient w.r.t. the quantised vectors
    latents = latents.clone().requires_grad_(True)
    quantized, _, _ = model.quantize(latents)
    upstream = torch.randn_like(quantized)
    (quantized * upstream).sum().backward()
    torch.testing.assert_close(latents.grad, upstream)
    torch.testing.assert_close(quantized.detach(), chosen)


# ---- sub-pixel upsampling ---------------------------------------------------------------------------

def upsample_then_convolve(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """taming's Upsample(with_conv=True), written directly."""
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_subpixel_upsample_equals_upsample_then_convolve(layout):
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1).double()
    up = vqgan_module.SubpixelUpsample(conv)
    x = torch.randn(2, 5, 6, 9, dtype=torch.float64, generator=g).contiguous(memory_format=layout)
    x.requires_grad_(True)
    out = up(x)
    assert out.shape == (2, 7, 12, 18) and out.is_contiguous(memory_format=layout)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = upsample_then_convolve(ref_x, conv)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # gradients reach the input and the original 3x3 weights through the folded phase kernels
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    (out * grad).sum().backward()
    conv_grads = [p.grad.clone() for p in (conv.weight, conv.bias)]
    conv.zero_grad()
    (ref * grad).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-12)
    for got, p in zip(conv_grads, (conv.weight, conv.bias)):
        torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-12)


def test_subpixel_upsample_refolds_after_a_weight_update():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    up = vqgan_module.SubpixelUpsample(conv)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        up(x)
        kept = up.phase_weights()
        assert up.phase_weights() is kept  # reused while the weight is unchanged
        conv.weight.mul_(-2.0)  # an in-place update, as an optimizer step
        torch.testing.assert_close(up(x), upsample_then_convolve(x, conv), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="3x3 convolution with padding 1"):
        vqgan_module.SubpixelUpsample(torch.nn.Conv2d(3, 4, 3))


def test_decoder_upsamplers_are_subpixel_with_taming_keys():
    model = VQGAN(CFG)
    ups = [u for block in model.vq_model.decoder.up_blocks for u in (block.upsamplers or [])]
    assert len(ups) == len(CFG.ch_mult) - 1 and all(isinstance(u, vqgan_module.SubpixelUpsample) for u in ups)
    assert any(k.endswith("upsamplers.0.conv.weight") for k in model.vq_model.state_dict())
