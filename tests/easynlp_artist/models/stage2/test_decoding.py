"""Cached decoding: the KV cache equals the full recompute, with and without oneDNN-packed weights
(fp32 and bf16, knowledge on and off); packed copies are kept between calls, remade after an
in-place update and dropped on train() or a cast."""

import copy

import pytest
import torch
from helpers.tiny_gpt import TINY, batch, knowledge, tiny

from easynlp_artist.models.stage2 import decoding
from easynlp_artist.models.stage2.decoding import (
    PACK_MIN_PRODUCT,
    decoding_linears,
    new_cache,
    one_row_packing_pays,
    packed_weights,
)
from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens


@pytest.mark.parametrize("pack_weights", [False, True])
@pytest.mark.parametrize("entity_dim", [None, 4])
def test_kv_cache_equals_full_recompute(entity_dim, pack_weights):
    model = tiny(entity_dim=entity_dim)
    text, img = batch()
    know = knowledge() if entity_dim else None
    full = model.image_logits(text, img, know)  # teacher forcing, one pass
    cache = new_cache(model, 3, pack_weights=pack_weights)
    assert bool(cache.packed) == pack_weights
    step_logits = [model.prefill(text, know, cache)]
    for i in range(TINY["img_len"] - 1):
        step_logits.append(model.step(img[:, i : i + 1], cache))
    torch.testing.assert_close(torch.stack(step_logits, 1), full, rtol=1e-5, atol=1e-5)
    # a cached prefix followed by a multi-token block
    cache = new_cache(model, 3)
    model.prefill(text, know, cache)
    h = model._run(model.tok_emb(img[:, :3]), cache)
    torch.testing.assert_close(model.head(h), full[:, 1:4], rtol=1e-5, atol=1e-5)
    greedy = SamplingConfig(top_k=1)
    a = sample_image_tokens(model, text, know, sampling=greedy, use_cache=True)
    b = sample_image_tokens(model, text, know, sampling=greedy, use_cache=False)
    assert torch.equal(a, b)


def test_decoding_packs_weights_where_it_pays_off_and_bf16_packed_matches_plain():
    model = tiny()
    assert torch.backends.mkldnn.is_available()  # the pinned CPU build ships oneDNN
    assert not new_cache(model, 3).packed  # products this small never pay for oneDNN's call
    wide = tiny(n_embd=256)  # 256-wide: at 8 rows qkv (768x256) and the MLP's two (1024x256) are large enough
    linears = list(decoding_linears(wide))
    big = {m for m in linears if 8 * m.weight.numel() >= PACK_MIN_PRODUCT}
    assert set(new_cache(wide, 8).packed) == big and len(big) == 3 * TINY["n_layer"]
    assert not new_cache(wide, 3).packed
    assert set(new_cache(wide, 1, rows_per_step=8).packed) == big  # rows per step decide, not the batch
    assert len(new_cache(wide, 3, pack_weights=True).packed) == len(linears)  # asked for: every Linear
    # one fp32 row: as measured on this CPU, once per model
    assert bool(new_cache(wide, 1).packed) == one_row_packing_pays(wide)
    bf16 = tiny().to(torch.bfloat16).eval()
    text, img = batch()
    logits = []
    for pack in (False, True):
        cache = new_cache(bf16, 3, pack_weights=pack)
        out = [bf16.prefill(text, None, cache)]
        out += [bf16.step(img[:, i : i + 1], cache) for i in range(4)]
        logits.append(torch.stack(out).float())
    # same products in bf16, summed in a different order: bf16 rounding apart (eps 2**-8)
    torch.testing.assert_close(logits[1], logits[0], rtol=0.05, atol=0.05)
    full = tiny().eval().image_logits(text, img)[:, :5].transpose(0, 1)
    assert (logits[1] - full).abs().max() < 0.1 * full.abs().max()
    # keys and values of a bf16 model on CPU are kept in fp32 (attention runs there); a bf16 cache
    # when asked for gives the same logits within bf16 rounding
    assert new_cache(bf16, 3).k.dtype == torch.float32
    cache = new_cache(bf16, 3, dtype=torch.bfloat16)
    assert cache.k.dtype == torch.bfloat16
    out = [bf16.prefill(text, None, cache)] + [bf16.step(img[:, i : i + 1], cache) for i in range(4)]
    torch.testing.assert_close(torch.stack(out).float(), logits[1], rtol=0.05, atol=0.05)


