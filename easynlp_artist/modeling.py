"""The whole ARTIST model: VQGAN (stage 1) + GPT (stage 2), with its checkpoint formats.

Two layouts are read:

* ours — ``config.json`` (sections ``vqgan`` and ``gpt``) + ``model.safetensors``;
* the EasyNLP release — flat ``config.json`` + ``pytorch_model.bin`` holding
  ``first_stage_model.*`` (taming VQGAN keys) and ``transformer.*`` (minGPT keys), read with
  ``torch.load(weights_only=True)``.

Either way every key must fit: missing, unexpected or mis-shaped tensors raise ``ValueError``
listing them (the original loaded with ``strict=False`` and silently kept random weights). The one
exception is the release's training-only key families (``TRAINING_ONLY_KEYS``: the VQGAN's
discriminator/perceptual loss module), skipped with one info line per family.
Both directories may also hold ``vocab.txt`` and an entity store, which travel with the model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.models.stage1.convert import load_taming_state_dict, to_taming_state_dict
from easynlp_artist.models.stage1.vqgan import VQGAN, VQGANConfig
from easynlp_artist.models.stage2.convert import convert_original, to_original
from easynlp_artist.models.stage2.gpt import ArtistGPT
from easynlp_artist.models.state_dicts import (
    load_weights_only,
    mismatches,
    safetensors_shapes,
    shape_mismatches,
)
from modelzoo.files import atomic_path, write_text_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ORIGINAL_WEIGHTS_FILE = "pytorch_model.bin"
VQGAN_PREFIX = "first_stage_model."
GPT_PREFIX = "transformer."
# key prefixes of the taming/EasyNLP training code that a real release file carries and no model uses
TRAINING_ONLY_KEYS = {
    VQGAN_PREFIX + "loss.": "the VQGAN's training loss (discriminator, perceptual loss, logvar)",
}

logger = logging.getLogger(__name__)


# sizes that multiply what building a model allocates; the others show in the key-by-key listing
LARGE_SIZES = ("gpt.n_layer", "gpt.n_embd", "gpt.text_len + gpt.img_len",
               "gpt vocab_size (img_vocab_size + text_vocab_size)")


def check_sizes(config: ArtistConfig, shapes: dict[str, tuple[int, ...]], vq_prefix: str, gpt_prefix: str,
                config_path: Path, weights: Path, only: tuple[str, ...] | None = None) -> None:
    """The sizes in ``config.json`` against the tensor shapes in the weights file's header (no
    tensor is allocated): an absurd or mistyped size is reported with the field, both files and
    both values instead of exhausting memory while building the model."""
    g, v = config.gpt, config.vqgan
    blocks = {k[len(gpt_prefix) :].split(".")[1] for k in shapes if k.startswith(gpt_prefix + "blocks.")}
    pos = shapes.get(gpt_prefix + "pos_emb")
    tok = shapes.get(gpt_prefix + "tok_emb.weight")
    head = shapes.get(gpt_prefix + "head.weight")
    codebook = next((s for k, s in shapes.items() if k.startswith(vq_prefix) and k.endswith("embedding.weight")), None)
    found = {
        "gpt.n_layer": (g.n_layer, len(blocks)),
        "gpt.n_embd": (g.n_embd, pos[-1] if pos else None),
        "gpt.text_len + gpt.img_len": (g.block_size, pos[1] if pos and len(pos) == 3 else None),
        "gpt vocab_size (img_vocab_size + text_vocab_size)": (g.vocab_size, tok[0] if tok else None),
        "gpt.img_vocab_size": (g.img_vocab_size, head[0] if head else None),
        "vqgan.n_embed": (v.n_embed, codebook[0] if codebook else None),
        "vqgan.embed_dim": (v.embed_dim, codebook[1] if codebook and len(codebook) == 2 else None),
    }
    if only is not None:
        found = {k: v for k, v in found.items() if k in only}
    wrong = [f"{field}={want} but {weights.name} holds {have}" for field, (want, have) in found.items()
             if have is not None and want != have]
    missing = [field for field, (_, have) in found.items() if have is None and field != "gpt.n_layer"]
    if wrong or missing:
        detail = "; ".join(wrong + ([f"no tensor for {', '.join(missing)}"] if missing else []))
        raise ValueError(f"{config_path} does not describe {weights}: {detail}")


class ArtistModel(nn.Module):
    def __init__(self, config: ArtistConfig) -> None:
        super().__init__()
        self.config = config
        self.vqgan = VQGAN(config.vqgan)
        self.gpt = ArtistGPT(config.gpt)

    @property
    def device(self) -> torch.device:
        return self.gpt.pos_emb.device

    @property
    def dtype(self) -> torch.dtype:
        return self.gpt.pos_emb.dtype

    # ---- checkpoints -----------------------------------------------------------------------------

    def save_pretrained(
        self, directory: str | os.PathLike, *, original_layout: bool = False, dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (or, with ``original_layout``, the release's
        flat ``config.json`` + ``pytorch_model.bin``). Each file is written atomically. ``dtype``
        (e.g. ``torch.float16``) stores floating-point weights smaller; loading upcasts them."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if original_layout:
            state = to_taming_state_dict(self.vqgan, prefix=VQGAN_PREFIX)
            gpt_sd = {k: v.detach().cpu() for k, v in self.gpt.state_dict().items()}
            state.update({GPT_PREFIX + k: v for k, v in to_original(gpt_sd, self.config.gpt).items()})
            config = self.config.to_original()
            with atomic_path(out / ORIGINAL_WEIGHTS_FILE) as tmp:
                torch.save(state, tmp)
        else:
            state = {
                k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                for k, v in self.state_dict().items()
            }
            config = self.config.to_dict()
            with atomic_path(out / WEIGHTS_FILE) as tmp:
                save_file(state, tmp, metadata={"format": "pt"})
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        write_text_atomic(out / CONFIG_FILE, text)
        return out

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device=None,
        torch_dtype: torch.dtype | None = None,
        vqgan: VQGANConfig | None = None,
    ) -> ArtistModel:
        """Load either checkpoint layout from a local directory.

        ``vqgan`` applies to the original layout only, whose config.json does not describe the
        tokenizer (default: the release's f16 VQGAN).
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: invalid JSON ({e})") from e
        if "gpt" in raw:
            weights = directory / WEIGHTS_FILE
            if not weights.is_file():
                raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
            try:
                config = ArtistConfig.from_dict(raw)
            except ValueError as e:
                raise ValueError(f"{config_path}: {e}") from None
            # every size is checked against the weights' header before anything is allocated
            shapes = safetensors_shapes(weights)
            check_sizes(config, shapes, "vqgan.", "gpt.", config_path, weights, only=LARGE_SIZES)
            with torch.device("meta"):  # shapes only: nothing is allocated
                expected = {k: tuple(t.shape) for k, t in cls(config).state_dict().items()}
            problems = shape_mismatches(shapes, expected)
            if problems:
                raise ValueError(f"{weights} does not fit config.json:\n  " + "\n  ".join(problems))
            model = cls(config)
            model._load_checked(load_file(weights), str(weights))
        else:
            weights = directory / ORIGINAL_WEIGHTS_FILE
            if not weights.is_file():
                raise FileNotFoundError(f"no {ORIGINAL_WEIGHTS_FILE} (original layout) in {directory}")
            state = load_weights_only(weights)  # memory-mapped: tensors are read when loaded into the model
            if "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            ent = state.get(GPT_PREFIX + "ent_emb.weight")
            try:
                config = ArtistConfig.from_original(raw, vqgan, entity_dim=None if ent is None else ent.shape[1])
            except ValueError as e:
                raise ValueError(f"{config_path}: {e}") from None
            shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
            check_sizes(config, shapes, VQGAN_PREFIX, GPT_PREFIX, config_path, weights)
            model = cls(config)
            model.load_original_state_dict(state, str(weights))
        dtype = torch_dtype or torch.float32
        return model.to(device=device or "cpu", dtype=dtype).eval()

    def _load_checked(self, state: dict[str, torch.Tensor], source: str) -> None:
        problems = mismatches(state, {k: tuple(v.shape) for k, v in self.state_dict().items()})
        if problems:
            raise ValueError(f"{source} does not fit config.json:\n  " + "\n  ".join(problems))
        self.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})

    def load_original_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """``first_stage_model.*`` (taming) + ``transformer.*`` (minGPT) → this model, strictly
        (training-only families, ``TRAINING_ONLY_KEYS``, are skipped with one info line each)."""
        for prefix, what in TRAINING_ONLY_KEYS.items():
            skipped = [k for k in state if k.startswith(prefix)]
            if skipped:
                logger.info("%s: skipping %d training-only keys %s* (%s)", source, len(skipped), prefix, what)
                state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        vq = {k[len(VQGAN_PREFIX) :]: v for k, v in state.items() if k.startswith(VQGAN_PREFIX)}
        gpt = {k[len(GPT_PREFIX) :]: v for k, v in state.items() if k.startswith(GPT_PREFIX)}
        other = sorted(k for k in state if not k.startswith((VQGAN_PREFIX, GPT_PREFIX)))
        if other:
            raise ValueError(f"{source}: unexpected keys outside first_stage_model./transformer.: {', '.join(other[:20])}")
        try:
            load_taming_state_dict(self.vqgan, vq)
            self.gpt.load_state_dict(convert_original(gpt, self.config.gpt))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
