"""The ``text2image_artist`` AppZoo application: train, evaluate and predict on EasyNLP tables.

    easynlp --app_name=text2image_artist --mode=predict --tables=test.tsv --outputs=pred.tsv \\
        --input_schema=idx:str:1,text:str:1 --output_schema=idx,text,gen_imgbase64 \\
        --user_defined_parameters='max_generated_num=4 top_k=64 seed=1'

Where the model comes from:

* ``train``: ``pretrain_model_name_or_path`` (a ModelZoo name or a directory) to fine-tune, or
  sizes from the parameters to start from scratch (with ``vqgan_ckpt_path`` for stage-1 weights
  and ``vocab_path`` for the tokenizer). Checkpoints go to ``--checkpoint_dir`` (``last``/``best``).
* ``evaluate``/``predict``: ``--checkpoint_dir`` (its ``best`` or ``last`` when it holds a
  training run), else ``pretrain_model_name_or_path``, else the embedded default model.

Knowledge: a checkpoint that carries an entity store finds entities in every text by itself;
``entity_emb_path`` (+ ``entity_map``) supplies or replaces the store; tables that already have
the original knowledge columns (``lex_id, pos_s, pos_e, token_len``) are read as they are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from appzoo.app import BaseApp
from appzoo.args import CommonArgs
from appzoo.distributed import (
    all_reduce_sum,
    device_for_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    my_shard,
    run_sharded_predict,
)
from appzoo.tables import Row, Schema, TableDataset, encode_image_base64, read_table
from appzoo.trainer import Trainer, TrainerConfig, evaluate_loss
from appzoo.trainer import resolve_checkpoint as resolve_trainer_checkpoint
from easynlp_artist._io import atomic_path
from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.data import (
    CodesDataset,
    ImageDataset,
    Stage2Collate,
    TextEncoder,
    cached_codes,
    local_table,
    row_image,
    stack_images,
)
from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.lattice import COLUMNS as KNOWLEDGE_COLUMNS
from easynlp_artist.knowledge.lattice import Lattice, LatticeConfig
from easynlp_artist.modeling import WEIGHTS_FILE, ArtistModel
from easynlp_artist.models.stage1.losses import (
    DeadCodeRestarter,
    VQGANLossConfig,
    build_discriminator,
    vqgan_training_step,
)
from easynlp_artist.models.stage1.vqgan import VQGAN, VQGANConfig, images_to_uint8
from easynlp_artist.models.stage2.gpt import ArtistGPT
from easynlp_artist.models.stage2.sampling import SamplingConfig
from easynlp_artist.pipeline import ArtistPipeline, resolve_checkpoint
from easynlp_artist.runtime import tune_cpu_allocator
from easynlp_artist.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "artist-shapes-tiny-zh"
TRAIN_SCHEMA = "idx:str:1,text:str:1,imgbase64:str:1"
PREDICT_SCHEMA = "idx:str:1,text:str:1"
PREDICT_OUTPUT = "idx,text,gen_imgbase64"
GENERATED_COLUMN = "gen_imgbase64"
RESULTS_FILE = "eval_results.json"
STAGE1_TRAINING_FILE = "stage1_training.safetensors"  # discriminator and dead-code statistics, for resuming


@dataclass
class ArtistParams:
    """``--user_defined_parameters`` of text2image_artist (EasyNLP names where they exist)."""

    pretrain_model_name_or_path: str | None = None
    stage: Literal["gpt", "vqgan"] = "gpt"  # which stage --mode=train trains
    # ---- sizes when training from scratch (checked against a loaded model otherwise)
    size: int | None = None  # image resolution (default: the VQGAN's, 256 for the release)
    text_len: int | None = None  # default 32
    img_len: int | None = None  # derived: (size / downsampling factor) ** 2; given → checked
    img_vocab_size: int | None = None  # the VQGAN codebook size (default 16384)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vqgan_ckpt_path: str | None = None  # an ARTIST checkpoint whose VQGAN to start from
    vocab_path: str | None = None  # vocab.txt (or its folder) for a model from scratch
    vqgan_ch: int = 128
    vqgan_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    vqgan_num_res_blocks: int = 2
    vqgan_attn_resolutions: tuple[int, ...] = (16,)
    vqgan_embed_dim: int = 256
    caption_dropout: float | None = None  # stage-2 training: drop captions so guidance works
    # ---- stage-1 training
    disc_start: int = 10_000
    disc_weight: float = 0.8
    rec_loss: Literal["l1", "l2"] = "l1"
    disc_layers: int | None = None  # patch discriminator depth (default: 3, fewer for small images)
    restart_dead_codes: int = 0  # every N steps, move codes unused since the last check onto latents (0: off)
    # ---- knowledge
    entity_emb_path: str | None = None  # entity2vec.pt, or a folder with an entity store
    entity_map: str | None = None  # entity2id.txt for entity2vec.pt
    entity_num: int = 10
    use_jieba_filter: bool = False
    # ---- data
    code_cache_dir: str | None = None  # default: <checkpoint_dir>/code_cache
    # ---- generation
    max_generated_num: int = 1
    # sampling: what is not given here comes from the model (its generation_config.json, else plain)
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    guidance_scale: float | None = None
    seed: int = 42
    image_dir: str | None = None  # also write PNG files and an index.html contact sheet here
    skip_bad_rows: bool = False  # bad rows go to <outputs>.rejects.tsv instead of stopping the run
    # ---- evaluation
    fid_feature_extractor: str | None = None  # TorchScript file: images (B,3,H,W) in [0,1] → features (B,F)
    fid_num_images: int = 0  # rows used for FID (0 = every row)
    # ---- inference speed
    dtype: Literal["float32", "bfloat16"] = "float32"  # evaluate/predict weights (bf16: CPUs with AMX, GPUs)
    num_threads: int | None = None  # torch threads per process (default: torch's; see bench/README.md)
    tune_allocator: bool = True  # keep freed memory in the process (easynlp_artist.runtime)

    def __post_init__(self) -> None:
        if self.max_generated_num < 1:
            raise ValueError(f"max_generated_num must be >= 1, got {self.max_generated_num}")
        if self.entity_num < 0:
            raise ValueError(f"entity_num must be >= 0, got {self.entity_num}")
        if self.fid_num_images < 0:
            raise ValueError(f"fid_num_images must be >= 0, got {self.fid_num_images}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        self.sampling_over(SamplingConfig())  # checks the values

    def sampling_over(self, defaults: SamplingConfig) -> SamplingConfig:
        """The model's sampling defaults with the values given here put over them."""
        return defaults.updated(
            top_k=self.top_k, top_p=self.top_p, temperature=self.temperature, guidance_scale=self.guidance_scale
        )


