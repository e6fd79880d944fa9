"""Stage-2 GPT: shapes, knowledge fusion, sampling (the KV cache and packed weights:
test_decoding.py; the original weight layout: test_convert.py)."""

import math

import pytest
import torch
from helpers.tiny_gpt import TINY, batch, knowledge, tiny

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig
from easynlp_artist.models.stage2.sampling import (
    SamplingConfig,
    _draw,
    filter_logits,
    guide,
    sample_image_tokens,
)
from easynlp_artist.tokenization import char_vocab, load_tokenizer, write_vocab


def test_config_derives_sizes_and_validates():
    c = GPTConfig()
    assert (c.vocab_size, c.block_size) == (16384 + 21128, 32 + 256)
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="caption_dropout"):
        GPTConfig(caption_dropout=1.0)
    with pytest.raises(ValueError, match="unknown GPTConfig fields: bogus"):
        GPTConfig.from_dict({"bogus": 1})


def test_release_parameter_count():
    shapes = ArtistGPT.expected_shapes(GPTConfig())
    n = sum(math.prod(s) for s in shapes.values())
    assert n == 126_669_312
    shapes_k = ArtistGPT.expected_shapes(GPTConfig(entity_dim=100))
    assert shapes_k["ent_emb.weight"] == (768, 100)


def test_shapes_and_loss_is_image_nll():
    model = tiny()
    text, img = batch()
    logits = model.image_logits(text, img)
    assert logits.shape == (3, TINY["img_len"], TINY["img_vocab_size"])
    loss = model(text, img)
    manual = -logits.log_softmax(-1).gather(-1, img.unsqueeze(-1)).mean()
    torch.testing.assert_close(loss, manual)


def test_no_entities_equals_knowledge_off():
    plain, with_k = tiny(), tiny(entity_dim=4)
    state = {k: v for k, v in with_k.state_dict().items() if not k.startswith("ent_emb")}
    plain.load_state_dict(state)
    text, img = batch()
    ref = plain.image_logits(text, img)
    k = knowledge()
    none = KnowledgeInputs(k.vectors, k.starts, k.ends, torch.zeros_like(k.mask))
    for know in (None, KnowledgeInputs.empty(3, 4), none):
        torch.testing.assert_close(with_k.image_logits(text, img, know), ref)


def test_knowledge_reaches_every_image_position_and_only_covered_tokens():
    model = tiny(entity_dim=4)
    text, img = batch()
    k = knowledge()
    a, b = model.image_logits(text, img), model.image_logits(text, img, k)
    diff = (a - b).abs().amax(-1)  # (B, img_len)
    assert (diff[:2] > 1e-4).all(), "fused entities must change every image position of rows with entities"
    assert diff[2].max() == 0, "a row without entities is unchanged"
    emb_plain = model.embed_text(text, None)
    emb_fused = model.embed_text(text, k)
    changed = (emb_plain - emb_fused).abs().amax(-1) > 0  # (B, text_len)
    assert changed.tolist() == [
        [True, True, True, True, False],
        [False, False, True, False, False],
        [False] * 5,
    ]


def test_gradients_reach_fusion_projection():
    model = tiny(entity_dim=4).train()
    text, img = batch()
    model(text, img, knowledge()).backward()
    assert model.ent_emb.weight.grad is not None and model.ent_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_entity_width_checked():
    model = tiny(entity_dim=4)
    text, img = batch()
    with pytest.raises(ValueError, match="entity_dim=4"):
        model.image_logits(text, img, knowledge(dim=5))
    with pytest.raises(ValueError, match="no knowledge part"):
        tiny().image_logits(text, img, knowledge())


def test_caption_dropout_only_in_training():
    model = tiny(entity_dim=4, caption_dropout=0.5)
    text, img = batch(b=3)
    k = knowledge()
    torch.testing.assert_close(model.image_logits(text, img, k), tiny(entity_dim=4).image_logits(text, img, k))
    model.train()
    torch.manual_seed(0)
    dropped_text, dropped_k = model._drop_captions(text, k)
    rows = (dropped_text == 0).all(1)
    assert torch.equal(dropped_k.mask[rows], torch.zeros_like(dropped_k.mask[rows]))
    assert torch.equal(dropped_text[~rows], text[~rows])
    drops = [model._drop_captions(text, None)[0].eq(0).all(1).float().mean() for _ in range(400)]
    assert abs(torch.stack(drops).mean().item() - 0.5) < 0.08


@pytest.mark.parametrize("p", [1.0, -0.1])
def test_mention_dropout_is_a_probability_below_one(p):
    with pytest.raises(ValueError, match=r"mention_dropout must be in \[0, 1\)"):
        GPTConfig(mention_dropout=p)


