"""The sampling loop's step callback (streaming previews) and speculative Jacobi decoding."""

import pytest
import torch
from helpers.tiny_gpt import TINY, batch, knowledge, tiny

from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig
from easynlp_artist.models.stage2.sampling import (
    JacobiStats,
    SamplingConfig,
    filter_logits,
    sample_image_tokens,
)


def test_callback_sees_each_drawn_position_once_with_the_final_codes_before_it():
    model = tiny()
    text, img = batch()
    seen = []
    out = sample_image_tokens(model, text, num_images_per_prompt=2, sampling=SamplingConfig(top_k=5),
                              image_prefix=img[:, :2], generator=torch.Generator().manual_seed(3),
                              callback=lambda i, codes: seen.append((i, codes.clone())))
    assert [i for i, _ in seen] == list(range(2, TINY["img_len"]))  # the prefix is not drawn
    for i, codes in seen:
        assert codes.shape == out.shape
        assert torch.equal(codes[:, : i + 1], out[:, : i + 1])
    assert torch.equal(seen[0][1][:, :2], img[:, :2].repeat_interleave(2, 0))


# ---- speculative Jacobi decoding ---------------------------------------------------------------------


def _jacobi(**kw):
    return SamplingConfig(method="jacobi", **kw)


@pytest.mark.parametrize("window", [1, 3, 16])
@pytest.mark.parametrize("fusion", ["input", "output"])
def test_jacobi_greedy_codes_equal_sequential_decoding(window, fusion):
    model = tiny(entity_dim=4, knowledge_fusion=fusion)
    text, img = batch()
    know = knowledge()
    if fusion == "output":
        know = know.with_nothing(torch.randn(4), 4)
    for guidance, prefix in ((1.0, None), (2.5, img[:, :2])):
        args = dict(num_images_per_prompt=2, image_prefix=prefix)
        seq = sample_image_tokens(model, text, know, sampling=SamplingConfig(top_k=1, guidance_scale=guidance), **args)
        stats = JacobiStats()
        jac = sample_image_tokens(model, text, know, sampling=_jacobi(top_k=1, guidance_scale=guidance,
                                                                      jacobi_window=window), stats=stats, **args)
        assert torch.equal(jac, seq), (guidance, window)
        free = TINY["img_len"] - (0 if prefix is None else 2)
        assert sum(m for _, _, m in stats.commits) == 6 * (free - 1)  # every code after the first one
        assert stats.passes <= free - 1


def test_jacobi_rows_depend_only_on_their_prompts_generator_and_callback_follows_the_slowest_row():
    model = tiny()
    text, _ = batch()
    s = _jacobi(top_k=6, jacobi_window=3)
    gens = lambda seeds: [torch.Generator().manual_seed(x) for x in seeds]  # noqa: E731
    seen = []
    together = sample_image_tokens(model, text, num_images_per_prompt=2, sampling=s, generator=gens([5, 6, 7]),
                                   callback=lambda i, codes: seen.append((i, codes.clone())))
    alone = sample_image_tokens(model, text[1:2], num_images_per_prompt=2, sampling=s, generator=gens([6]))
    assert torch.equal(together[2:4], alone)
    assert [i for i, _ in seen] == list(range(TINY["img_len"]))
    assert all(torch.equal(codes[:, : i + 1], together[:, : i + 1]) for i, codes in seen)
    again = sample_image_tokens(model, text, num_images_per_prompt=2, sampling=s, generator=gens([5, 6, 7]))
    assert torch.equal(again, together)


def test_jacobi_settings_are_checked():
    with pytest.raises(ValueError, match="method must be one of sequential, jacobi"):
        SamplingConfig(method="lookahead")
    with pytest.raises(ValueError, match="jacobi_window must be >= 1"):
        SamplingConfig(method="jacobi", jacobi_window=0)
    text, _ = batch()
    with pytest.raises(ValueError, match="use_cache=True"):
        sample_image_tokens(tiny(), text, sampling=_jacobi(), use_cache=False)
    assert SamplingConfig.from_dict(_jacobi(jacobi_window=4).to_dict()) == _jacobi(jacobi_window=4)


# The distribution: a model with 3 codes and 4 image positions has 81 images, whose exact
# probabilities under the sampling settings are computed by teacher forcing every one of them.
SMALL = {**TINY, "img_vocab_size": 3, "img_len": 4}


