"""The notebook API: load a checkpoint by name or path, call it with prompts, get images.

    >>> from easynlp_artist import ArtistPipeline
    >>> pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    >>> out = pipe("一个番茄", num_images_per_prompt=4, generator=torch.Generator().manual_seed(0))
    >>> out.images[0].save("tomato.png")

When the checkpoint carries an entity store, the entities in each prompt are found (the word
lattice) and fused into the text embeddings automatically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens
from easynlp_artist.progress import sampling_text
from easynlp_artist.tokenization import VOCAB_FILE, EncodedText, PromptStats, encode_texts, load_tokenizer
from modelzoo.files import write_text_atomic

LATTICE_CONFIG_FILE = "lattice_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"  # the sampling defaults of this model
OUTPUT_TYPES = ("pil", "np", "pt")

logger = logging.getLogger(__name__)


@dataclass
class ArtistPipelineOutput:
    images: list[Image.Image] | np.ndarray | torch.Tensor  # N = prompts × num_images_per_prompt
    codes: torch.Tensor  # (N, img_len) the sampled image tokens

    def to_tuple(self) -> tuple:
        return self.images, self.codes

    def __getitem__(self, key: int | slice | str):
        """``out[0]`` is the images and ``out[1]`` the codes (as diffusers' outputs); ``out["images"]`` too."""
        if isinstance(key, str):
            if key not in ("images", "codes"):
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


def make_image_grid(images: Sequence[Image.Image], rows: int, cols: int, scale: int = 1) -> Image.Image:
    """One picture of ``rows × cols`` images (row-major). ``scale`` enlarges it by nearest neighbour,
    for display only: small images (16 px for the embedded model) stay sharp at a readable size."""
    if rows < 1 or cols < 1 or len(images) != rows * cols:
        raise ValueError(f"make_image_grid: {len(images)} image(s) do not fill {rows} row(s) × {cols} column(s)")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"make_image_grid: scale must be a positive integer, got {scale!r}")
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, img in enumerate(images):
        if img.size != (w, h):
            raise ValueError(f"make_image_grid: image {i} is {img.size[0]}×{img.size[1]}, image 0 is {w}×{h}")
        grid.paste(img.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid if scale == 1 else grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def _prompt_list(prompt, name: str) -> list[str]:
    """A prompt argument as a non-empty list of strings; anything else is a ValueError naming it."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {_kind(prompt)}")
    bad = [i for i, p in enumerate(prompt) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"{name}[{bad[0]}] is {_kind(prompt[bad[0]])}, not a string")
    return list(prompt)


def _kind(value) -> str:
    return "None" if value is None else f"{type(value).__name__} {value!r}"[:80]


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
        # prompts the model cannot read whole (unknown characters, cut, empty), over this pipeline's life;
        # an app that wants one run's figures sets a fresh PromptStats() first
        self.prompt_stats = PromptStats()
        self._progress_bar_config: dict[str, Any] = {}
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

    # ---- editing knowledge ------------------------------------------------------------------------

    def add_entities(self, triples, *, skip_first_line: bool = False) -> list[str]:
        """Teach the model new entities from their facts, no images and no training: ``triples`` is a
        ``head<TAB>relation<TAB>tail`` file or a list of ``(head, relation, tail)``; each new entity's
        vector is derived in the trained TransE space (:mod:`.knowledge.extend`). The entity store and
        the matcher change in place; ``save_pretrained`` keeps them. Returns the new names."""
        from .knowledge.extend import add_entities

        return add_entities(self, triples, skip_first_line=skip_first_line)

    def remove_entities(self, names: Sequence[str]) -> None:
        """Forget entities by name (the matcher no longer finds them)."""
        from .knowledge.extend import remove_entities

        remove_entities(self, names)

    def to(self, device=None, dtype: torch.dtype | None = None) -> ArtistPipeline:
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def __repr__(self) -> str:
        gpt, vq = self.model.config.gpt, self.model.config.vqgan
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        if self.lattice is not None:
            cfg = self.lattice.config
            knowledge = (f"{len(self.entities)} entities of width {self.entities.dim}, fusion {gpt.knowledge_fusion!r}, "
                         f"entity_num={cfg.entity_num}, min_chars={cfg.min_chars}, alignment={cfg.alignment!r}")
        elif gpt.entity_dim is not None:
            knowledge = f"none loaded (the model takes entities of width {gpt.entity_dim})"
        else:
            knowledge = "none (the model takes no entities)"
        sampling = sampling_text(self.sampling)
        return (
            f"{type(self).__name__}(\n"
            f"  gpt: {gpt.n_layer} layers, {gpt.n_embd} wide, {gpt.n_head} heads, {count(self.model.gpt):,} parameters;"
            f" text_len={gpt.text_len}, {len(self.tokenizer)} text tokens\n"
            f"  vqgan: {vq.resolution}×{vq.resolution} px ↔ {gpt.img_len} codes of {vq.n_embed},"
            f" {count(self.model.vqgan):,} parameters\n"
            f"  knowledge: {knowledge}\n"
            f"  device: {self.device}, dtype: {self.dtype}\n"
            f"  sampling defaults: {sampling}\n)"
        )

    def set_progress_bar_config(self, **kwargs) -> None:
        """Settings of the tqdm bar over image positions that each call shows (as diffusers):
        ``disable=True`` turns it off, any other tqdm argument (``desc``, ``leave``, ``file``…) is passed on."""
        self._progress_bar_config = dict(kwargs)

    @contextlib.contextmanager
    def progress_bar_disabled(self) -> Iterator[None]:
        """No per-call bar inside (for a caller that shows its own progress over many calls)."""
        saved = self._progress_bar_config
        self._progress_bar_config = {**saved, "disable": True}
        try:
            yield
        finally:
            self._progress_bar_config = saved

    def progress_bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, **{"desc": "image tokens", "unit": "token", **self._progress_bar_config})

    # ---- generation ------------------------------------------------------------------------------

    def encode_prompts(
        self, prompts: list[str], prompt_lattices: Sequence[Lattice] | None = None
    ) -> tuple[torch.Tensor, KnowledgeInputs | None]:
        """Token ids (B, text_len) and, with an entity store, the entities of each prompt: found
        by the lattice, or given as ``prompt_lattices`` (EasyNLP's preprocessed columns).
        Prompts with unknown characters, cut or empty are counted in ``self.prompt_stats``."""
        ids, knowledge, enc = self._encode(prompts, prompt_lattices)
        self.prompt_stats.add(prompts, enc)
        return ids, knowledge

    def _encode(
        self, prompts: list[str], prompt_lattices: Sequence[Lattice] | None = None
    ) -> tuple[torch.Tensor, KnowledgeInputs | None, EncodedText]:
        text_len = self.model.config.gpt.text_len
        knowledge = None
        if prompt_lattices is not None and self.lattice is not None:
            if len(prompt_lattices) != len(prompts):
                raise ValueError(f"{len(prompt_lattices)} prompt_lattices for {len(prompts)} prompts")
            enc = encode_texts(self.tokenizer, prompts, text_len)
            knowledge = knowledge_from_lattices(prompt_lattices, self.entities, text_len=text_len,
                                                entity_num=self.lattice.config.entity_num)
        elif self.lattice is not None:
            enc, knowledge, _ = self.lattice.build(prompts)
        else:
            enc = encode_texts(self.tokenizer, prompts, text_len)
        return enc.input_ids, None if knowledge is None else self._for_fusion(knowledge), enc

    def _encode_with_negative(
        self, prompts: list[str], negatives: list[str] | None, prompt_lattices: Sequence[Lattice] | None
    ) -> tuple[torch.Tensor, KnowledgeInputs | None, torch.Tensor | None, KnowledgeInputs | None]:
        """Prompts and negative prompts in one batch (so their entity slots line up), then split."""
        B = len(prompts)
        lattices = prompt_lattices
        if negatives is not None and prompt_lattices is not None and self.lattice is not None:
            # the prompts' entities were given; the negative prompts' are found by the lattice
            enc = encode_texts(self.tokenizer, negatives, self.model.config.gpt.text_len)
            lattices = [*prompt_lattices, *(self.lattice.lattice(t[:n], offs, trunc)
                                            for t, n, offs, trunc in zip(negatives, enc.chars, enc.offsets, enc.truncated))]
        ids, knowledge, enc = self._encode(prompts + (negatives or []), lattices)
        self.prompt_stats.add(prompts, enc)  # the first B rows: the negative prompts are not counted
        if negatives is None:
            return ids, knowledge, None, None
        first, second = torch.arange(B), torch.arange(B, 2 * B)
        if knowledge is None:
            return ids[:B], None, ids[B:], None
        return ids[:B], knowledge.index_select(first), ids[B:], knowledge.index_select(second)

    def on_model(self, x: torch.Tensor | KnowledgeInputs | None):
        """Token ids or codes moved to the model's device; knowledge to its device and dtype."""
        if x is None:
            return None
        return x.to(self.device) if isinstance(x, torch.Tensor) else x.to(self.device, self.dtype)

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
        method: str | None = None,
        jacobi_window: int | None = None,
        weights: str | None = None,
        negative_prompt: str | list[str] | None = None,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[ArtistPipeline, int, torch.Tensor], None] | None = None,
        image_prompt_codes: torch.Tensor | None = None,
        prompt_lattices: Sequence[Lattice] | None = None,
    ) -> ArtistPipelineOutput | tuple:
        """Generate ``num_images_per_prompt`` images for each prompt (prompt-major order).

        ``negative_prompt`` (a string, or one per prompt): with ``guidance_scale > 1`` the
        unconditional rows of classifier-free guidance take its text and its entities instead of
        the empty caption, so sampling moves away from it (as in diffusers); without guidance it is
        not used. ``image_prompt_codes`` (B, k): known leading image tokens to complete (e.g. the top
        rows of ``pipe.model.vqgan.encode(image)``). ``prompt_lattices``: the entities already found
        in each prompt (EasyNLP's preprocessed ``lex_id, pos_s, pos_e`` columns), used instead of
        matching. ``output_type``: ``"pil"`` (list of PIL images),
        ``"np"`` (N, H, W, 3) float in [0, 1], or ``"pt"`` (N, 3, H, W) float in [0, 1].
        ``return_dict=False``: the tuple ``(images, codes)``.

        ``callback_on_step_end(pipe, step, codes_so_far)`` is called after each drawn image token:
        ``step`` is its position (0 … img_len-1), ``codes_so_far`` a copy of the (N, step + 1) codes
        drawn so far (image prefix included) — what a streaming preview needs. A tqdm bar over the
        image positions is shown unless ``pipe.set_progress_bar_config(disable=True)``.

        Sampling arguments left at None take the model's defaults, ``pipe.sampling`` (plain
        sampling unless the checkpoint's generation_config.json says otherwise); ``top_k=0`` /
        ``top_p=1.0`` switch a default filter off. ``method`` (``"sequential"`` or ``"jacobi"``) and
        ``jacobi_window``: how the codes are drawn; ``weights`` (``"model"`` or ``"int8"``): which form
        of the GPT's weights decodes them (see ``SamplingConfig``). ``sampling``: a whole
        ``SamplingConfig`` used instead of ``pipe.sampling`` under the arguments given (the app passes
        its effective settings this way).
        """
        prompts = _prompt_list(prompt, "prompt")
        negatives = None
        if negative_prompt is not None:
            negatives = _prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            elif len(negatives) != len(prompts):
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts (give one, or one per prompt)")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        sampling = (sampling or self.sampling).updated(
            top_k=top_k, top_p=top_p, temperature=temperature, guidance_scale=guidance_scale,
            method=method, jacobi_window=jacobi_window, weights=weights,
        )
        if negatives is not None and sampling.guidance_scale == 1.0:
            logger.warning("negative_prompt is used only with guidance (guidance_scale > 1); it is ignored here")
            negatives = None
        empty = self.prompt_stats.empty
        text_ids, knowledge, negative_ids, negative_knowledge = (
            self.on_model(t) for t in self._encode_with_negative(prompts, negatives, prompt_lattices))
        if self.prompt_stats.empty > empty:
            warnings.warn("an empty prompt (no token the model reads) generates the unconditional image", stacklevel=2)
        img_len = self.model.config.gpt.img_len
        first = 0 if image_prompt_codes is None else image_prompt_codes.shape[1]
        bar = self.progress_bar(max(img_len - first, 0))

        def on_step(step: int, codes: torch.Tensor) -> None:
            bar.update(1)
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, codes[:, : step + 1].clone())

        try:
            codes = sample_image_tokens(
                self.model.gpt, text_ids, knowledge, num_images_per_prompt=num_images_per_prompt, sampling=sampling,
                generator=generator, negative_text_ids=negative_ids, negative_knowledge=negative_knowledge,
                image_prefix=self.on_model(image_prompt_codes),
                callback=on_step,
            )
        finally:
            bar.close()
        images = self.model.vqgan.decode(codes).float()  # (N, 3, H, W) in [-1, 1]
        if output_type == "pt":
            out = ArtistPipelineOutput(((images.float().clamp(-1, 1) + 1) / 2).cpu(), codes)
        else:
            pixels = images_to_uint8(images).cpu().numpy()  # (N, H, W, 3) uint8
            if output_type == "np":
                out = ArtistPipelineOutput(pixels.astype(np.float32) / 255.0, codes)
            else:
                out = ArtistPipelineOutput([Image.fromarray(p) for p in pixels], codes)
        return out if return_dict else out.to_tuple()
