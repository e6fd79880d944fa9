"""The whole model: configs, our checkpoint layout, and the EasyNLP release's layout."""

import json
import re

import pytest
import torch
from helpers.gpt_reference import raw_original_state_dict, reference_logits
from helpers.tiny import TINY_VQGAN, randomize_, tiny_artist_config
from safetensors.torch import load_file, save_file

from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.models.stage1.convert import to_taming_state_dict
from easynlp_artist.models.stage1.vqgan import VQGAN, VQGANConfig
from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens


def test_release_config_sizes_are_derived():
    cfg = ArtistConfig.build(entity_dim=100)
    assert (cfg.gpt.img_vocab_size, cfg.gpt.img_len, cfg.gpt.block_size, cfg.gpt.vocab_size) == (
        16384, 256, 288, 37512,
    )
    with pytest.raises(ValueError, match="img_len=10 but the VQGAN makes 256 tokens"):
        ArtistConfig(VQGANConfig(), cfg.gpt.__class__(img_len=10))
    with pytest.raises(ValueError, match="img_vocab_size is derived"):
        ArtistConfig.build(img_vocab_size=5)


def test_original_config_reader():
    flat = {
        "model_type": "artist", "vocab_size": 37512, "img_vocab_size": 16384, "text_vocab_size": 21128,
        "block_size": 288, "n_layer": 12, "n_head": 12, "n_embd": 768, "embd_pdrop": 0.0,
        "resid_pdrop": 0.0, "attn_pdrop": 0.0, "n_unmasked": 0,
    }
    cfg = ArtistConfig.from_dict(flat)
    assert cfg.gpt.text_len == 32 and cfg.to_original() == flat
    with pytest.raises(ValueError, match="vocab_size=100"):
        ArtistConfig.from_dict({**flat, "vocab_size": 100})
    with pytest.raises(ValueError, match="n_unmasked"):
        ArtistConfig.from_dict({**flat, "n_unmasked": 4})
    with pytest.raises(ValueError, match="unknown config.json keys: colour"):
        ArtistConfig.from_dict({**cfg.to_dict(), "colour": 1})


@pytest.mark.parametrize("entity_dim", [None, 5])
def test_save_and_load_round_trip(tmp_path, entity_dim):
    model = randomize_(ArtistModel(tiny_artist_config(entity_dim=entity_dim))).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    # the files get the mode open() would give (safetensors itself writes 0600)
    reference = tmp_path / "reference"
    reference.write_text("")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode == reference.stat().st_mode, name
    reference.unlink()
    loaded = ArtistModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    text = torch.randint(1, 40, (2, 6))
    know = None
    if entity_dim:
        know = KnowledgeInputs.from_lists([torch.randn(1, 5), torch.randn(0, 5)], [[(0, 2)], []], 5)
    def run(m):
        codes = sample_image_tokens(m.gpt, text, know, num_images_per_prompt=2,
                                    sampling=SamplingConfig(top_k=4, guidance_scale=2.0),
                                    generator=torch.Generator().manual_seed(0))
        return m.vqgan.decode(codes), codes

    (img_a, codes_a), (img_b, codes_b) = run(model), run(loaded)
    assert img_a.shape == (4, 3, 16, 16) and codes_a.shape == (4, 64)
    assert torch.equal(codes_a, codes_b) and torch.equal(img_a, img_b)


def test_safetensors_that_do_not_fit_are_listed(tmp_path):
    model = ArtistModel(tiny_artist_config())
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["gpt.ln_f.bias"]
    state["gpt.stray"] = torch.zeros(2)
    state["gpt.head.weight"] = torch.zeros(3, 16)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as e:
        ArtistModel.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys (1): gpt.ln_f.bias" in msg
    assert "unexpected keys (1): gpt.stray" in msg
    assert "gpt.head.weight: checkpoint (3, 16) vs model (24, 16)" in msg