# ---------------------------------------------------------------------------------------------- model


def _model_source(args: CommonArgs, params: ArtistParams) -> str:
    """For evaluate/predict: a trained checkpoint_dir, else the named model, else the default."""
    if args.checkpoint_dir and os.path.isdir(args.checkpoint_dir):
        root = Path(args.checkpoint_dir)
        for candidate in (root, root / "best", root / "last"):
            if (candidate / "config.json").is_file():
                return str(candidate)
        if params.pretrain_model_name_or_path is None:
            raise FileNotFoundError(f"--checkpoint_dir={root}: no config.json there or in best/ or last/")
    return params.pretrain_model_name_or_path or DEFAULT_MODEL


def _entity_store(params: ArtistParams) -> EntityStore | None:
    if params.entity_emb_path is None:
        if params.entity_map is not None:
            raise ValueError("entity_map is given without entity_emb_path")
        return None
    return EntityStore.load(params.entity_emb_path, entity_map=params.entity_map)


def _scratch_pipeline(params: ArtistParams, store: EntityStore | None) -> ArtistPipeline:
    """A new model sized by the parameters; the VQGAN from ``vqgan_ckpt_path`` when given."""
    vqgan_state = None
    if params.vqgan_ckpt_path:
        source = ArtistModel.from_pretrained(resolve_checkpoint(params.vqgan_ckpt_path))
        vq_cfg, vqgan_state = source.config.vqgan, source.vqgan.state_dict()
        vocab = params.vocab_path or str(resolve_checkpoint(params.vqgan_ckpt_path))
    else:
        default = VQGANConfig()
        vq_cfg = VQGANConfig(
            resolution=params.size or default.resolution,
            ch=params.vqgan_ch,
            ch_mult=params.vqgan_ch_mult,
            num_res_blocks=params.vqgan_num_res_blocks,
            attn_resolutions=params.vqgan_attn_resolutions,
            z_channels=params.vqgan_embed_dim,
            embed_dim=params.vqgan_embed_dim,
            n_embed=params.img_vocab_size or default.n_embed,
            norm_groups=min(default.norm_groups, math.gcd(*(params.vqgan_ch * m for m in params.vqgan_ch_mult))),
        )
        vocab = params.vocab_path
    if vocab is None:
        raise ValueError("training from scratch needs vocab_path=<vocab.txt> (or vqgan_ckpt_path with a vocab.txt)")
    tokenizer = load_tokenizer(vocab)
    gpt_fields = dict(
        text_vocab_size=len(tokenizer.get_vocab()),
        n_layer=params.n_layer, n_head=params.n_head, n_embd=params.n_embd,
        entity_dim=store.dim if store is not None else None,
        caption_dropout=params.caption_dropout or 0.0,
    )
    if params.text_len is not None:
        gpt_fields["text_len"] = params.text_len
    config = ArtistConfig.build(vq_cfg, **gpt_fields)
    model = ArtistModel(config)
    if vqgan_state is not None:
        model.vqgan.load_state_dict(vqgan_state)
    return _with_lattice(ArtistPipeline(model, tokenizer), store, params)