def _small(fusion="input"):
    torch.manual_seed(4)
    model = ArtistGPT(GPTConfig(**SMALL, entity_dim=4, knowledge_fusion=fusion)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def _keep_top(logits, top_k, top_p):
    """Top-k / top-p, written out again for the reference (codes outside → -inf)."""
    out = logits.clone()
    for row in out.view(-1, out.shape[-1]):
        order = row.argsort(descending=True)
        keep = len(order) if not top_k else top_k
        if top_p is not None:
            probs = row[order].softmax(0)
            keep = min(keep, int((probs.cumsum(0) - probs < top_p).sum()))
        row[order[keep:]] = float("-inf")
    return out


def _exact_image_probs(model, text, know, prefix, cfg):
    """p(image) for every image after the prefix (V^m, in base-V order of the free codes)."""
    V, img_len, k = SMALL["img_vocab_size"], SMALL["img_len"], prefix.shape[1]
    free = torch.cartesian_prod(*[torch.arange(V)] * (img_len - k)).view(-1, img_len - k)
    images = torch.cat([prefix.expand(free.shape[0], k), free], 1)
    N = images.shape[0]
    with torch.no_grad():
        logits = model.image_logits(text.expand(N, -1), images, know.index_select(torch.zeros(N, dtype=torch.long)))
        if cfg.guidance_scale != 1.0:
            empty = know.with_mask(torch.zeros_like(know.mask)).index_select(torch.zeros(N, dtype=torch.long))
            uncond = model.image_logits(torch.zeros_like(text).expand(N, -1), images, empty)
            logits = uncond + cfg.guidance_scale * (logits - uncond)
    logp = _keep_top(logits / cfg.temperature, cfg.top_k, cfg.top_p).log_softmax(-1)
    per_code = logp.gather(-1, images[..., None])[..., 0][:, k:]
    return per_code.sum(1).exp(), free


def _chi_square_p_value(codes, probs, free_codes):
    """p-value of the sampled free codes (N, m) against the exact probabilities (merging cells with
    fewer than 5 expected into one); a sample of an image of probability 0 fails at once."""
    V = SMALL["img_vocab_size"]
    weights = V ** torch.arange(free_codes.shape[1] - 1, -1, -1)
    counts = torch.bincount((codes * weights).sum(1), minlength=probs.shape[0]).double()
    assert torch.equal((free_codes * weights).sum(1), torch.arange(probs.shape[0]))
    assert counts[probs == 0].sum() == 0, "sampled an image the filters exclude"
    expected = probs.double() * codes.shape[0]
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    chi2 = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor((len(obs) - 1) / 2.0, dtype=torch.double), chi2 / 2))


CASES = {
    "plain, knowledge": (dict(), "input", 0, 2),
    "guided, top-k, temperature": (dict(guidance_scale=2.0, top_k=2, temperature=0.7), "input", 0, 3),
    "top-p, image prompt, output fusion": (dict(top_p=0.8, temperature=1.3), "output", 1, 2),
}
SAMPLES = 6000


@pytest.mark.parametrize("case", CASES)
def test_jacobi_samples_the_sequential_distribution(case):
    settings, fusion, k, window = CASES[case]
    model = _small(fusion)
    g = torch.Generator().manual_seed(11)
    text = torch.randint(1, SMALL["text_vocab_size"], (1, SMALL["text_len"]), generator=g)
    know = knowledge(b=1)
    if fusion == "output":
        know = know.with_nothing(torch.randn(4, generator=g), 3)
    prefix = torch.randint(0, SMALL["img_vocab_size"], (1, k), generator=g)
    exact, free = _exact_image_probs(model, text, know, prefix, SamplingConfig(**settings))
    assert (exact > 0.02).sum() >= 4  # several likely images: a distribution worth testing
    torch.testing.assert_close(exact.sum(), torch.tensor(1.0))
    stats = JacobiStats()
    for cfg in (SamplingConfig(**settings), _jacobi(jacobi_window=window, **settings)):
        codes = sample_image_tokens(model, text, know, num_images_per_prompt=SAMPLES, sampling=cfg,
                                    image_prefix=prefix, generator=torch.Generator().manual_seed(1),
                                    stats=stats)
        assert torch.equal(codes[:, :k], prefix.expand(SAMPLES, k))
        assert _chi_square_p_value(codes[:, k:], exact, free) > 1e-4, (case, cfg.method)
    assert stats.passes > 0 and any(m > 1 for _, _, m in stats.commits)  # guesses were accepted
    assert any(m == 1 for _, _, m in stats.commits)  # and rejected


def test_the_chi_square_check_rejects_a_nearby_distribution():
    """The check has power: codes sampled at temperature 1.15 fail against the exact probabilities at 1."""
    model = _small()
    text = torch.randint(1, SMALL["text_vocab_size"], (1, SMALL["text_len"]), generator=torch.Generator().manual_seed(11))
    know, prefix = knowledge(b=1), torch.zeros(1, 0, dtype=torch.long)
    exact, free = _exact_image_probs(model, text, know, prefix, SamplingConfig())
    codes = sample_image_tokens(model, text, know, num_images_per_prompt=SAMPLES, sampling=_jacobi(temperature=1.15),
                                generator=torch.Generator().manual_seed(1))
    assert _chi_square_p_value(codes, exact, free) < 1e-4


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_top_p_searched_among_candidates_keeps_the_full_sort_nucleus(top_p):
    """Rows whose nucleus lies within the first candidates, within the second, and beyond both."""
    g = torch.Generator().manual_seed(0)
    V = 4096
    logits = torch.randn(6, V, generator=g) * torch.tensor([8.0, 6.0, 4.0, 2.0, 0.5, 0.05])[:, None]
    logits[5, :3] = 5.0  # ties among the most likely (the order among tied codes at the edge is arbitrary)
    logits = torch.cat([logits, filter_logits(logits[:2], 300, None)])  # after a top-k filter
    kept = filter_logits(logits, None, top_p).isfinite()
    assert torch.equal(kept, _keep_top(logits, None, top_p).isfinite())
    sizes = kept.sum(1)
    assert sizes.min() < 256 < sizes.max()  # nuclei within the first candidates and beyond them
    assert top_p < 0.9 or sizes.max() > 2048  # and beyond the second ones: the full sort
