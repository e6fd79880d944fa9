"""``--user_defined_parameters`` of text2image_artist, grouped by what they configure.

Each key is written once, here, with its type, default and one line of help; the per-mode help
(``easynlp --app_name=text2image_artist --mode=predict --help``) is generated from these
dataclasses. Keys are flat on the command line (``top_k=32 entity_num=5``); the groups only
organise them. Defaults that belong to a model (sizes, lattice and sampling settings) are
``None`` here and come from the model's own config: given values are put over them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Literal

from appzoo.params import group, param
from appzoo.tables import DEFAULT_MAX_IMAGE_PIXELS
from easynlp_artist.knowledge.lattice import LatticeConfig
from easynlp_artist.models.stage2.sampling import SamplingConfig


def _given(obj) -> dict:
    """The fields of a group that were given (not None)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


@dataclass
class ModelParams:
    pretrain_model_name_or_path: str | None = param(
        None, "a ModelZoo name, URI or folder: the model to fine-tune (train) or to use (evaluate/predict)")
    dtype: Literal["float32", "bfloat16"] = param("float32", "evaluate/predict weights (bfloat16: GPUs, CPUs with AMX or AVX512-BF16)")
    vqgan_dtype: Literal["float32", "bfloat16"] | None = param(
        None, "the image decoder's weights when they should differ from dtype (bfloat16: CPUs with AMX, GPUs)")
    num_threads: int | None = param(
        None, "torch threads per process (default: 1 below 30M parameters, else the free cores; training: torch's)")
    tune_allocator: bool = param(True, "keep freed memory in the process (easynlp_artist.runtime)")

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


@dataclass
class SizeParams:
    """Sizes of a model trained from scratch; for a loaded model, given sizes must agree with it."""

    size: int | None = param(None, "image resolution (default: the VQGAN's, 256 for the release)")
    text_len: int | None = param(None, "text tokens (default 32)")
    img_len: int | None = param(None, "image tokens; derived from size and the VQGAN, given only to check")
    img_vocab_size: int | None = param(None, "VQGAN codebook size (default 16384)")
    n_layer: int | None = param(None, "GPT layers (default 12)")
    n_head: int | None = param(None, "GPT attention heads (default 12)")
    n_embd: int | None = param(None, "GPT width (default 768)")
    vqgan_ckpt_path: str | None = param(None, "a checkpoint whose VQGAN (and vocab.txt) a new GPT starts from")
    vocab_path: str | None = param(None, "vocab.txt (or its folder) for a model from scratch")
    vqgan_ch: int | None = param(None, "VQGAN base channels (default 128)")
    vqgan_ch_mult: tuple[int, ...] | None = param(None, "VQGAN channel multipliers per level (default 1,1,2,2,4)")
    vqgan_num_res_blocks: int | None = param(None, "VQGAN residual blocks per level (default 2)")
    vqgan_attn_resolutions: tuple[int, ...] | None = param(None, "resolutions with attention (default 16)")
    vqgan_embed_dim: int | None = param(None, "VQGAN code width (default 256)")

    CHECKED = ("size", "text_len", "img_len", "img_vocab_size")


@dataclass
class TrainingParams:
    stage: Literal["gpt", "vqgan"] = param("gpt", "which stage --mode=train trains")
    caption_dropout: float | None = param(None, "stage 2: drop this fraction of captions so guidance works")
    mention_dropout: float | None = param(
        None, "stage 2: in this fraction of captions, entity mentions become random tokens (the vector carries the look)")
    code_cache_dir: str | None = param(
        None, "where image codes are cached (default: code_cache/ beside --checkpoint_dir)")
    overwrite_output_dir: bool = param(False, "train into a --checkpoint_dir that already holds a run")


@dataclass
class Stage1Params:
    disc_start: int | None = param(None, "first step of the patch discriminator (default 10000)")
    disc_weight: float | None = param(None, "discriminator loss weight (default 0.8)")
    rec_loss: Literal["l1", "l2"] | None = param(None, "reconstruction loss (default l1)")
    disc_layers: int | None = param(None, "discriminator depth (default: 3, fewer for small images)")
    restart_dead_codes: int = param(0, "every N steps move codes unused since the last check onto latents (0: off)")


@dataclass
class InputParams:
    max_image_pixels: int = param(
        DEFAULT_MAX_IMAGE_PIXELS, "largest image a table cell may hold (width x height); a larger one is refused "
        "naming the cell (images of 4x the model's size and more are decoded reduced)")

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")