def _with_lattice(pipe: ArtistPipeline, store: EntityStore | None, params: ArtistParams) -> ArtistPipeline:
    """Attach an entity store (given, or the checkpoint's) with the parameters' lattice settings."""
    store = store if store is not None else pipe.entities
    if store is None or not pipe.model.config.knowledge:
        if store is not None and params.entity_emb_path:
            raise ValueError("entity_emb_path is given but the model has no knowledge part (entity_dim=None)")
        return ArtistPipeline(pipe.model, pipe.tokenizer, None, sampling=pipe.sampling)
    lattice = LatticeConfig(
        text_len=pipe.model.config.gpt.text_len, entity_num=params.entity_num, use_jieba_filter=params.use_jieba_filter
    )
    return ArtistPipeline(pipe.model, pipe.tokenizer, store, lattice, pipe.sampling)


def _check_sizes(config: ArtistConfig, params: ArtistParams) -> None:
    """Sizes given in the parameters must agree with a loaded model (never silently ignored)."""
    have = {
        "size": config.vqgan.resolution, "text_len": config.gpt.text_len, "img_len": config.gpt.img_len,
        "img_vocab_size": config.gpt.img_vocab_size,
    }
    wrong = [f"{k}={getattr(params, k)} (model: {v})" for k, v in have.items()
             if getattr(params, k) is not None and getattr(params, k) != v]
    if wrong:
        raise ValueError("user_defined_parameters disagree with the loaded model: " + ", ".join(wrong))


def load_pipeline(args: CommonArgs, params: ArtistParams, device: torch.device) -> ArtistPipeline:
    if params.num_threads is not None:
        torch.set_num_threads(params.num_threads)
    if params.tune_allocator and device.type == "cpu":
        tune_cpu_allocator()
    store = _entity_store(params)
    if args.mode == "train" and args.resume_from_checkpoint:
        # the whole model as it was saved (the trainer then restores the exact training weights)
        source = resolve_trainer_checkpoint(args.resume_from_checkpoint)
        logger.info("resuming from %s", source)
        pipe = _with_lattice(ArtistPipeline.from_pretrained(source), store, params)
    elif args.mode == "train" and params.pretrain_model_name_or_path is None:
        torch.manual_seed(args.random_seed)  # a model from scratch is the same in every run with this seed
        pipe = _scratch_pipeline(params, store)
    else:
        source = params.pretrain_model_name_or_path if args.mode == "train" else _model_source(args, params)
        logger.info("loading model %s", source)
        pipe = _with_lattice(ArtistPipeline.from_pretrained(source), store, params)
    _check_sizes(pipe.model.config, params)
    if params.caption_dropout is not None:
        gpt_cfg = dataclasses.replace(pipe.model.config.gpt, caption_dropout=params.caption_dropout)
        pipe.model.config = ArtistConfig(pipe.model.config.vqgan, gpt_cfg)
        pipe.model.gpt.config = gpt_cfg
    dtype = getattr(torch, params.dtype) if args.mode != "train" else None
    return pipe.to(device, dtype)


def _text_encoder(pipe: ArtistPipeline, params: ArtistParams) -> TextEncoder:
    return TextEncoder(
        pipe.tokenizer, pipe.model.config.gpt.text_len, pipe.entities, pipe.lattice, params.entity_num
    )


# ---------------------------------------------------------------------------------------- objectives


