"""ArtistPipeline as diffusers users expect it: negative_prompt, return_dict, out[0], progress bar,
callback_on_step_end, make_image_grid, repr, clear errors for prompts that are not strings."""

import io

import numpy as np
import pytest
import torch
from helpers.tiny import randomize_, tiny_artist_config
from PIL import Image

from easynlp_artist import make_image_grid
from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import char_vocab, load_tokenizer, write_vocab

CHARS = "一个红色的圆形番茄柠檬黄在白背景上"


@pytest.fixture
def pipe(tmp_path):
    vocab = char_vocab(CHARS)
    write_vocab(vocab, tmp_path / "vocab.txt")
    model = randomize_(ArtistModel(tiny_artist_config(len(vocab), entity_dim=4)), seed=3, scale=0.5)
    store = EntityStore(["番茄", "柠檬"], [0, 1], torch.randn(2, 4, generator=torch.Generator().manual_seed(0)) * 3)
    p = ArtistPipeline(model, load_tokenizer(tmp_path / "vocab.txt"), store)
    p.set_progress_bar_config(disable=True)
    return p


def explicit_guided_argmax(pipe, prompt, negative, codes, scale):
    """Greedy guided choice at every position, from two plain (uncached, teacher-forced) forward
    passes: the prompt's logits and the negative prompt's (its own text and entities, encoded alone),
    mixed as uncond + s * (cond - uncond)."""
    gpt = pipe.model.gpt
    ids_c, know_c = pipe.encode_prompts([prompt])
    with torch.no_grad():
        cond = gpt.image_logits(ids_c.expand(len(codes), -1), codes, know_c.index_select(torch.zeros(len(codes), dtype=torch.long)))
        if negative is None:  # the empty caption: all [PAD], no entities
            ids_u, know_u = torch.zeros_like(ids_c), know_c.with_mask(torch.zeros_like(know_c.mask))
        else:
            ids_u, know_u = pipe.encode_prompts([negative])
        uncond = gpt.image_logits(ids_u.expand(len(codes), -1), codes, know_u.index_select(torch.zeros(len(codes), dtype=torch.long)))
    return (uncond + scale * (cond - uncond)).argmax(-1)


def test_negative_prompt_takes_the_unconditional_rows_with_its_entities(pipe):
    prompt, negative, scale = "一个红色的圆形", "番茄在白背景上", 4.0
    _, know_neg = pipe.encode_prompts([negative])
    assert know_neg.mask.any()  # the negative prompt has an entity: it must reach the unconditional rows
    kw = dict(guidance_scale=scale, top_k=1, num_images_per_prompt=2)
    with_negative = pipe(prompt, negative_prompt=negative, **kw).codes
    plain = pipe(prompt, **kw).codes
    assert not torch.equal(with_negative, plain)
    assert torch.equal(explicit_guided_argmax(pipe, prompt, negative, with_negative, scale), with_negative)
    assert torch.equal(explicit_guided_argmax(pipe, prompt, None, plain, scale), plain)
    # the negative prompt's text without its entities is another computation
    ids_u, _ = pipe.encode_prompts([negative])
    gpt = pipe.model.gpt
    ids_c, know_c = pipe.encode_prompts([prompt])
    with torch.no_grad():
        cond = gpt.image_logits(ids_c.expand(2, -1), with_negative, know_c.index_select(torch.zeros(2, dtype=torch.long)))
        uncond = gpt.image_logits(ids_u.expand(2, -1), with_negative, None)
    assert not torch.equal((uncond + scale * (cond - uncond)).argmax(-1), with_negative)
    # one negative prompt per prompt, batched, gives each prompt's own result
    both = pipe([prompt, "柠檬"], negative_prompt=[negative, "黄色"], **kw).codes
    assert torch.equal(both[:2], with_negative)
    assert torch.equal(both[2:], pipe("柠檬", negative_prompt="黄色", **kw).codes)
    with pytest.raises(ValueError, match="2 negative prompts for 3 prompts"):
        pipe(["一", "个", "红"], negative_prompt=["a", "b"], guidance_scale=2.0)


def test_return_dict_false_and_indexing_the_output(pipe):
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    out = pipe("一个番茄", generator=gen())
    images, codes = pipe("一个番茄", generator=gen(), return_dict=False)
    assert torch.equal(codes, out.codes) and torch.equal(out[1], out.codes) and out[0] is out.images
    assert out["images"] is out.images and np.array_equal(np.asarray(images[0]), np.asarray(out.images[0]))
    with pytest.raises(KeyError):
        out["pixels"]