def test_mention_dropout_feeds_random_ordinary_tokens_exactly_where_entities_are(tmp_path, monkeypatch):
    # the special ids of a real vocabulary of the model's size (char_vocab's, as small models use)
    write_vocab(char_vocab("海王星蓝色的球一个大小红绿黄紫白黑圆方形三角天空地面")[: TINY["text_vocab_size"]], tmp_path / "v.txt")
    tokenizer = load_tokenizer(tmp_path / "v.txt")
    assert len(tokenizer) == TINY["text_vocab_size"]
    special = torch.tensor(tokenizer.all_special_ids)
    model = tiny(entity_dim=4, mention_dropout=0.999).train()
    text, img = batch()
    k = knowledge()
    covered = k.coverage(TINY["text_len"]).any(-1)  # (B, Tt); row 2 has no entity
    fed, fused_with = [], []
    model.tok_emb.register_forward_pre_hook(lambda m, args: fed.append(args[0] - TINY["img_vocab_size"]))
    embed_text = model.embed_text
    monkeypatch.setattr(model, "embed_text", lambda ids, know: fused_with.append(know) or embed_text(ids, know))
    changed = torch.zeros_like(covered)
    for seed in range(20):
        fed.clear()
        torch.manual_seed(seed)
        model.image_logits(text, img, k)
        ids = fed[0]  # the text tokens the model embedded (the first lookup; the image codes follow)
        assert torch.equal(ids[~covered], text[~covered]), "only covered tokens may change"
        assert not torch.isin(ids[covered], special).any(), "a replacement must not be a special token"
        assert ((ids >= 0) & (ids < TINY["text_vocab_size"])).all()
        changed |= ids != text
        assert fused_with[-1] is k, "the entities go in unchanged"
    # a covered token keeps its id only when the random draw repeats it (1 in 25): 20 runs replace each
    assert torch.equal(changed, covered)
    assert torch.equal(model._drop_mentions(text, None), text), "no knowledge: nothing to drop"
    half, blank = tiny(entity_dim=4, mention_dropout=0.5).train(), torch.zeros_like(text)
    draws = []
    for seed in (3, 3, 4, 4):
        torch.manual_seed(seed)
        draws.append(torch.stack([half._drop_mentions(text, k) for _ in range(4)]))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[2], draws[3]), "torch.manual_seed reproduces it"
    assert not torch.equal(draws[0], draws[2])
    # each row is dropped on its own with probability p (rows 0 and 1 have entities; an all-[PAD]
    # text shows every drop, as no replacement is [PAD])
    rows = torch.stack([half._drop_mentions(blank, k)[:2].ne(0).any(1) for _ in range(400)]).float()  # (400, 2)
    assert abs(rows[:, 0].mean().item() - 0.5) < 0.08 and abs(rows[:, 1].mean().item() - 0.5) < 0.08
    assert abs((rows[:, 0] * rows[:, 1]).mean().item() - 0.25) < 0.06


def test_mention_dropout_not_in_eval_prefill_or_sampling():
    model, plain = tiny(entity_dim=4, mention_dropout=0.999), tiny(entity_dim=4)  # the same weights
    text, img = batch()
    k = knowledge()
    assert torch.equal(model.image_logits(text, img, k), plain.image_logits(text, img, k))
    model.train(), plain.train()  # (the tiny model has no other dropout)
    assert torch.equal(model.prefill(text, k, None), plain.prefill(text, k, None))
    s = SamplingConfig(top_k=5)
    draw = lambda m: sample_image_tokens(m, text, k, sampling=s, generator=torch.Generator().manual_seed(4))  # noqa: E731
    assert torch.equal(draw(model), draw(plain))
    assert not torch.equal(model.image_logits(text, img, k), plain.image_logits(text, img, k))  # training does drop


def test_sampling_with_guidance_cache_equals_recompute():
    model = tiny(entity_dim=4)
    text, _ = batch()
    s = SamplingConfig(top_k=5, guidance_scale=3.0)
    runs = [
        sample_image_tokens(
            model, text, knowledge(), num_images_per_prompt=2, sampling=s,
            generator=torch.Generator().manual_seed(7), use_cache=c,
        )
        for c in (True, False)
    ]
    assert torch.equal(*runs)


def test_same_seed_same_tokens_and_valid_codes():
    model = tiny()
    text, _ = batch()
    run = lambda seed: sample_image_tokens(  # noqa: E731
        model, text, num_images_per_prompt=4, generator=torch.Generator().manual_seed(seed)
    )
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (12, TINY["img_len"])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < TINY["img_vocab_size"]