class Stage2Objective(nn.Module):
    """batch → mean NLL of the image tokens (the VQGAN is not part of it: codes are cached)."""

    def __init__(self, gpt: ArtistGPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = self.gpt(batch["text_ids"], batch["image_ids"], batch["knowledge"])
        return loss, {"perplexity": math.exp(min(loss.item(), 50.0))}

    def no_weight_decay(self) -> set[str]:
        return {f"gpt.{n}" for n in self.gpt.no_weight_decay()}


class Stage1Objective(nn.Module):
    """VQGAN + patch discriminator trained by one optimizer.

    The generator loss reaches only the VQGAN (the discriminator is frozen while it is computed) and
    the discriminator loss only the discriminator (it sees detached reconstructions), so their sum
    can be minimised with a single AdamW. ``micro_steps`` counts training batches (kept in the
    checkpoint) so the discriminator starts after ``disc_start`` optimizer steps, also on resume.
    """

    def __init__(self, vqgan: VQGAN, loss_cfg: VQGANLossConfig, accumulation: int, restart_every: int = 0) -> None:
        super().__init__()
        self.vqgan = vqgan
        self.discriminator = build_discriminator(loss_cfg, vqgan.config.in_channels)
        self.loss_cfg = loss_cfg
        self.accumulation = accumulation
        self.restarter = DeadCodeRestarter(vqgan.config.n_embed, restart_every) if restart_every else None
        self.register_buffer("micro_steps", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        step = int(self.micro_steps) // self.accumulation
        out = vqgan_training_step(self.vqgan, self.discriminator, batch["images"], step, self.loss_cfg)
        if self.training:
            self.micro_steps += 1
            if self.restarter is not None:
                # runs before this step's update; the straight-through graph is already built
                self.restarter.update(self.vqgan.codebook.data, out["latents"], out["codes"])
        loss = out["loss"] + (out["d_loss"] if out["disc_active"] else 0.0)
        logs = {k: float(out[k]) for k in ("rec", "codebook", "g_adv", "d", "codebook_usage")}
        return loss, logs


# ------------------------------------------------------------------------------------------- tables


def _cache_dir(args: CommonArgs, params: ArtistParams) -> str:
    """Where image codes (and local copies of remote tables) are cached."""
    return params.code_cache_dir or os.path.join(args.checkpoint_dir, "code_cache")


def _schema(args: CommonArgs, default: str) -> Schema:
    return Schema.parse(args.input_schema or default)


def _text_column(args: CommonArgs, schema: Schema) -> str:
    name = args.first_sequence or "text"
    schema.index(name, flag="first_sequence")
    return name


def _image_column(args: CommonArgs, schema: Schema) -> str:
    name = args.second_sequence or "imgbase64"
    schema.index(name, flag="second_sequence")
    return name


def _check_knowledge_columns(row: Row) -> None:
    if all(c in row.values for c in KNOWLEDGE_COLUMNS):
        Lattice.from_columns(*(str(row[c]) for c in KNOWLEDGE_COLUMNS), path=row.file, line=row.line_no)


def read_rows(path: str, schema: Schema, skip_first_line: bool, rejects: list[tuple[int, str]] | None):
    """Stream rows; a bad row raises (naming file, line, column) or, with ``rejects``, is recorded there."""

    def reject(exc: ValueError) -> None:
        if rejects is None:
            raise exc
        rejects.append((exc.line, str(exc)))

    for row in read_table(path, schema, skip_first_line, on_error=None if rejects is None else reject):
        try:
            _check_knowledge_columns(row)
        except ValueError as exc:  # LatticeFormatError names file, line and column
            reject(exc)
            continue
        yield row


# ---------------------------------------------------------------------------------------------- app


def _row_generators(seed: int, rows: list[Row]) -> list[torch.Generator]:
    """One generator per row, from (seed, line number): results do not depend on batching or sharding."""
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, r.line_no]).generate_state(1, np.uint64)[0] >> 1))
        for r in rows
    ]


def _write_contact_sheet(image_dir: Path, entries: list[tuple[str, str, list[str]]]) -> None:
    cells = []
    for key, text, files in entries:
        imgs = "".join(f'<img src="{escape(f)}" alt="{escape(text)}">' for f in files)
        cells.append(f"<figure>{imgs}<figcaption>{escape(key)}: {escape(text)}</figcaption></figure>")
    html = (
        "<!doctype html><meta charset='utf-8'><title>ARTIST predictions</title>"
        "<style>figure{display:inline-block;margin:8px}img{width:128px;image-rendering:pixelated;margin:1px}"
        "</style>\n" + "\n".join(cells) + "\n"
    )
    with atomic_path(image_dir / "index.html") as tmp:
        Path(tmp).write_text(html, encoding="utf-8")


