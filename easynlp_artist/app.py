"""The ``text2image_artist`` AppZoo application: train, evaluate and predict on EasyNLP tables.

    easynlp --app_name=text2image_artist --mode=predict --tables=test.tsv --outputs=pred.tsv \\
        --input_schema=idx:str:1,text:str:1 --output_schema=idx,text,gen_imgbase64 \\
        --user_defined_parameters='max_generated_num=4 top_k=64 seed=1'

This file maps the command line to typed configs and calls the parts that do the work: the model
source and the pipeline (``loading``), the trainer with the objective of the stage being trained
(``models/stage*/objective.py``), the metrics (``metrics``) and predict (``predict``). The
parameters and their help are in ``params``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from appzoo.app import BaseApp
from appzoo.args import CommonArgs
from appzoo.distributed import device_for_rank, get_world_size, is_distributed, is_main_process
from appzoo.tables import Schema, TableDataset
from appzoo.trainer import Trainer, TrainerConfig, check_checkpoint_dir
from easynlp_artist import metrics
from easynlp_artist.data import (
    CodesDataset,
    ImageDataset,
    Stage2Collate,
    cached_codes,
    local_table,
    stack_images,
)
from easynlp_artist.loading import default_cache_dir, load_pipeline, model_source
from easynlp_artist.modeling import WEIGHTS_FILE
from easynlp_artist.models.stage1.losses import VQGANLossConfig
from easynlp_artist.models.stage1.objective import Stage1Objective
from easynlp_artist.models.stage2.objective import Stage2Objective
from easynlp_artist.params import ArtistParams
from easynlp_artist.predict import (
    GENERATED_COLUMN,
    PredictJob,
    check_output_paths,
    run_predict,
    validate_table,
)
from modelzoo.files import write_text_atomic
from modelzoo.storage import redact

logger = logging.getLogger(__name__)

TRAIN_SCHEMA = "idx:str:1,text:str:1,imgbase64:str:1"
PREDICT_SCHEMA = "idx:str:1,text:str:1"
PREDICT_OUTPUT = "idx,text,gen_imgbase64"
RESULTS_FILE = "eval_results.json"
STAGE1_TRAINING_FILE = "stage1_training.safetensors"  # discriminator and dead-code statistics, for resuming


# ------------------------------------------------------------------------------------------- tables


def _cache_dir(args: CommonArgs, params: ArtistParams) -> str:
    """Where image codes (and local copies of remote tables) are cached: ``code_cache_dir``, else
    beside a training run, else the user's cache folder — never a folder that becomes a checkpoint
    location."""
    if params.training.code_cache_dir:
        return params.training.code_cache_dir
    if args.mode == "train":
        return os.path.join(TrainerConfig.from_args(args).checkpoint_dir, "code_cache")
    return str(default_cache_dir())


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


def _codes(table, column, pipe, cache_dir, args, params, device) -> torch.Tensor:
    # rank 0 encodes (or finds the cache), the others read the file it wrote
    if is_main_process():
        codes = cached_codes(table, column, pipe.model.vqgan, cache_dir, batch_size=args.micro_batch_size,
                             device=device, max_pixels=params.inputs.max_image_pixels)
    if is_distributed():
        dist.barrier()
    if not is_main_process():
        codes = cached_codes(table, column, pipe.model.vqgan, cache_dir, device=device,
                             max_pixels=params.inputs.max_image_pixels)
    return codes


# ---------------------------------------------------------------------------------------------- app


class Text2ImageArtistApp(BaseApp):
    name = "text2image_artist"
    aliases = ("text2image_generation",)
    description = "ARTIST: knowledge-enhanced Chinese text-to-image (VQGAN + GPT); train, evaluate, predict, serve"
    Params = ArtistParams

    # ---- train -----------------------------------------------------------------------------------

    def train(self, args: CommonArgs, params: ArtistParams) -> dict:
        if not args.tables:
            raise ValueError("--tables=train.tsv[,valid.tsv] is required for --mode=train")
        check_checkpoint_dir(args)
        device = device_for_rank()
        pipe = load_pipeline(args, params, device)
        schema = _schema(args, TRAIN_SCHEMA)
        image_column = _image_column(args, schema)
        cache_dir = _cache_dir(args, params)
        tables = [TableDataset(local_table(t, cache_dir), schema, args.skip_first_line) for t in args.tables[:2]]
        if params.training.stage == "vqgan":
            return self._train_vqgan(args, params, pipe, tables, image_column, device)
        text_column = _text_column(args, schema)
        datasets = [CodesDataset(t, _codes(t, image_column, pipe, cache_dir, args, params, device)) for t in tables]
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
            objective, datasets[0], Stage2Collate(pipe, text_column),
            TrainerConfig.from_args(args), valid_dataset=datasets[1] if len(datasets) > 1 else None,
            save_model_fn=save, load_model_fn=load, device=device,
        )
        return trainer.train()

    def _train_vqgan(self, args, params, pipe, tables, image_column, device) -> dict:
        res = pipe.model.config.vqgan.resolution
        datasets = [ImageDataset(t, image_column, res, params.inputs.max_image_pixels) for t in tables]
        s1 = params.stage1
        # a discriminator of n layers needs images of at least 3 * 2**n pixels
        layers = s1.disc_layers or max(1, min(3, int(math.log2(res / 3))))
        given = {k: getattr(s1, k) for k in ("rec_loss", "disc_start", "disc_weight") if getattr(s1, k) is not None}
        loss_cfg = VQGANLossConfig(disc_layers=layers, **given)
        objective = Stage1Objective(pipe.model.vqgan, loss_cfg, args.gradient_accumulation_steps, s1.restart_dead_codes)

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
        source = model_source(args, params)  # decided once: also names where the results go
        extractor_path = params.evaluation.fid_feature_extractor
        if extractor_path:
            metrics.check_fid(extractor_path)  # the package and the file, before the model is loaded
        device = device_for_rank()
        pipe = load_pipeline(args, params, device)
        schema = _schema(args, TRAIN_SCHEMA)
        cache_dir = _cache_dir(args, params)
        table = TableDataset(local_table(args.tables[0], cache_dir), schema, args.skip_first_line)
        text_column, image_column = _text_column(args, schema), _image_column(args, schema)
        codes = _codes(table, image_column, pipe, cache_dir, args, params, device)
        result = metrics.image_token_loss(pipe, CodesDataset(table, codes), text_column, args.micro_batch_size, device)
        res = pipe.model.config.vqgan.resolution
        images = ImageDataset(table, image_column, res, params.inputs.max_image_pixels)
        result.update(metrics.reconstruction(pipe.model.vqgan, images, args.micro_batch_size, device))
        if extractor_path:
            result["fid"] = metrics.fid(
                pipe, table, text_column, image_column, extractor=metrics.load_feature_extractor(extractor_path),
                sampling=params.sampling.over(pipe.sampling), seed=params.sampling.seed,
                num_images=params.evaluation.fid_num_images, batch_size=args.micro_batch_size,
                max_pixels=params.inputs.max_image_pixels,
            )
        folder = Path(source.location) if source.location and os.path.isdir(source.location) else None
        target = Path(args.outputs) if args.outputs else (folder / RESULTS_FILE if folder else Path(RESULTS_FILE))
        if is_main_process():
            try:
                write_text_atomic(target, json.dumps(result, indent=2) + "\n")
            except OSError as exc:
                raise ValueError(f"cannot write the metrics to {target} ({exc}); pass --outputs=metrics.json") from exc
            print(json.dumps(result, indent=2))
            logger.info("metrics written to %s", target)
        return result

    # ---- predict ---------------------------------------------------------------------------------

    def predict(self, args: CommonArgs, params: ArtistParams) -> dict:
        if not args.tables:
            raise ValueError("--tables=test.tsv is required for --mode=predict")
        if len(args.tables) > 1:
            raise ValueError(f"--mode=predict reads one table; --tables names {len(args.tables)}")
        if not args.outputs:
            raise ValueError("--outputs=<output table> is required for --mode=predict")
        check_output_paths(args.tables[0], args.outputs, params.output.image_dir)
        schema = _schema(args, PREDICT_SCHEMA)
        out_columns = [c.strip() for c in (args.output_schema or PREDICT_OUTPUT).split(",") if c.strip()]
        out_columns += [c for c in args.append_cols if c not in out_columns]
        unknown = [c for c in out_columns if c != GENERATED_COLUMN and c not in schema.names]
        if unknown:
            raise ValueError(
                f"--output_schema/--append_cols name columns the input does not have: {', '.join(unknown)} "
                f"(input columns: {', '.join(schema.names)}; generated: {GENERATED_COLUMN})"
            )
        job = PredictJob(
            table=args.tables[0], outputs=args.outputs, schema=schema, skip_first_line=args.skip_first_line,
            text_column=_text_column(args, schema), out_columns=out_columns, batch_size=args.micro_batch_size,
            images_per_row=params.sampling.max_generated_num, seed=params.sampling.seed,
            image_dir=Path(params.output.image_dir) if params.output.image_dir else None,
            skip_bad_rows=params.output.skip_bad_rows,
        )
        checked = validate_table(job)  # the whole table, before the model is even loaded
        pipe = load_pipeline(args, params, device_for_rank())
        sampling = params.sampling.over(pipe.sampling)
        logger.info("sampling: %s", sampling.to_dict())
        return run_predict(pipe, job, sampling, checked)

    # ---- serve -----------------------------------------------------------------------------------

    def serve(self, args: CommonArgs, params: ArtistParams) -> dict:
        try:
            from easynlp_artist.serve import server
        except ImportError as exc:
            raise ValueError(f'--mode=serve needs the server\'s packages ({exc.name} is missing): '
                             f'pip install "easynlp-artist[serve]"') from exc
        source = model_source(args, params)
        name = redact(source.location) if source.location else "untrained"
        name = os.path.basename(os.path.normpath(name)) if os.path.isdir(name) else name
        s = params.serve
        settings = server.ServerSettings(
            api_key=server.api_key_from(s.api_key), admin_key=server.api_key_from(s.admin_key, server.ADMIN_KEY_ENV),
            max_queue=s.max_queue, max_batch_rows=s.max_batch_rows,
            request_timeout=s.request_timeout, max_body_bytes=s.max_body_bytes, max_prompt_chars=s.max_prompt_chars,
            decode_processes=s.decode_processes,
        )

        def load():
            pipe = load_pipeline(args, params, device_for_rank())
            pipe.sampling = params.sampling.over(pipe.sampling)  # given sampling keys become the defaults
            logger.info("sampling defaults: %s", pipe.sampling.to_dict())
            return pipe

        server.serve(load, settings, name, args.host, args.port)
        return {}


__all__ = ["ArtistParams", "Text2ImageArtistApp"]
