"""ARTIST's configuration: the two stages' configs, kept consistent, and the original config.json.

Sizes the two stages share are derived, never typed twice: the GPT's image vocabulary is the
VQGAN codebook, its image length is the VQGAN token grid, its block size is text + image tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from easynlp_artist.models.stage1.vqgan import VQGANConfig
from easynlp_artist.models.stage2.gpt import GPTConfig

logger = logging.getLogger(__name__)

MODEL_TYPE = "artist"
FORMAT_VERSION = 1

# Keys of the original (EasyNLP) config.json that describe the GPT.
_ORIGINAL_GPT_KEYS = {
    "vocab_size", "img_vocab_size", "text_vocab_size", "block_size", "n_layer", "n_head", "n_embd",
    "embd_pdrop", "resid_pdrop", "attn_pdrop", "n_unmasked", "knowledge_fusion",
}
_ORIGINAL_INT_KEYS = ("vocab_size", "img_vocab_size", "text_vocab_size", "block_size", "n_layer", "n_head",
                      "n_embd", "n_unmasked")
_ORIGINAL_FLOAT_KEYS = ("embd_pdrop", "resid_pdrop", "attn_pdrop")
# The keys transformers' ``PretrainedConfig.to_dict()`` wrote in the 4.x releases EasyNLP saved its
# configs with. Today's ``PretrainedConfig().to_dict()`` lists only a dozen of them (transformers 5
# dropped the generation and head-pruning defaults), so the list is written out here and the current
# version's keys are added at run time (:func:`_standard_keys`). They describe nothing we build.
_TRANSFORMERS_4_KEYS = frozenset({
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "torch_dtype", "use_bfloat16",
    "pruned_heads", "tie_word_embeddings", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "chunk_size_feed_forward", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "architectures", "finetuning_task", "id2label", "label2id",
    "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "problem_type", "transformers_version", "_name_or_path",
    "_commit_hash", "model_type",
})
_standard_keys_cache: frozenset[str] | None = None


def _standard_keys() -> frozenset[str]:
    """Keys any transformers config carries: the 4.x list above plus the installed version's own."""
    global _standard_keys_cache
    if _standard_keys_cache is None:
        try:
            from transformers import PretrainedConfig

            current = set(PretrainedConfig().to_dict())
        except Exception:  # an unusable transformers install must not stop a checkpoint from loading
            current = set()
        _standard_keys_cache = _TRANSFORMERS_4_KEYS | current
    return _standard_keys_cache


def _check_original_types(d: dict) -> dict:
    """The GPT fields of an original config.json with their types checked; integral floats become ints."""
    out = dict(d)
    for key in _ORIGINAL_INT_KEYS:
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, float) and v.is_integer():
            out[key] = int(v)
        elif isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"config.json field {key} must be an integer, got {v!r} ({type(v).__name__})")
    for key in _ORIGINAL_FLOAT_KEYS:
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"config.json field {key} must be a number, got {v!r} ({type(v).__name__})")
        out[key] = float(v)
    return out