def test_callback_on_step_end_sees_each_position_and_the_codes_so_far(pipe):
    seen = []
    out = pipe("一个番茄", num_images_per_prompt=2, generator=torch.Generator().manual_seed(1),
               callback_on_step_end=lambda p, step, codes: seen.append((p, step, codes)))
    img_len = pipe.model.config.gpt.img_len
    assert [s for _, s, _ in seen] == list(range(img_len)) and all(p is pipe for p, _, _ in seen)
    for step, codes in ((s, c) for _, s, c in seen):
        assert codes.shape == (2, step + 1) and torch.equal(codes, out.codes[:, : step + 1])
    prefix = out.codes[:1, :10]
    steps = []
    pipe("一个番茄", image_prompt_codes=prefix, callback_on_step_end=lambda p, s, c: steps.append((s, c)))
    assert steps[0][0] == 10 and torch.equal(steps[0][1][:, :10], prefix) and steps[-1][0] == img_len - 1


def test_progress_bar_is_on_by_default_and_configurable(pipe, capsys):
    img_len = pipe.model.config.gpt.img_len
    pipe.set_progress_bar_config()  # back to the default: on
    pipe("一个番茄")
    assert f"{img_len}/{img_len}" in capsys.readouterr().err
    sink = io.StringIO()
    pipe.set_progress_bar_config(file=sink, desc="tokens")
    pipe("一个番茄", image_prompt_codes=torch.zeros(1, 4, dtype=torch.long))
    assert "tokens: 100%" in sink.getvalue() and f"{img_len - 4}/{img_len - 4}" in sink.getvalue()
    pipe.set_progress_bar_config(disable=True)
    pipe("一个番茄")
    with pipe.progress_bar_disabled():
        pipe.set_progress_bar_config  # noqa: B018 - the context restores the setting it found
    assert capsys.readouterr().err == ""


def test_make_image_grid_places_images_row_major_and_scales_by_nearest_neighbour():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (3, 4, 3), dtype=np.uint8) for _ in range(6)]
    grid = make_image_grid([Image.fromarray(a) for a in arrays], rows=2, cols=3)
    expected = np.concatenate([np.concatenate(arrays[r * 3 : r * 3 + 3], axis=1) for r in range(2)], axis=0)
    assert grid.size == (12, 6) and np.array_equal(np.asarray(grid), expected)
    big = make_image_grid([Image.fromarray(a) for a in arrays], rows=2, cols=3, scale=4)
    assert big.size == (48, 24) and np.array_equal(np.asarray(big), expected.repeat(4, axis=0).repeat(4, axis=1))
    with pytest.raises(ValueError, match=r"5 image\(s\) do not fill 2 row\(s\) × 3 column\(s\)"):
        make_image_grid([Image.fromarray(a) for a in arrays[:5]], rows=2, cols=3)
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        make_image_grid([Image.fromarray(arrays[0])], rows=1, cols=1, scale=0)


def test_repr_names_sizes_knowledge_device_dtype_and_sampling_defaults(pipe):
    text = repr(pipe)
    gpt_params = sum(p.numel() for p in pipe.model.gpt.parameters())
    vq_params = sum(p.numel() for p in pipe.model.vqgan.parameters())
    assert "gpt: 2 layers, 16 wide, 2 heads" in text and f"{gpt_params:,} parameters" in text
    assert f"{vq_params:,} parameters" in text and "16×16 px ↔ 64 codes of 24" in text
    assert "2 entities of width 4, fusion 'input'" in text
    assert "device: cpu, dtype: torch.float32" in text
    assert "top_k=None, top_p=None, temperature=1.0, guidance_scale=1.0" in text


@pytest.mark.parametrize("bad, message", [
    (None, "prompt must be a string or a non-empty list of strings, got None"),
    ([], "prompt must be a string or a non-empty list of strings"),
    (["一个", 3], r"prompt\[1\] is int 3, not a string"),
    (7, "prompt must be a string or a non-empty list of strings, got int 7"),
])
def test_prompts_that_are_not_strings_are_a_value_error(pipe, bad, message):
    with pytest.raises(ValueError, match=message):
        pipe(bad)


def test_empty_prompts_warn_and_unreadable_prompts_are_counted(pipe):
    with pytest.warns(UserWarning, match="empty prompt"):
        pipe(["", "一个"])
    pipe(["一个 tomato", "一个红色的圆形番茄"], guidance_scale=2.0, negative_prompt="apple")
    stats = pipe.prompt_stats
    # the negative prompt is not counted; text_len=6 cuts the second prompt
    assert (stats.prompts, stats.empty, stats.unknown, stats.truncated) == (4, 1, 1, 1)
    assert stats.examples["unknown"] == ["#2: '一个 tomato' ([UNK]: 'tomato')"]
