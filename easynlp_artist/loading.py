"""Where the app's model comes from — decided once per run — and the one pipeline built for it.

* ``train``: ``--resume_from_checkpoint`` (the saved model), else ``pretrain_model_name_or_path``
  (fine-tuning), else a new model sized by the parameters (``vqgan_ckpt_path`` for stage-1
  weights, ``vocab_path`` for the tokenizer).
* ``evaluate``/``predict``: ``--checkpoint_dir`` when given (a checkpoint, or a training run's
  folder: its ``best/``, else ``last/``; a location that does not exist is an error), else
  ``pretrain_model_name_or_path``, else the embedded default model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from appzoo.args import CommonArgs
from appzoo.trainer import resume_dir
from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.lattice import LatticeConfig
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.models.stage1.vqgan import VQGANConfig
from easynlp_artist.params import ArtistParams, SizeParams
from easynlp_artist.pipeline import ArtistPipeline, find_checkpoint, resolve_checkpoint
from easynlp_artist.runtime import set_default_threads, tune_cpu_allocator
from easynlp_artist.tokenization import load_tokenizer
from modelzoo.storage import redact

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "artist-shapes-tiny-zh"


@dataclass(frozen=True)
class ModelSource:
    """``location`` is a checkpoint folder, a ModelZoo name or a URI; None: a new model."""

    location: str | None
    why: str


def model_source(args: CommonArgs, params: ArtistParams) -> ModelSource:
    named = params.model.pretrain_model_name_or_path
    if args.mode == "train":
        if args.resume_from_checkpoint:
            return ModelSource(str(resume_dir(args.resume_from_checkpoint)), "--resume_from_checkpoint")
        if named:
            return ModelSource(named, "pretrain_model_name_or_path")
        return ModelSource(None, "a new model from the size parameters")
    if args.checkpoint_dir:
        if not os.path.exists(args.checkpoint_dir):
            raise FileNotFoundError(f"--checkpoint_dir={args.checkpoint_dir}: no such folder")
        return ModelSource(str(find_checkpoint(args.checkpoint_dir)), "--checkpoint_dir")
    if named:
        return ModelSource(named, "pretrain_model_name_or_path")
    return ModelSource(DEFAULT_MODEL, "the embedded default model")


def _entity_store(params: ArtistParams) -> EntityStore | None:
    know = params.knowledge
    if know.entity_emb_path is None:
        return None
    return EntityStore.load(know.entity_emb_path, entity_map=know.entity_map)


def _or(value, default):
    return default if value is None else value


def _new_model(params: ArtistParams, store: EntityStore | None) -> tuple[ArtistModel, object]:
    """A model sized by the parameters (unset sizes take the configs' defaults); the VQGAN from
    ``vqgan_ckpt_path`` when given."""
    sizes = params.sizes
    vqgan_state = None
    if sizes.vqgan_ckpt_path:
        source = ArtistModel.from_pretrained(resolve_checkpoint(sizes.vqgan_ckpt_path))
        vq_cfg, vqgan_state = source.config.vqgan, source.vqgan.state_dict()
        vocab = sizes.vocab_path or str(resolve_checkpoint(sizes.vqgan_ckpt_path))
    else:
        d = VQGANConfig()
        ch, ch_mult = _or(sizes.vqgan_ch, d.ch), _or(sizes.vqgan_ch_mult, d.ch_mult)
        embed_dim = _or(sizes.vqgan_embed_dim, d.embed_dim)
        vq_cfg = VQGANConfig(
            resolution=_or(sizes.size, d.resolution), ch=ch, ch_mult=ch_mult,
            num_res_blocks=_or(sizes.vqgan_num_res_blocks, d.num_res_blocks),
            attn_resolutions=_or(sizes.vqgan_attn_resolutions, d.attn_resolutions),
            z_channels=embed_dim, embed_dim=embed_dim, n_embed=_or(sizes.img_vocab_size, d.n_embed),
            norm_groups=min(d.norm_groups, math.gcd(*(ch * m for m in ch_mult))),
        )
        vocab = sizes.vocab_path
    if vocab is None:
        raise ValueError("training from scratch needs vocab_path=<vocab.txt> (or vqgan_ckpt_path with a vocab.txt)")
    tokenizer = load_tokenizer(vocab)
    # unset sizes take GPTConfig's defaults
    gpt_fields = {k: getattr(sizes, k) for k in ("text_len", "n_layer", "n_head", "n_embd") if getattr(sizes, k) is not None}
    config = ArtistConfig.build(
        vq_cfg, text_vocab_size=len(tokenizer.get_vocab()), entity_dim=store.dim if store is not None else None,
        caption_dropout=_or(params.training.caption_dropout, 0.0),
        mention_dropout=_or(params.training.mention_dropout, 0.0), **gpt_fields,
    )
    model = ArtistModel(config)
    if vqgan_state is not None:
        model.vqgan.load_state_dict(vqgan_state)
    return model, tokenizer


def _check_sizes(config: ArtistConfig, sizes: SizeParams) -> None:
    """Sizes given in the parameters must agree with a loaded model (never silently ignored)."""
    have = {
        "size": config.vqgan.resolution, "text_len": config.gpt.text_len, "img_len": config.gpt.img_len,
        "img_vocab_size": config.gpt.img_vocab_size,
    }
    wrong = [f"{k}={getattr(sizes, k)} (model: {v})" for k, v in have.items()
             if getattr(sizes, k) is not None and getattr(sizes, k) != v]
    if wrong:
        raise ValueError("user_defined_parameters disagree with the loaded model: " + ", ".join(wrong))


def load_pipeline(args: CommonArgs, params: ArtistParams, device: torch.device) -> ArtistPipeline:
    """The run's one pipeline (its lattice automaton built once), on ``device``."""
    if params.model.num_threads is not None:
        torch.set_num_threads(params.model.num_threads)
    if params.model.tune_allocator and device.type == "cpu":
        tune_cpu_allocator()
    store = _entity_store(params)
    source = model_source(args, params)
    if source.location is None:
        torch.manual_seed(args.random_seed)  # a model from scratch is the same in every run with this seed
        model, tokenizer = _new_model(params, store)
        if store is not None and not model.config.knowledge:
            raise ValueError("entity_emb_path is given but the model has no knowledge part (entity_dim=None)")
        base = LatticeConfig(text_len=model.config.gpt.text_len)
        pipe = ArtistPipeline(model, tokenizer, store, params.knowledge.lattice_over(base) if store else None)
    else:
        logger.info("loading model %s (%s)", redact(source.location), source.why)
        pipe = ArtistPipeline.from_pretrained(source.location, entities=store, lattice=params.knowledge.lattice_given())
        if store is not None and not pipe.model.config.knowledge:
            raise ValueError("entity_emb_path is given but the model has no knowledge part (entity_dim=None)")
    _check_sizes(pipe.model.config, params.sizes)
    extra = params.knowledge.extra_triples
    if extra is not None:
        if not os.path.isfile(extra):
            raise FileNotFoundError(f"extra_triples={extra}: no such file")
        added = pipe.add_entities(extra)
        logger.info("added %d entities from %s: %s", len(added), extra, ", ".join(added[:10]))
    given = {k: v for k, v in (("caption_dropout", params.training.caption_dropout),
                               ("mention_dropout", params.training.mention_dropout),
                               ("knowledge_fusion", params.knowledge.knowledge_fusion)) if v is not None}
    if given:
        gpt_cfg = dataclasses.replace(pipe.model.config.gpt, **given)
        pipe.model.config = ArtistConfig(pipe.model.config.vqgan, gpt_cfg)
        pipe.model.gpt.config = gpt_cfg
    if params.model.num_threads is None and args.mode != "train":  # training keeps torch's (all cores)
        set_default_threads(pipe.model)
    if args.mode == "train":
        return pipe.to(device)
    pipe.to(device, getattr(torch, params.model.dtype))
    if params.model.vqgan_dtype is not None:
        pipe.model.vqgan.to(dtype=getattr(torch, params.model.vqgan_dtype))
    return pipe


def default_cache_dir() -> Path:
    """Image codes and copies of remote tables, when neither a run folder nor code_cache_dir is given
    (never inside a checkpoint location)."""
    root = os.environ.get("EASYNLP_ARTIST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "easynlp_artist")
    return Path(root).expanduser() / "code_cache"
