"""The notebook API: load a checkpoint by name or path, call it with prompts, get images.

    >>> from easynlp_artist import ArtistPipeline
    >>> pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    >>> out = pipe("一个番茄", num_images_per_prompt=4, generator=torch.Generator().manual_seed(0))
    >>> out.images[0].save("tomato.png")

When the checkpoint carries an entity store, the entities in each prompt are found (the word
lattice) and fused into the text embeddings automatically.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.knowledge.entities import ENTITY2ID_FILE, ENTITY2VEC_FILE, SAFETENSORS_FILE, EntityStore
from easynlp_artist.knowledge.lattice import Lattice, LatticeBuilder, LatticeConfig, knowledge_from_lattices
from easynlp_artist.modeling import CONFIG_FILE, ArtistModel
from easynlp_artist.models.stage1.vqgan import images_to_uint8
from easynlp_artist.models.stage2.sampling import SamplingConfig
from easynlp_artist.tokenization import VOCAB_FILE, encode_texts, load_tokenizer
from modelzoo.files import write_text_atomic

LATTICE_CONFIG_FILE = "lattice_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"  # the sampling defaults of this model
OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class ArtistPipelineOutput:
    images: list[Image.Image] | np.ndarray | torch.Tensor  # N = prompts × num_images_per_prompt
    codes: torch.Tensor  # (N, img_len) the sampled image tokens


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The folder holding ``config.json`` for a local location: the folder itself; a training
    run's folder (its ``best/``, else its ``last/``); or a release archive's only subfolder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    for candidate in (path, path / "best", path / "last"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    inner = [p for p in path.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()] if path.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    raise FileNotFoundError(
        f"{path}: no {CONFIG_FILE} there, in best/ or last/" + (", or in exactly one subfolder" if path.is_dir() else "")
    )


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder for a folder, a ModelZoo name or an object-storage URI."""
    if os.path.exists(name_or_path):
        return find_checkpoint(name_or_path)
    import modelzoo

    return find_checkpoint(modelzoo.resolve(os.fspath(name_or_path)))


def has_entity_store(directory: Path) -> bool:
    return any((directory / name).is_file() for name in (SAFETENSORS_FILE, ENTITY2ID_FILE, ENTITY2VEC_FILE))