def _write_original_checkpoint(directory, cfg, entity_dim=None):
    """The EasyNLP layout from raw tensors: pytorch_model.bin + flat config.json + vocab.txt."""
    gpt_raw = raw_original_state_dict(cfg.gpt, seed=11)
    vq = randomize_(VQGAN(VQGANConfig(**TINY_VQGAN)), seed=12).eval()
    state = {"transformer." + k: v for k, v in gpt_raw.items()}
    state.update(to_taming_state_dict(vq, prefix="first_stage_model."))
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(cfg.to_original()))
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    return gpt_raw, vq


@pytest.mark.parametrize("entity_dim", [None, 5])
def test_original_layout_gives_the_same_logits_and_images(tmp_path, entity_dim):
    cfg = tiny_artist_config(entity_dim=entity_dim)
    gpt_raw, vq = _write_original_checkpoint(tmp_path, cfg)
    model = ArtistModel.from_pretrained(tmp_path, vqgan=VQGANConfig(**TINY_VQGAN))
    assert model.config.gpt.entity_dim == entity_dim  # detected from the ent_emb weights
    text, img = torch.randint(1, 40, (2, 6)), torch.randint(0, 24, (2, 64))
    know = None
    if entity_dim:
        know = KnowledgeInputs.from_lists([torch.randn(2, 5), torch.randn(1, 5)], [[(0, 3), (1, 2)], [(4, 6)]], 5)
    with torch.no_grad():
        ours = model.gpt.image_logits(text, img, know)
        torch.testing.assert_close(ours, reference_logits(gpt_raw, cfg.gpt, text, img, know), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.vqgan.decode(img), vq.decode(img))
    # and it can be written back in the same layout, identically
    out = tmp_path / "again"
    model.save_pretrained(out, original_layout=True)
    a = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    b = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_original_layout_refuses_foreign_keys(tmp_path):
    cfg = tiny_artist_config()
    _write_original_checkpoint(tmp_path, cfg)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state["cond_stage_model.weight"] = torch.zeros(1)
    del state["transformer.blocks.0.attn.query.bias"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cond_stage_model.weight"):
        ArtistModel.from_pretrained(tmp_path, vqgan=VQGANConfig(**TINY_VQGAN))
    del state["cond_stage_model.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"(?s)pytorch_model.bin: .*missing keys \(1\): blocks.0.attn.query.bias"):
        ArtistModel.from_pretrained(tmp_path, vqgan=VQGANConfig(**TINY_VQGAN))


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    model = randomize_(ArtistModel(tiny_artist_config())).eval()
    model.save_pretrained(tmp_path, dtype=torch.float16)
    assert load_file(tmp_path / "model.safetensors")["gpt.head.weight"].dtype == torch.float16
    loaded = ArtistModel.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        w = loaded.state_dict()[k]
        assert w.dtype == v.dtype, k
        torch.testing.assert_close(w, v.half().to(v.dtype) if v.is_floating_point() else v)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_layer", 100_000, "gpt.n_layer=100000 but model.safetensors holds 2"),
        ("n_embd", 2**20, "gpt.n_embd=1048576 but model.safetensors holds 16"),
        ("text_len", 10**9, "gpt.text_len + gpt.img_len=1000000064 but model.safetensors holds 70"),
        ("n_layer", "12", "GPTConfig.n_layer must be an integer, got '12' (str)"),
        ("n_head", True, "GPTConfig.n_head must be an integer, got True (bool)"),
    ],
)
def test_absurd_or_mistyped_sizes_are_refused_before_allocating(tmp_path, field, value, message):
    import json
    import resource

    ArtistModel(tiny_artist_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["gpt"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        ArtistModel.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value) or "model.safetensors" in str(e.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing big was built


def test_a_pickle_that_is_not_weights_only_is_refused_in_one_line(tmp_path):
    import pickle

    cfg = tiny_artist_config()
    ArtistModel(cfg).save_pretrained(tmp_path, original_layout=True)

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.x": Payload()}, f)
    with pytest.raises(ValueError) as e:
        ArtistModel.from_pretrained(tmp_path, vqgan=cfg.vqgan)
    text = str(e.value)
    assert "not a safe checkpoint" in text and "\n" not in text and "weights_only=False" not in text