@pytest.fixture
def pack_small(monkeypatch):
    """The tiny model's products are too small to pack by default; these tests are about the copies."""
    monkeypatch.setattr(decoding, "PACK_MIN_PRODUCT", 1)


def test_packed_weights_are_kept_between_calls_and_remade_when_a_weight_changes(pack_small):
    model = tiny()
    text, _ = batch()
    greedy = SamplingConfig(top_k=1)
    first = new_cache(model, 3).packed
    assert all(new_cache(model, 3).packed[m] is w for m, w in first.items())  # kept, not repacked
    assert all(new_cache(model, 7).packed[m] is w for m, w in first.items())  # for any row count
    with torch.no_grad():
        model.head.weight.mul_(-1.5)  # an in-place update, as an optimizer step makes
    again = new_cache(model, 3).packed
    assert again[model.head] is not first[model.head]
    assert all(again[m] is first[m] for m in first if m is not model.head)
    # decoding with the remade copy still equals the full recompute (a stale copy would not:
    # the head's sign flipped, so greedy picks different codes)
    a = sample_image_tokens(model, text, sampling=greedy)
    assert torch.equal(a, sample_image_tokens(model, text, sampling=greedy, use_cache=False))
    model.load_state_dict(tiny(seed=3).state_dict())
    assert all(new_cache(model, 3).packed[m] is not w for m, w in again.items())
    assert torch.equal(sample_image_tokens(model, text, sampling=greedy),
                       sample_image_tokens(model, text, sampling=greedy, use_cache=False))
    assert len(packed_weights(model)) == 4 * TINY["n_layer"] + 1
    assert set(model.state_dict()) == set(tiny().state_dict())  # the kept copies are no weights
    model.train()
    assert not packed_weights(model)
    new_cache(model.eval(), 3)
    assert packed_weights(model)
    model.to(torch.bfloat16)  # a cast or move drops the copies of the old weights at once
    assert not packed_weights(model)
    assert all(w.dtype == torch.bfloat16 for w in new_cache(model, 3).packed.values())


def test_a_model_with_packed_weights_can_be_deep_copied(pack_small):
    model = tiny()
    text, _ = batch()
    greedy = SamplingConfig(top_k=1)
    before = sample_image_tokens(model, text, sampling=greedy)
    assert packed_weights(model)
    twin = copy.deepcopy(model)  # the copy starts without packed copies and makes its own
    assert not packed_weights(twin) and packed_weights(model)
    assert torch.equal(sample_image_tokens(twin, text, sampling=greedy), before)
    assert packed_weights(twin)


@pytest.mark.parametrize("packed_faster", [True, False])
def test_one_row_packing_follows_the_measurement_once_and_keeps_no_unused_copies(monkeypatch, packed_faster):
    """The one-row choice is whichever pass was faster; the timer is replaced by fixed figures (a
    machine of known speed cannot be arranged here), everything else is real."""
    model = tiny(n_embd=1024)  # one-row products of 1024x1024 and more: measured
    calls = []

    def timed(linears, inputs, multiply):
        multiply(linears[0], inputs[0])  # both forms really run
        calls.append(len(linears))
        return 1.0 if (len(calls) % 2 == 0) == packed_faster else 2.0  # plain first, then packed

    monkeypatch.setattr(decoding, "_pass_seconds", timed)
    first = new_cache(model, 1)
    assert bool(first.packed) == packed_faster
    assert len(calls) == 2 and calls[0] == len([m for m in decoding_linears(model) if m.weight.numel() >= PACK_MIN_PRODUCT])
    assert bool(new_cache(model, 1).packed) == packed_faster and len(calls) == 2  # kept, not measured again
    assert bool(packed_weights(model)) == packed_faster  # copies made only to be measured are dropped
    model.to(torch.float32)  # a move or cast drops the copies and the measurement with them
    new_cache(model, 1)
    assert len(calls) == 4


def test_a_model_made_under_inference_mode_decodes_through_packed_copies():
    """Inference tensors keep no version counter; the packed copies of such a model are still made,
    and decoding through them equals the full recompute (it raised before, at any packed row count)."""
    with torch.inference_mode():
        model = tiny(n_embd=256)
        text, _ = batch(8)
        assert model.head.weight.is_inference() and new_cache(model, 8).packed
        greedy = SamplingConfig(top_k=1)
        assert torch.equal(sample_image_tokens(model, text, sampling=greedy),
                           sample_image_tokens(model, text, sampling=greedy, use_cache=False))