class Text2ImageArtistApp(BaseApp):
    name = "text2image_artist"
    aliases = ("text2image_generation",)
    description = "ARTIST: knowledge-enhanced Chinese text-to-image (VQGAN + GPT); train, evaluate, predict"
    Params = ArtistParams

    # ---- train -----------------------------------------------------------------------------------

    def train(self, args: CommonArgs, params: ArtistParams) -> dict:
        if not args.tables:
            raise ValueError("--tables=train.tsv[,valid.tsv] is required for --mode=train")
        device = device_for_rank()
        pipe = load_pipeline(args, params, device)
        schema = _schema(args, TRAIN_SCHEMA)
        image_column = _image_column(args, schema)
        cache_dir = _cache_dir(args, params)
        tables = [TableDataset(local_table(t, cache_dir), schema, args.skip_first_line) for t in args.tables[:2]]
        if params.stage == "vqgan":
            return self._train_vqgan(args, params, pipe, tables, image_column, device)
        text_column = _text_column(args, schema)
        datasets = [CodesDataset(t, self._codes(t, image_column, pipe, cache_dir, args, device)) for t in tables]
        for p in pipe.model.vqgan.parameters():
            p.requires_grad_(False)
        objective = Stage2Objective(pipe.model.gpt)

        def save(_: nn.Module, directory: Path) -> None:
            pipe.save_pretrained(directory)

        def load(model: Stage2Objective, directory: Path) -> None:
            # the saved checkpoint holds the exact fp32 training weights: no second copy needed
            state = load_file(directory / WEIGHTS_FILE)
            model.gpt.load_state_dict({k[len("gpt."):]: v for k, v in state.items() if k.startswith("gpt.")})

        trainer = Trainer(
            objective, datasets[0], Stage2Collate(_text_encoder(pipe, params), text_column),
            TrainerConfig.from_args(args), valid_dataset=datasets[1] if len(datasets) > 1 else None,
            save_model_fn=save, load_model_fn=load, device=device,
        )
        return trainer.train()

    @staticmethod
    def _codes(table, column, pipe, cache_dir, args, device) -> torch.Tensor:
        # rank 0 encodes (or finds the cache), the others read the file it wrote
        if is_main_process():
            codes = cached_codes(table, column, pipe.model.vqgan, cache_dir, batch_size=args.micro_batch_size,
                                 device=device)
        if is_distributed():
            dist.barrier()
        if not is_main_process():
            codes = cached_codes(table, column, pipe.model.vqgan, cache_dir, device=device)
        return codes

    def _train_vqgan(self, args, params, pipe, tables, image_column, device) -> dict:
        res = pipe.model.config.vqgan.resolution
        datasets = [ImageDataset(t, image_column, res) for t in tables]
        # a discriminator of n layers needs images of at least 3 * 2**n pixels
        layers = params.disc_layers or max(1, min(3, int(math.log2(res / 3))))
        loss_cfg = VQGANLossConfig(rec_loss=params.rec_loss, disc_start=params.disc_start,
                                   disc_weight=params.disc_weight, disc_layers=layers)
        objective = Stage1Objective(pipe.model.vqgan, loss_cfg, args.gradient_accumulation_steps,
                                    params.restart_dead_codes)

        def save(model: Stage1Objective, directory: Path) -> None:
            pipe.save_pretrained(directory)
            # the VQGAN is in model.safetensors; keep only what resuming needs besides it
            rest = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("vqgan.")}
            save_file(rest, str(directory / STAGE1_TRAINING_FILE))

        def load(model: Stage1Objective, directory: Path) -> None:
            weights = load_file(directory / WEIGHTS_FILE)
            state = {k: v for k, v in weights.items() if k.startswith("vqgan.")}
            state.update(load_file(directory / STAGE1_TRAINING_FILE))
            model.load_state_dict(state, strict=True)

        config = TrainerConfig.from_args(args, find_unused_parameters=get_world_size() > 1)
        trainer = Trainer(
            objective, datasets[0], stack_images, config, valid_dataset=datasets[1] if len(datasets) > 1 else None,
            save_model_fn=save, load_model_fn=load, device=device,
        )
        return trainer.train()

    # ---- evaluate --------------------------------------------------------------------------------

    def evaluate(self, args: CommonArgs, params: ArtistParams) -> dict:
        if not args.tables:
            raise ValueError("--tables=valid.tsv is required for --mode=evaluate")
        device = device_for_rank()
        pipe = load_pipeline(args, params, device)
        schema = _schema(args, TRAIN_SCHEMA)
        cache_dir = _cache_dir(args, params)
        table = TableDataset(local_table(args.tables[0], cache_dir), schema, args.skip_first_line)
        text_column, image_column = _text_column(args, schema), _image_column(args, schema)
        codes = self._codes(table, image_column, pipe, cache_dir, args, device)
        collate = Stage2Collate(_text_encoder(pipe, params), text_column)
        stage2 = evaluate_loss(Stage2Objective(pipe.model.gpt), CodesDataset(table, codes), collate,
                               batch_size=args.micro_batch_size, device=device)
        metrics = {
            "num_samples": stage2["num_samples"],
            "image_token_loss": stage2["loss"],
            "image_token_perplexity": math.exp(stage2["loss"]),
        }
        metrics.update(self._reconstruction(pipe, ImageDataset(table, image_column, pipe.model.config.vqgan.resolution),
                                            args.micro_batch_size, device))
        if params.fid_feature_extractor:
            metrics["fid"] = self._fid(pipe, table, text_column, image_column, params, args, device)
        source = _model_source(args, params)
        source = Path(source) if os.path.isdir(source) else None
        target = Path(args.outputs) if args.outputs else (source / RESULTS_FILE if source else Path(RESULTS_FILE))
        if is_main_process():
            try:
                with atomic_path(target) as tmp:
                    Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot write the metrics to {target} ({exc}); pass --outputs=metrics.json") from exc
            print(json.dumps(metrics, indent=2))
        return metrics

    @staticmethod
    @torch.no_grad()
    def _reconstruction(pipe, dataset: ImageDataset, batch_size: int, device) -> dict:
        """Stage-1 quality on the table: PSNR of encode→decode (pixels in [0, 255]) and codebook usage.

        With several processes, image ``i`` is handled by rank ``i % world`` and the sums are combined.
        """
        vqgan = pipe.model.vqgan
        squared, pixels, psnr_sum = 0.0, 0, 0.0
        used = torch.zeros(vqgan.config.n_embed)
        mine = my_shard(len(dataset))
        for start in range(0, len(mine), batch_size):
            images = torch.stack([dataset[i] for i in mine[start : start + batch_size]]).to(device)
            codes = vqgan.encode(images)
            used[codes.flatten().cpu()] = 1.0
            recon = images_to_uint8(vqgan.decode(codes)).float()
            truth = images_to_uint8(images).float()
            mse = (recon - truth).pow(2).flatten(1).mean(1)
            psnr_sum += float((10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).sum())
            squared += float((recon - truth).pow(2).sum())
            pixels += truth.numel()
        squared, pixels, psnr_sum, *used_by_code = all_reduce_sum([squared, pixels, psnr_sum, *used.tolist()])
        return {
            "reconstruction_psnr": psnr_sum / len(dataset),
            "reconstruction_mse": squared / pixels,
            "codebook_usage": sum(u > 0 for u in used_by_code) / len(used_by_code),
        }

    @staticmethod
    @torch.no_grad()
    def _fid(pipe, table, text_column, image_column, params, args, device) -> float:
        from torchmetrics.image.fid import FrechetInceptionDistance

        # a TorchScript file runs code: only point this at extractors you trust
        extractor = torch.jit.load(params.fid_feature_extractor, map_location="cpu").eval()

        res = pipe.model.config.vqgan.resolution

        class Features(nn.Module):
            """torchmetrics hands uint8 (B, 3, H, W); the extractor takes floats in [0, 1]."""

            def __init__(self) -> None:
                super().__init__()
                self.net = extractor
                with torch.no_grad():
                    self.num_features = int(extractor(torch.zeros(1, 3, res, res)).shape[-1])

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x.float() / 255.0)

        # with several processes each rank adds its shard of rows; compute() sums the states of all
        fid = FrechetInceptionDistance(feature=Features(), normalize=False, reset_real_features=True)
        n = len(table) if params.fid_num_images == 0 else min(params.fid_num_images, len(table))
        encoder = _text_encoder(pipe, params)
        mine = my_shard(n)
        for start in range(0, len(mine), args.micro_batch_size):
            rows = [table.row(i) for i in mine[start : start + args.micro_batch_size]]
            real = torch.stack([row_image(r, image_column, res) for r in rows])
            fid.update(images_to_uint8(real).permute(0, 3, 1, 2), real=True)
            text_ids, know = encoder.encode([str(r[text_column]) for r in rows], rows)
            images, _ = pipe.model.generate(text_ids, know, sampling=params.sampling_over(pipe.sampling),
                                            generator=_row_generators(params.seed, rows))
            fid.update(images_to_uint8(images).permute(0, 3, 1, 2).cpu(), real=False)
        return float(fid.compute())

    # ---- predict ---------------------------------------------------------------------------------

    def predict(self, args: CommonArgs, params: ArtistParams) -> dict:
        if not args.tables:
            raise ValueError("--tables=test.tsv is required for --mode=predict")
        if not args.outputs:
            raise ValueError("--outputs=<output table> is required for --mode=predict")
        device = device_for_rank()
        pipe = load_pipeline(args, params, device)
        schema = _schema(args, PREDICT_SCHEMA)
        text_column = _text_column(args, schema)
        out_columns = [c.strip() for c in (args.output_schema or PREDICT_OUTPUT).split(",") if c.strip()]
        out_columns += [c for c in args.append_cols if c not in out_columns]
        unknown = [c for c in out_columns if c != GENERATED_COLUMN and c not in schema.names]
        if unknown:
            raise ValueError(
                f"--output_schema/--append_cols name columns the input does not have: {', '.join(unknown)} "
                f"(input columns: {', '.join(schema.names)}; generated: {GENERATED_COLUMN})"
            )
        encoder = _text_encoder(pipe, params)
        image_dir = Path(params.image_dir) if params.image_dir else None
        if image_dir is not None:
            image_dir.mkdir(parents=True, exist_ok=True)

        def predict_batch(rows: list[Row]) -> list[list[str]]:
            text_ids, know = encoder.encode([str(r[text_column]) for r in rows], rows)
            images, _ = pipe.model.generate(
                text_ids, know, num_images_per_prompt=params.max_generated_num,
                sampling=params.sampling_over(pipe.sampling),
                generator=_row_generators(params.seed, rows),
            )
            pixels = images_to_uint8(images).cpu().numpy()
            k = params.max_generated_num
            out = []
            for i, row in enumerate(rows):
                pics = [Image.fromarray(p) for p in pixels[i * k : (i + 1) * k]]
                if image_dir is not None:
                    for j, pic in enumerate(pics):
                        with atomic_path(image_dir / f"{row.line_no:06d}_{j}.png") as tmp:
                            pic.save(tmp, format="PNG")
                cells = {GENERATED_COLUMN: ",".join(encode_image_base64(p) for p in pics)}
                out.append([cells[c] if c == GENERATED_COLUMN else str(row[c]) for c in out_columns])
            return out

        rejects: list[tuple[int, str]] | None = [] if params.skip_bad_rows else None
        rows = read_rows(args.tables[0], schema, args.skip_first_line, rejects)
        count = run_sharded_predict(rows, predict_batch, args.outputs, args.micro_batch_size)
        result = {"rows": count, "outputs": args.outputs, "images_per_row": params.max_generated_num}
        if rejects is not None and is_main_process():
            reject_path = args.outputs + ".rejects.tsv"
            with atomic_path(reject_path) as tmp:
                Path(tmp).write_text("".join(f"{n}\t{m.replace(chr(9), ' ')}\n" for n, m in rejects), encoding="utf-8")
            result.update(rejected=len(rejects), rejects=reject_path)
            if rejects:
                logger.warning("%d bad row(s) skipped; see %s", len(rejects), reject_path)
        if image_dir is not None and is_main_process():
            entries = []
            for row in read_rows(args.tables[0], schema, args.skip_first_line, [] if rejects is not None else None):
                files = [f"{row.line_no:06d}_{j}.png" for j in range(params.max_generated_num)]
                entries.append((str(row.values.get("idx", row.line_no)), str(row[text_column]), files))
            _write_contact_sheet(image_dir, entries)
            result["image_dir"] = str(image_dir)
        return result


__all__ = ["ArtistParams", "Text2ImageArtistApp"]