class ArtistPipeline:
    """The one way in to generation: owns the model, the tokenizer, the entity store and the
    lattice that finds entities in prompts, and the model's sampling defaults."""

    def __init__(
        self,
        model: ArtistModel,
        tokenizer,
        entities: EntityStore | None = None,
        lattice_config: LatticeConfig | None = None,
        sampling: SamplingConfig | None = None,
    ) -> None:
        self.model = model.eval()
        # what __call__ uses for every sampling argument left at None (generation_config.json)
        self.sampling = sampling or SamplingConfig()
        self.tokenizer = tokenizer
        self.entities = entities
        self.lattice = None
        if entities is not None and model.config.knowledge:
            if entities.dim != model.config.gpt.entity_dim:
                raise ValueError(
                    f"entity vectors have width {entities.dim}, model expects entity_dim={model.config.gpt.entity_dim}"
                )
            cfg = lattice_config or LatticeConfig(text_len=model.config.gpt.text_len)
            if cfg.text_len != model.config.gpt.text_len:
                raise ValueError(f"lattice text_len={cfg.text_len} but the model's text_len={model.config.gpt.text_len}")
            self.lattice = LatticeBuilder(entities, tokenizer, cfg)

    # ---- loading and saving ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device=None,
        torch_dtype: torch.dtype | None = None,
        *,
        entities: EntityStore | None = None,
        lattice: Mapping[str, Any] | None = None,
    ) -> ArtistPipeline:
        """Load from a folder (a checkpoint, or a training run's folder: its ``best/``, else
        ``last/``), a ModelZoo name (e.g. ``artist-shapes-tiny-zh``) or a URI.

        ``entities`` replaces the checkpoint's entity store; ``lattice`` holds lattice settings
        (``LatticeConfig`` fields) put over the checkpoint's ``lattice_config.json``.
        """
        directory = resolve_checkpoint(name_or_path)
        model = ArtistModel.from_pretrained(directory, device=device, torch_dtype=torch_dtype)
        tokenizer = load_tokenizer(directory)
        if entities is None and has_entity_store(directory):
            entities = EntityStore.load(directory)
        lattice_config = LatticeConfig(text_len=model.config.gpt.text_len)
        if (directory / LATTICE_CONFIG_FILE).is_file():
            path = directory / LATTICE_CONFIG_FILE
            try:
                lattice_config = LatticeConfig(**json.loads(path.read_text("utf-8")))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}: {exc}") from exc
        if lattice:
            lattice_config = dataclasses.replace(lattice_config, **lattice)
        sampling = None
        if (directory / GENERATION_CONFIG_FILE).is_file():
            path = directory / GENERATION_CONFIG_FILE
            try:
                sampling = SamplingConfig.from_dict(json.loads(path.read_text("utf-8")))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}: {exc}") from exc
        return cls(model, tokenizer, entities, lattice_config, sampling)

    def save_pretrained(
        self, directory: str | os.PathLike, *, original_layout: bool = False, dtype: torch.dtype | None = None
    ) -> Path:
        """Model weights and config, ``vocab.txt``, the entity store when there is one, and
        ``generation_config.json`` when the sampling defaults are not the plain ones.
        ``dtype=torch.float16`` halves the weights file (they are upcast again on loading).
        ``original_layout``: the EasyNLP release's files (``pytorch_model.bin``, flat ``config.json``,
        ``vocab.txt``, and ``entity2id.txt`` + ``entity2vec.pt`` for the entity store)."""
        out = self.model.save_pretrained(directory, original_layout=original_layout, dtype=dtype)
        vocab = "".join(t + "\n" for t, _ in sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
        write_text_atomic(out / VOCAB_FILE, vocab)
        if self.entities is not None and original_layout:
            self.entities.save_easynlp(out)
        elif self.entities is not None:
            self.entities.save(out)
        if self.lattice is not None:
            write_text_atomic(out / LATTICE_CONFIG_FILE, json.dumps(asdict(self.lattice.config), indent=2) + "\n")
        if self.sampling != SamplingConfig():
            write_text_atomic(out / GENERATION_CONFIG_FILE, json.dumps(self.sampling.to_dict(), indent=2) + "\n")
        return out

    def to(self, device=None, dtype: torch.dtype | None = None) -> ArtistPipeline:
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- generation ------------------------------------------------------------------------------

    def encode_prompts(
        self, prompts: list[str], prompt_lattices: Sequence[Lattice] | None = None
    ) -> tuple[torch.Tensor, KnowledgeInputs | None]:
        """Token ids (B, text_len) and, with an entity store, the entities of each prompt: found
        by the lattice, or given as ``prompt_lattices`` (EasyNLP's preprocessed columns)."""
        text_len = self.model.config.gpt.text_len
        if prompt_lattices is not None and self.lattice is not None:
            if len(prompt_lattices) != len(prompts):
                raise ValueError(f"{len(prompt_lattices)} prompt_lattices for {len(prompts)} prompts")
            ids = encode_texts(self.tokenizer, prompts, text_len).input_ids
            cfg = self.lattice.config
            return ids, self._for_fusion(knowledge_from_lattices(prompt_lattices, self.entities, text_len=text_len,
                                                                 entity_num=cfg.entity_num))
        if self.lattice is not None:
            enc, knowledge, _ = self.lattice.build(prompts)
            return enc.input_ids, self._for_fusion(knowledge)
        return encode_texts(self.tokenizer, prompts, text_len).input_ids, None

    def _for_fusion(self, knowledge: KnowledgeInputs) -> KnowledgeInputs:
        """The release's fusion ("output") sees ``entity_num`` slots and row 0 of the table ("nothing")."""
        if self.model.config.gpt.knowledge_fusion != "output":
            return knowledge
        return knowledge.with_nothing(self.entities.vectors[0], self.lattice.config.entity_num)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        image_prompt_codes: torch.Tensor | None = None,
        prompt_lattices: Sequence[Lattice] | None = None,
    ) -> ArtistPipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt (prompt-major order).

        ``image_prompt_codes`` (B, k): known leading image tokens to complete (e.g. the top rows
        of ``pipe.model.vqgan.encode(image)``). ``prompt_lattices``: the entities already found
        in each prompt (EasyNLP's preprocessed ``lex_id, pos_s, pos_e`` columns), used instead of
        matching. ``output_type``: ``"pil"`` (list of PIL images),
        ``"np"`` (N, H, W, 3) float in [0, 1], or ``"pt"`` (N, 3, H, W) float in [0, 1].

        Sampling arguments left at None take the model's defaults, ``pipe.sampling`` (plain
        sampling unless the checkpoint's generation_config.json says otherwise); ``top_k=0`` /
        ``top_p=1.0`` switch a default filter off.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("every prompt must be a string")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        sampling = self.sampling.updated(
            top_k=top_k, top_p=top_p, temperature=temperature, guidance_scale=guidance_scale
        )
        text_ids, knowledge = self.encode_prompts(prompts, prompt_lattices)
        images, codes = self.model.generate(
            text_ids, knowledge, num_images_per_prompt=num_images_per_prompt, sampling=sampling,
            generator=generator, image_prefix=image_prompt_codes,
        )
        if output_type == "pt":
            return ArtistPipelineOutput(((images.float().clamp(-1, 1) + 1) / 2).cpu(), codes)
        pixels = images_to_uint8(images).cpu().numpy()  # (N, H, W, 3) uint8
        if output_type == "np":
            return ArtistPipelineOutput(pixels.astype(np.float32) / 255.0, codes)
        return ArtistPipelineOutput([Image.fromarray(p) for p in pixels], codes)
