"""ArtistConfig.from_original: the variants of EasyNLP's flat config.json."""

import json
import logging
import re

import pytest

from easynlp_artist.configuration import ArtistConfig

LOGGER = "easynlp_artist.configuration"

# What transformers 4.x's PretrainedConfig.to_dict() wrote next to ARTIST's own fields (EasyNLP saved
# its configs through it); values as a default PretrainedConfig has them.
STANDARD = {
    "return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False,
    "torch_dtype": None, "use_bfloat16": False, "pruned_heads": {}, "tie_word_embeddings": True,
    "is_encoder_decoder": False, "is_decoder": False, "add_cross_attention": False, "tie_encoder_decoder": False,
    "max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None, "num_return_sequences": 1, "chunk_size_feed_forward": 0, "output_scores": False,
    "return_dict_in_generate": False, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "architectures": None, "finetuning_task": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "tokenizer_class": None, "prefix": None, "bos_token_id": None, "pad_token_id": None, "eos_token_id": None,
    "sep_token_id": None, "decoder_start_token_id": None, "task_specific_params": None, "problem_type": None,
    "_name_or_path": "", "transformers_version": "4.16.0", "model_type": "artist",
}
ARTIST = {
    "vocab_size": 37512, "img_vocab_size": 16384, "text_vocab_size": 21128, "block_size": 288,
    "n_layer": 12, "n_head": 12, "n_embd": 768, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0,
    "n_unmasked": 0,
}


def _read(tmp_path, d: dict) -> ArtistConfig:
    """Through a real config.json file, as the checkpoint loader reads it."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d, ensure_ascii=False, indent=2), encoding="utf-8")
    return ArtistConfig.from_original(json.loads(path.read_text(encoding="utf-8")))


def test_text_vocab_size_is_derived_from_vocab_size_when_absent(tmp_path):
    d = {k: v for k, v in ARTIST.items() if k != "text_vocab_size"}
    d["vocab_size"] = 16384 + 21131  # a vocabulary extended by three tokens
    cfg = _read(tmp_path, d)
    assert cfg.gpt.text_vocab_size == 21131 and cfg.gpt.vocab_size == d["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size=16000 leaves no text vocabulary after img_vocab_size 16384"):
        _read(tmp_path, {**d, "vocab_size": 16000})
    with pytest.raises(ValueError, match=r"vocab_size=37515 != img_vocab_size 16384 \+ text_vocab_size 21128"):
        _read(tmp_path, {**d, "text_vocab_size": 21128})


def test_standard_transformers_keys_are_expected_and_only_unknown_ones_warn(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        cfg = _read(tmp_path, {**STANDARD, **ARTIST})
    assert cfg.gpt.n_layer == 12
    mine = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in mine] == [logging.DEBUG]
    assert "return_dict" in mine[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _read(tmp_path, {**STANDARD, **ARTIST, "n_ctx": 288, "gradient_checkpointing": False})
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "gradient_checkpointing, n_ctx" in message and "return_dict" not in message


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_layer", "12", "n_layer must be an integer, got '12' (str)"),
        ("n_head", True, "n_head must be an integer, got True (bool)"),
        ("n_embd", 768.5, "n_embd must be an integer, got 768.5 (float)"),
        ("vocab_size", None, "vocab_size must be an integer, got None (NoneType)"),
        ("block_size", [288], "block_size must be an integer, got [288] (list)"),
        ("attn_pdrop", "0.1", "attn_pdrop must be a number, got '0.1' (str)"),
        ("text_vocab_size", "21128", "text_vocab_size must be an integer, got '21128' (str)"),
    ],
)
def test_bad_types_name_the_field_and_value(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=re.escape(f"config.json field {message}")):
        _read(tmp_path, {**ARTIST, key: value})


def test_integral_floats_and_int_dropouts_are_accepted(tmp_path):
    cfg = _read(tmp_path, {**ARTIST, "n_layer": 12.0, "attn_pdrop": 0})
    assert cfg.gpt.n_layer == 12 and isinstance(cfg.gpt.n_layer, int) and cfg.gpt.attn_pdrop == 0.0