@dataclass
class KnowledgeParams:
    """Where entities come from and how they are found in text (the lattice); lattice settings not
    given come from the checkpoint's lattice_config.json."""

    entity_emb_path: str | None = param(None, "entity2vec.pt, or a folder with an entity store")
    entity_map: str | None = param(None, "entity2id.txt for entity2vec.pt (default: the one beside it)")
    entity_num: int | None = param(None, "entities kept per text (default 10)")
    min_chars: int | None = param(None, "shorter entity names are not matched (default 2)")
    alignment: str | None = param(None, "how matches align to tokens: strict or expand (default strict)")
    priority: str | None = param(None, "which entities are kept past entity_num: longest or position (default longest)")
    use_jieba_filter: bool | None = param(None, "drop matches that cut through jieba words (default false)")
    knowledge_fusion: Literal["input", "output"] | None = param(
        None, "where entities are fused: input (per token) or output (EasyNLP's release) (default: the model's)")
    extra_triples: str | None = param(
        None, "triples (head<TAB>relation<TAB>tail) teaching the loaded model new entities (knowledge.extend)")

    def __post_init__(self) -> None:
        if self.entity_num is not None and self.entity_num < 0:
            raise ValueError(f"entity_num must be >= 0, got {self.entity_num}")
        if self.entity_map is not None and self.entity_emb_path is None:
            raise ValueError("entity_map is given without entity_emb_path")

    def lattice_given(self) -> dict:
        """The lattice settings given here (LatticeConfig fields)."""
        return {k: v for k, v in _given(self).items() if k in {f.name for f in fields(LatticeConfig)}}

    def lattice_over(self, base: LatticeConfig) -> LatticeConfig:
        """The checkpoint's lattice settings with the values given here put over them."""
        return dataclasses.replace(base, **self.lattice_given())


@dataclass
class SamplingParams:
    """What is not given comes from the model (its generation_config.json, else plain sampling)."""

    max_generated_num: int = param(1, "images per row")
    top_k: int | None = param(None, "keep the k most likely codes (0: all)")
    top_p: float | None = param(None, "nucleus sampling mass (1: all)")
    temperature: float | None = param(None, "sampling temperature")
    guidance_scale: float | None = param(None, "classifier-free guidance (1: off)")
    seed: int = param(42, "images of a row depend only on this and the row's line number")

    def __post_init__(self) -> None:
        if self.max_generated_num < 1:
            raise ValueError(f"max_generated_num must be >= 1, got {self.max_generated_num}")
        self.over(SamplingConfig())  # checks the values

    def over(self, defaults: SamplingConfig) -> SamplingConfig:
        """The model's sampling defaults with the values given here put over them."""
        return defaults.updated(
            top_k=self.top_k, top_p=self.top_p, temperature=self.temperature, guidance_scale=self.guidance_scale
        )


@dataclass
class OutputParams:
    image_dir: str | None = param(None, "also write PNG files and an index.html contact sheet here")
    skip_bad_rows: bool = param(False, "bad rows go to <outputs>.rejects.tsv instead of stopping the run")


@dataclass
class EvaluationParams:
    fid_feature_extractor: str | None = param(
        None, "TorchScript file you trust: images (B,3,H,W) in [0,1] -> features (B,F); enables FID")
    fid_num_images: int = param(0, "rows used for FID (0: every row)")

    def __post_init__(self) -> None:
        if self.fid_num_images < 0:
            raise ValueError(f"fid_num_images must be >= 0, got {self.fid_num_images}")


@dataclass
class ServeParams:
    """The server's limits (--mode=serve; --host/--port are flags)."""

    api_key: str | None = param(None, "bearer token clients must send (default: $ARTIST_API_KEY; none: no auth)")
    admin_key: str | None = param(
        None, "bearer token for editing knowledge (POST/DELETE /v1/entities) (default: $ARTIST_ADMIN_KEY; none: off)")
    max_queue: int = param(64, "requests waiting to join the batch; one more gets 429")
    max_batch_rows: int = param(32, "rows decoded together (a guided image takes two)")
    request_timeout: float = param(300.0, "seconds a request may wait and run")
    max_body_bytes: int = param(65536, "largest request body")
    max_prompt_chars: int = param(512, "longest prompt (and negative prompt)")
    decode_processes: bool | None = param(
        None, "decode finished images in child processes (default: true for a model on CPU), so the VQGAN's "
              "Python does not take turns with the sampler's")

    def __post_init__(self) -> None:
        for name in ("max_batch_rows", "max_body_bytes", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")


@dataclass
class ArtistParams:
    model: ModelParams = group(ModelParams, "model")
    sizes: SizeParams = group(SizeParams, "sizes (new models; checked against a loaded one)", ("train",))
    training: TrainingParams = group(TrainingParams, "training", ("train",))
    stage1: Stage1Params = group(Stage1Params, "stage-1 (VQGAN) training, stage=vqgan", ("train",))
    inputs: InputParams = group(InputParams, "table images", ("train", "evaluate"))
    knowledge: KnowledgeParams = group(KnowledgeParams, "knowledge")
    sampling: SamplingParams = group(SamplingParams, "sampling", ("evaluate", "predict", "serve"))
    output: OutputParams = group(OutputParams, "predict outputs", ("predict",))
    evaluation: EvaluationParams = group(EvaluationParams, "evaluation", ("evaluate",))
    serve: ServeParams = group(ServeParams, "server", ("serve",))


__all__ = ["ArtistParams"]
