"""The notebook API: save/load with tokenizer and entities, prompts → images, output types."""

import numpy as np
import pytest
import torch
from helpers.tiny import randomize_, tiny_artist_config
from PIL import Image

from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import char_vocab, load_tokenizer, write_vocab

CHARS = "一个红色的圆形番茄柠檬黄在白背景上"


def make_pipeline(tmp_path, knowledge=True):
    vocab = char_vocab(CHARS)
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_vocab(vocab, tmp_path / "vocab.txt")
    tok = load_tokenizer(tmp_path / "vocab.txt")
    model = randomize_(ArtistModel(tiny_artist_config(len(vocab), entity_dim=4 if knowledge else None)))
    store = EntityStore(["番茄", "柠檬"], [0, 1], torch.randn(2, 4, generator=torch.Generator().manual_seed(0)) * 3)
    return ArtistPipeline(model, tok, store if knowledge else None)


def test_round_trip_keeps_tokenizer_entities_and_outputs(tmp_path):
    pipe = make_pipeline(tmp_path / "src")
    out_dir = pipe.save_pretrained(tmp_path / "ckpt")
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["config.json", "entities.safetensors", "entity_names.txt", "lattice_config.json",
                     "model.safetensors", "vocab.txt"]
    again = ArtistPipeline.from_pretrained(out_dir)
    assert again.entities is not None and again.entities.names == ["番茄", "柠檬"]
    kw = dict(num_images_per_prompt=2, top_k=5, generator=None)
    a = pipe(["一个番茄", "红色的圆形"], **{**kw, "generator": torch.Generator().manual_seed(1)})
    b = again(["一个番茄", "红色的圆形"], **{**kw, "generator": torch.Generator().manual_seed(1)})
    assert torch.equal(a.codes, b.codes)
    assert len(a.images) == 4 and all(isinstance(i, Image.Image) and i.size == (16, 16) for i in a.images)


def test_entities_in_the_prompt_reach_the_model(tmp_path):
    pipe = make_pipeline(tmp_path)
    ids, know = pipe.encode_prompts(["一个番茄", "一个红色的圆形"])
    assert know.mask.tolist() == [[True], [False]]
    assert (know.starts[0, 0].item(), know.ends[0, 0].item()) == (2, 4)
    # the same weights without the entity store give other logits for the tomato prompt only
    img = torch.randint(0, 24, (2, 64))
    with torch.no_grad():
        fused = pipe.model.gpt.image_logits(ids, img, know)
        plain = pipe.model.gpt.image_logits(ids, img, None)
    assert not torch.allclose(fused[0], plain[0]) and torch.equal(fused[1], plain[1])


def test_output_types_and_reproducibility(tmp_path):
    pipe = make_pipeline(tmp_path, knowledge=False)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    pil = pipe("红色的圆形", generator=gen(), guidance_scale=2.0)
    arr = pipe("红色的圆形", generator=gen(), guidance_scale=2.0, output_type="np")
    pt = pipe("红色的圆形", generator=gen(), guidance_scale=2.0, output_type="pt")
    assert arr.images.shape == (1, 16, 16, 3) and arr.images.dtype == np.float32
    assert pt.images.shape == (1, 3, 16, 16) and 0 <= pt.images.min() and pt.images.max() <= 1
    np.testing.assert_array_equal(np.asarray(pil.images[0]), (arr.images[0] * 255).round().astype(np.uint8))
    np.testing.assert_allclose(pt.images[0].permute(1, 2, 0).numpy(), arr.images[0], atol=1 / 255)
    with pytest.raises(ValueError, match="output_type"):
        pipe("圆", output_type="jpg")
    with pytest.raises(ValueError, match="non-empty list"):
        pipe([])


def test_image_prompt_completion(tmp_path):
    pipe = make_pipeline(tmp_path, knowledge=False)
    top = torch.randint(0, 24, (1, 32))  # the top half of an 8×8 token grid
    out = pipe("红色的圆形", image_prompt_codes=top, num_images_per_prompt=3, output_type="pt")
    assert torch.equal(out.codes[:, :32], top.expand(3, -1))


def test_sampling_defaults_travel_with_the_checkpoint(tmp_path):
    from easynlp_artist.models.stage2.sampling import SamplingConfig

    pipe = make_pipeline(tmp_path / "src", knowledge=False)
    assert not (pipe.save_pretrained(tmp_path / "plain") / "generation_config.json").exists()
    pipe.sampling = SamplingConfig(top_k=2, temperature=0.5)
    again = ArtistPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "ckpt"))
    assert again.sampling == SamplingConfig(top_k=2, temperature=0.5)
    pipe.sampling = SamplingConfig()  # the same weights with plain defaults

    def codes(p, **kw):
        return p(["红色的圆形", "一个番茄"], num_images_per_prompt=3, generator=torch.Generator().manual_seed(4), **kw).codes

    # unset arguments take the checkpoint's defaults; given ones override them, one by one
    assert torch.equal(codes(again), codes(pipe, top_k=2, temperature=0.5))
    assert torch.equal(codes(again, temperature=1.0), codes(pipe, top_k=2, temperature=1.0))
    plain = codes(pipe)
    assert torch.equal(codes(again, top_k=0, temperature=1.0), plain)
    # top-2 sampling keeps each code among the two most likely: the defaults really were applied
    assert not torch.equal(codes(again), plain)
    (tmp_path / "ckpt" / "generation_config.json").write_text('{"top_k": 2, "topp": 0.9}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"generation_config.json: unknown sampling fields: topp"):
        ArtistPipeline.from_pretrained(tmp_path / "ckpt")


def test_weights_argument_decodes_with_int8_weights_like_the_sampler(tmp_path):
    from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens

    pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    prompts = ["一个红色的圆形", "白色背景上的番茄", "一个海王星"]
    got = pipe(prompts, weights="int8", generator=torch.Generator().manual_seed(4)).codes
    ids, know = pipe.encode_prompts(prompts)
    expected = sample_image_tokens(pipe.model.gpt, ids, know, sampling=pipe.sampling.updated(weights="int8"),
                                   generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, expected)
    plain = pipe(prompts, generator=torch.Generator().manual_seed(4)).codes
    assert not torch.equal(got, plain)  # the int8 form really decoded them
    assert SamplingConfig().weights == "model"