def test_guidance_scale_one_is_plain_conditional_sampling():
    model = tiny(entity_dim=4)
    text, _ = batch()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = sample_image_tokens(model, text, knowledge(), sampling=SamplingConfig(), generator=gen())
    one = sample_image_tokens(model, text, knowledge(), sampling=SamplingConfig(guidance_scale=1.0), generator=gen())
    assert torch.equal(plain, one)
    # guidance mixes logits exactly: scale 1 gives the conditional logits, 0 the unconditional ones
    c, u = torch.randn(4, 20), torch.randn(4, 20)
    torch.testing.assert_close(guide(c, u, 1.0), c)
    torch.testing.assert_close(guide(c, u, 0.0), u)
    # with scale 0 the prompt no longer matters: every prompt samples like the empty caption
    zero = SamplingConfig(guidance_scale=0.0, top_k=1)
    empty = torch.zeros_like(text)
    assert torch.equal(
        sample_image_tokens(model, text, knowledge(), sampling=zero),
        sample_image_tokens(model, empty, sampling=SamplingConfig(top_k=1)),
    )


def test_image_prompt_completion_keeps_the_prefix():
    model = tiny()
    text, img = batch()
    out = sample_image_tokens(model, text, image_prefix=img[:, :3], num_images_per_prompt=2,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :3], img[:, :3].repeat_interleave(2, 0))
    greedy = SamplingConfig(top_k=1)
    a = sample_image_tokens(model, text, image_prefix=img[:, :3], sampling=greedy)
    b = sample_image_tokens(model, text, image_prefix=img[:, :3], sampling=greedy, use_cache=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="fewer than img_len"):
        sample_image_tokens(model, text, image_prefix=img)


def test_filter_logits_against_sorting_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, 0.1, 0.2, 4.0]])
    top2 = filter_logits(logits, 2, None)
    assert torch.isfinite(top2).tolist() == [[False, True, True, False], [True, False, False, True]]
    p = logits.softmax(-1)
    # row 0 probabilities sorted: 3.0 (0.64), 2.0 (0.24), ... → top_p 0.7 keeps two codes
    assert p[0, 1] < 0.7 < p[0, 1] + p[0, 2]
    nucleus = filter_logits(logits, None, 0.7)
    assert torch.isfinite(nucleus[0]).tolist() == [False, True, True, False]
    assert torch.isfinite(nucleus[1]).tolist() == [False, False, False, True]  # 0.93 alone ≥ 0.7
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)


def test_per_prompt_generators_make_rows_independent_of_the_batch():
    model = tiny()
    text, _ = batch()
    s = SamplingConfig(top_k=6)
    gens = lambda seeds: [torch.Generator().manual_seed(x) for x in seeds]  # noqa: E731
    together = sample_image_tokens(model, text, num_images_per_prompt=2, sampling=s, generator=gens([5, 6, 7]))
    alone = sample_image_tokens(model, text[1:2], num_images_per_prompt=2, sampling=s, generator=gens([6]))
    assert torch.equal(together[2:4], alone)
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        sample_image_tokens(model, text, generator=gens([1, 2]))


@pytest.mark.parametrize("per_prompt_generators", [False, True])
def test_draw_follows_the_probabilities_and_never_picks_a_zero(per_prompt_generators):
    # the inverse-CDF draw against the distribution it samples: 40 000 rows of one distribution
    # (codes 2 and 5 have no mass, as after top-k); every frequency within 5 standard errors
    p = torch.tensor([0.05, 0.25, 0.0, 0.4, 0.3, 0.0])
    n = 40_000
    probs = p.expand(n, -1) * 3.0  # unnormalised mass is fine (the draw scales by the row's total)
    if per_prompt_generators:
        drawn = _draw(probs, [torch.Generator().manual_seed(s) for s in range(4)], n // 4)
    else:
        drawn = _draw(probs, torch.Generator().manual_seed(0), 1)
    assert drawn.shape == (n, 1) and drawn.dtype == torch.long
    freq = torch.bincount(drawn[:, 0], minlength=p.numel()).double() / n
    assert freq[2] == 0 and freq[5] == 0
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert ((freq - p.double()).abs() <= 5 * se + 1e-12).all(), (freq, p)
    # a row with all its mass on the last code, and one with all of it on the first
    one_hot = torch.zeros(2, 6)
    one_hot[0, -1] = one_hot[1, 0] = 1.0
    assert _draw(one_hot, torch.Generator().manual_seed(1), 1)[:, 0].tolist() == [5, 0]
