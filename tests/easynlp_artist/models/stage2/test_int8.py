"""int8 weight-only decoding (decoding.INT8): the quantised weights, the product, and the model's
next-code distributions against fp32."""

import pytest
import torch
from helpers.tiny_gpt import TINY, batch, knowledge, tiny

from easynlp_artist.models.stage2.decoding import INT8, decoding_linears, new_cache
from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens


def test_int8_codes_are_per_channel_symmetric_and_the_product_matches_the_dequantised_weight():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 32, generator=g) * torch.linspace(0.01, 3, 40)[:, None]  # channels of very different size
    q = INT8.prepare(w, 1)
    assert q.codes.dtype == torch.int8 and q.scales.shape == (40,) and int(q.codes.abs().max()) <= 127
    deq = q.codes.double() * q.scales.double()[:, None]
    assert ((w.double() - deq).abs() <= q.scales.double()[:, None] / 2 + 1e-12).all()  # half a step at most
    assert (q.codes.abs().amax(1) >= 126).all()  # each channel uses its range
    x = torch.randn(2, 5, 32, generator=g)
    bias = torch.randn(40, generator=g)
    y = INT8.multiply(x, q, bias, torch.nn.GELU())
    ref = torch.nn.functional.gelu(x.bfloat16().double() @ deq.T + bias.double())
    assert y.shape == (2, 5, 40) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=0.01, atol=0.02)  # bf16 output rounding


def _kl(p_logits, q_logits):
    p = p_logits.log_softmax(-1)
    return (p.exp() * (p - q_logits.log_softmax(-1))).sum(-1)


@pytest.mark.parametrize("entity_dim", [None, 4])
def test_int8_decoding_stays_close_to_fp32(entity_dim):
    model = tiny(entity_dim=entity_dim)
    text, img = batch()
    know = knowledge() if entity_dim else None
    full = model.image_logits(text, img, know)  # fp32, teacher forcing
    cache = new_cache(model, 3, weights="int8")
    assert set(cache.packed) == set(decoding_linears(model))  # every Linear of a step, head included
    with torch.no_grad():
        logits = [model.prefill(text, know, cache)]
        logits += [model.step(img[:, i : i + 1], cache) for i in range(TINY["img_len"] - 1)]
    logits = torch.stack(logits, 1)
    assert not torch.equal(logits, full)
    assert (logits - full).abs().max() < 0.05 * full.abs().max()
    assert _kl(full, logits).mean() < 2e-3
    greedy = SamplingConfig(top_k=1, weights="int8")
    assert torch.equal(sample_image_tokens(model, text, know, sampling=greedy),
                       sample_image_tokens(model, text, know, sampling=SamplingConfig(top_k=1, weights="int8",
                                                                                     method="jacobi")))


def test_int8_setting_is_checked():
    with pytest.raises(ValueError, match="weights must be one of model, int8, got 'int4'"):
        SamplingConfig(weights="int4")
    with pytest.raises(ValueError, match="weights must be one of model, int8"):
        new_cache(tiny(), 1, weights="fp8")
    assert not new_cache(tiny(), 1, weights="int8", pack_weights=False).packed