@dataclass
class ArtistConfig:
    vqgan: VQGANConfig
    gpt: GPTConfig

    def __post_init__(self) -> None:
        problems = []
        if self.gpt.img_vocab_size != self.vqgan.n_embed:
            problems.append(f"gpt.img_vocab_size={self.gpt.img_vocab_size} but vqgan.n_embed={self.vqgan.n_embed}")
        if self.gpt.img_len != self.vqgan.num_tokens:
            problems.append(
                f"gpt.img_len={self.gpt.img_len} but the VQGAN makes {self.vqgan.num_tokens} tokens "
                f"(resolution {self.vqgan.resolution} / factor {self.vqgan.downsample_factor}, squared)"
            )
        if problems:
            raise ValueError("inconsistent ArtistConfig: " + "; ".join(problems))

    @classmethod
    def build(cls, vqgan: VQGANConfig | None = None, **gpt_fields) -> ArtistConfig:
        """A config whose GPT image sizes are taken from the VQGAN (pass only the GPT's own fields)."""
        vqgan = vqgan or VQGANConfig()
        for derived in ("img_vocab_size", "img_len"):
            if derived in gpt_fields:
                raise ValueError(f"{derived} is derived from the VQGAN config; do not pass it")
        return cls(vqgan, GPTConfig(img_vocab_size=vqgan.n_embed, img_len=vqgan.num_tokens, **gpt_fields))

    @property
    def knowledge(self) -> bool:
        return self.gpt.knowledge

    def to_dict(self) -> dict:
        return {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "vqgan": self.vqgan.to_dict(),
            "gpt": self.gpt.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ArtistConfig:
        """Read our config.json (or, when it has no ``gpt`` section, the original flat one)."""
        if "gpt" not in d:
            return cls.from_original(d)
        unknown = sorted(set(d) - {"model_type", "format_version", "vqgan", "gpt"})
        if unknown:
            raise ValueError(f"unknown config.json keys: {', '.join(unknown)}")
        if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"config.json model_type is {d['model_type']!r}, expected {MODEL_TYPE!r}")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"config.json format_version {d['format_version']} is newer than this package reads")
        return cls(VQGANConfig.from_dict(d["vqgan"]), GPTConfig.from_dict(d["gpt"]))

    @classmethod
    def from_original(
        cls, d: dict, vqgan: VQGANConfig | None = None, entity_dim: int | None = None
    ) -> ArtistConfig:
        """The EasyNLP release's flat config.json (model_type "artist"); its VQGAN is the f16 design.

        The original file has no knowledge field: the knowledge variant is recognised by its
        ``ent_emb`` weights, whose width the caller passes as ``entity_dim``, and it fuses knowledge
        the release's way (``knowledge_fusion="output"``, what its ``ent_emb`` was trained for)
        unless the file says otherwise (``knowledge_fusion``, which :meth:`to_original` writes). ``vqgan`` overrides
        the stage-1 config (default: the file's ``vqgan`` section if any, else the release's).
        Without ``text_vocab_size`` it is ``vocab_size - img_vocab_size`` (21128 when both are
        absent). The standard transformers keys EasyNLP's files carry are expected (one debug line);
        other keys are warned about. A field of the wrong type is a ValueError naming it.
        """
        if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"config.json model_type is {d['model_type']!r}, expected {MODEL_TYPE!r}")
        if vqgan is None:
            vqgan = VQGANConfig.from_dict(d["vqgan"]) if "vqgan" in d else VQGANConfig()
        missing = sorted({"n_layer", "n_head", "n_embd"} - set(d))
        if missing:
            raise ValueError(f"original config.json lacks {', '.join(missing)}")
        d = _check_original_types(d)
        extra = set(d) - _ORIGINAL_GPT_KEYS - {"vqgan", "model_type"}
        standard = sorted(extra & _standard_keys())
        unknown = sorted(extra - _standard_keys())
        if standard:
            logger.debug("original config.json: %d standard transformers keys not used: %s",
                         len(standard), ", ".join(standard))
        if unknown:
            logger.warning("original config.json: ignoring keys this package does not use: %s", ", ".join(unknown))
        if d.get("n_unmasked", 0):
            raise ValueError(f"n_unmasked={d['n_unmasked']} is not supported (the release uses 0)")
        img_vocab = d.get("img_vocab_size", vqgan.n_embed)
        if "text_vocab_size" in d:
            text_vocab = d["text_vocab_size"]
        elif "vocab_size" in d:  # text ids follow the image codes in one table
            text_vocab = d["vocab_size"] - img_vocab
            if text_vocab <= 0:
                raise ValueError(
                    f"vocab_size={d['vocab_size']} leaves no text vocabulary after img_vocab_size {img_vocab}"
                )
        else:
            text_vocab = GPTConfig.text_vocab_size
        if "vocab_size" in d and d["vocab_size"] != img_vocab + text_vocab:
            raise ValueError(
                f"vocab_size={d['vocab_size']} != img_vocab_size {img_vocab} + text_vocab_size {text_vocab}"
            )
        if img_vocab != vqgan.n_embed:
            raise ValueError(f"img_vocab_size={img_vocab} but the VQGAN codebook has {vqgan.n_embed} codes")
        block = d.get("block_size", GPTConfig.text_len + vqgan.num_tokens)
        text_len = block - vqgan.num_tokens
        if text_len <= 0:
            raise ValueError(f"block_size={block} leaves no room for text after {vqgan.num_tokens} image tokens")
        gpt_fields = {f.name for f in fields(GPTConfig)}
        dropouts = {k: d[k] for k in ("embd_pdrop", "resid_pdrop", "attn_pdrop") if k in d and k in gpt_fields}
        return cls.build(
            vqgan,
            text_vocab_size=text_vocab,
            text_len=text_len,
            n_layer=d["n_layer"],
            n_head=d["n_head"],
            n_embd=d["n_embd"],
            entity_dim=entity_dim,
            knowledge_fusion=d.get("knowledge_fusion", "input" if entity_dim is None else "output"),
            **dropouts,
        )

    def to_original(self) -> dict:
        """The flat config.json the EasyNLP release wrote (plus a ``vqgan`` section when the
        tokenizer is not the release's f16 design, which the original hard-coded)."""
        g = self.gpt
        extra = {} if self.vqgan == VQGANConfig() else {"vqgan": self.vqgan.to_dict()}
        if g.knowledge:  # EasyNLP ignores it; it says which fusion the weights are for
            extra["knowledge_fusion"] = g.knowledge_fusion
        return {
            "model_type": MODEL_TYPE,
            "vocab_size": g.vocab_size,
            "img_vocab_size": g.img_vocab_size,
            "text_vocab_size": g.text_vocab_size,
            "block_size": g.block_size,
            "n_layer": g.n_layer,
            "n_head": g.n_head,
            "n_embd": g.n_embd,
            "embd_pdrop": g.embd_pdrop,
            "resid_pdrop": g.resid_pdrop,
            "attn_pdrop": g.attn_pdrop,
            "n_unmasked": 0,
            **extra,
        }
