"""The notebook API: load a checkpoint by name or path, call it with prompts, get images.

    >>> from easynlp_artist import ArtistPipeline
    >>> pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    >>> out = pipe("一个番茄", num_images_per_prompt=4, generator=torch.Generator().manual_seed(0))
    >>> out.images[0].save("tomato.png")

When the checkpoint carries an entity store, the entities in each prompt are found (the word
lattice) and fused into the text embeddings automatically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.knowledge.entities import ENTITY2ID_FILE, SAFETENSORS_FILE, EntityStore
from easynlp_artist.knowledge.lattice import LatticeBuilder, LatticeConfig
from easynlp_artist.modeling import CONFIG_FILE, ArtistModel, write_atomic
from easynlp_artist.models.stage1.vqgan import images_to_uint8
from easynlp_artist.models.stage2.sampling import SamplingConfig
from easynlp_artist.tokenization import VOCAB_FILE, encode_texts, load_tokenizer

LATTICE_CONFIG_FILE = "lattice_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"  # the sampling defaults of this model
OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class ArtistPipelineOutput:
    images: list[Image.Image] | np.ndarray | torch.Tensor  # N = prompts × num_images_per_prompt
    codes: torch.Tensor  # (N, img_len) the sampled image tokens


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The folder holding ``config.json``: ``path`` itself or its only subfolder that has one
    (release archives unpack into a folder named after the model)."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    inner = [p for p in path.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()] if path.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    raise FileNotFoundError(f"no {CONFIG_FILE} in {path}" + (" or in exactly one subfolder" if path.is_dir() else ""))


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder for a directory, a ModelZoo name or an object-storage URI."""
    if os.path.isdir(name_or_path):
        return checkpoint_dir(name_or_path)
    import modelzoo

    return checkpoint_dir(modelzoo.resolve(os.fspath(name_or_path)))


def has_entity_store(directory: Path) -> bool:
    return (directory / SAFETENSORS_FILE).is_file() or (directory / ENTITY2ID_FILE).is_file()


class ArtistPipeline:
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
        cls, name_or_path: str | os.PathLike, device=None, torch_dtype: torch.dtype | None = None
    ) -> ArtistPipeline:
        """Load from a directory, a ModelZoo name (e.g. ``artist-shapes-tiny-zh``) or a URI."""
        directory = resolve_checkpoint(name_or_path)
        model = ArtistModel.from_pretrained(directory, device=device, torch_dtype=torch_dtype)
        tokenizer = load_tokenizer(directory)
        entities, lattice_config = None, None
        if has_entity_store(directory):
            entities = EntityStore.load(directory)
        if (directory / LATTICE_CONFIG_FILE).is_file():
            lattice_config = LatticeConfig(**json.loads((directory / LATTICE_CONFIG_FILE).read_text("utf-8")))
        sampling = None
        if (directory / GENERATION_CONFIG_FILE).is_file():
            path = directory / GENERATION_CONFIG_FILE
            try:
                sampling = SamplingConfig.from_dict(json.loads(path.read_text("utf-8")))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}: {exc}") from exc
        return cls(model, tokenizer, entities, lattice_config, sampling)

    def save_pretrained(self, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Model weights and config, ``vocab.txt``, the entity store when there is one, and
        ``generation_config.json`` when the sampling defaults are not the plain ones.
        ``dtype=torch.float16`` halves the weights file (they are upcast again on loading)."""
        out = self.model.save_pretrained(directory, dtype=dtype)
        vocab = "".join(t + "\n" for t, _ in sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
        write_atomic(out / VOCAB_FILE, lambda p: Path(p).write_text(vocab, encoding="utf-8"))
        if self.entities is not None:
            self.entities.save(out)
        if self.lattice is not None:
            text = json.dumps(asdict(self.lattice.config), indent=2) + "\n"
            write_atomic(out / LATTICE_CONFIG_FILE, lambda p: Path(p).write_text(text, encoding="utf-8"))
        if self.sampling != SamplingConfig():
            text = json.dumps(self.sampling.to_dict(), indent=2) + "\n"
            write_atomic(out / GENERATION_CONFIG_FILE, lambda p: Path(p).write_text(text, encoding="utf-8"))
        return out

    def to(self, device=None, dtype: torch.dtype | None = None) -> ArtistPipeline:
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- generation ------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, KnowledgeInputs | None]:
        """Token ids (B, text_len) and, with an entity store, the entities found in each prompt."""
        if self.lattice is not None:
            enc, knowledge, _ = self.lattice.build(prompts)
            return enc.input_ids, knowledge
        return encode_texts(self.tokenizer, prompts, self.model.config.gpt.text_len).input_ids, None

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
    ) -> ArtistPipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt (prompt-major order).

        ``image_prompt_codes`` (B, k): known leading image tokens to complete (e.g. the top rows
        of ``pipe.model.vqgan.encode(image)``). ``output_type``: ``"pil"`` (list of PIL images),
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
        text_ids, knowledge = self.encode_prompts(prompts)
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
