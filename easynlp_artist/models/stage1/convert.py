"""The taming-transformers / EasyNLP layout of the stage-1 VQGAN, to and from diffusers' ``VQModel`` keys.

Taming names the decoder's levels from the lowest resolution up (diffusers from the top down),
calls the blocks ``down.{i}.block.{j}`` / ``mid.block_1`` / ``norm_out`` / ``nin_shortcut``, and
stores the attention projections as 1x1 convolutions (diffusers: linears). Every conversion
checks every key: missing, unexpected or mis-shaped tensors raise ``ValueError`` listing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from easynlp_artist.models.stage1.vqgan import VQGAN, VQGANConfig, build_vq_model

TAMING_PREFIX = "first_stage_model."  # the VQGAN's keys in the whole EasyNLP app state dict


def load_taming_state_dict(model: VQGAN, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load taming-named weights (with or without the ``first_stage_model.`` prefix) into ``model``, strictly."""
    model.vq_model.load_state_dict(convert_taming_state_dict(state_dict, model.config), strict=True)


def to_taming_state_dict(model: VQGAN, prefix: str = "") -> dict[str, torch.Tensor]:
    """``model``'s weights in taming's layout, keys prefixed with ``prefix``
    (e.g. :data:`TAMING_PREFIX` for an EasyNLP ``pytorch_model.bin``)."""
    converted = convert_to_taming_state_dict(model.vq_model.state_dict(), model.config)
    return {prefix + k: v for k, v in converted.items()}


_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_ATTN_LINEARS = ("q", "k", "v", "proj_out")


def _resnet_part(rest: str) -> str:
    return "nin_shortcut" + rest[len("conv_shortcut"):] if rest.startswith("conv_shortcut.") else rest


def _attention_part(rest: str) -> str:
    for diffusers_name, taming_name in _ATTN_NAMES.items():
        if rest.startswith(diffusers_name + "."):
            return taming_name + rest[len(diffusers_name):]
    raise RuntimeError(f"unmapped diffusers attention parameter {rest!r}")


def _taming_name(key: str, num_levels: int) -> str:
    """diffusers VQModel key -> taming key."""
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet_part(m[3])}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_attention_part(m[2])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
        return "encoder.down." + _level_part(m[1], m[2], m[3], m[4], "downsample")
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key):
        level = num_levels - 1 - int(m[1])  # taming counts decoder levels from the lowest resolution
        return "decoder.up." + _level_part(str(level), m[2], m[3], m[4], "upsample")
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv, quantize.embedding.weight


def _level_part(level: str, kind: str, index: str, rest: str, sampler: str) -> str:
    if kind == "resnets":
        return f"{level}.block.{index}.{_resnet_part(rest)}"
    if kind == "attentions":
        return f"{level}.attn.{index}.{_attention_part(rest)}"
    return f"{level}.{sampler}.{rest}"  # the single down/upsampler's conv


@dataclass(frozen=True)
class _Entry:
    diffusers_key: str
    taming_key: str
    diffusers_shape: tuple[int, ...]
    squeeze: bool  # taming stores a 1x1 conv [C, C, 1, 1]; diffusers a linear [C, C]

    @property
    def taming_shape(self) -> tuple[int, ...]:
        return (*self.diffusers_shape, 1, 1) if self.squeeze else self.diffusers_shape


def _key_map(config: VQGANConfig) -> list[_Entry]:
    with torch.device("meta"):
        reference = build_vq_model(config)
    entries = []
    for key, tensor in reference.state_dict().items():
        taming_key = _taming_name(key, config.num_levels)
        squeeze = bool(re.search(r"\.(attn\.\d+|attn_1)\.(q|k|v|proj_out)\.weight$", taming_key))
        entries.append(_Entry(key, taming_key, tuple(tensor.shape), squeeze))
    return entries


def _list(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_keys(kind: str, given: Iterable[str], expected: Iterable[str]) -> None:
    given, expected = set(given), set(expected)
    missing, unexpected = expected - given, given - expected
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_list(unexpected)}")
    if problems:
        raise ValueError(f"{kind} state dict does not match the VQGAN config: " + "; ".join(problems))


def _check_shapes(kind: str, mismatched: list[str]) -> None:
    if mismatched:
        raise ValueError(f"{kind} state dict has {len(mismatched)} shape mismatch(es): {_list(mismatched)}")


def select_first_stage(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``first_stage_model.*`` entries of a whole EasyNLP app state dict, prefix removed
    (``transformer.*`` and anything else dropped); a dict without such keys is returned unchanged."""
    if not any(k.startswith(TAMING_PREFIX) for k in state_dict):
        return dict(state_dict)
    return {k[len(TAMING_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TAMING_PREFIX)}


def convert_taming_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: VQGANConfig | None = None
) -> dict[str, torch.Tensor]:
    """Taming / EasyNLP VQGAN weights -> diffusers ``VQModel`` keys for ``config``.

    A leading ``first_stage_model.`` is removed from keys that have it. Every key must be accounted
    for: missing keys, unexpected keys (e.g. ``transformer.*`` or taming's ``loss.*``; filter those
    out first) and shape mismatches raise ``ValueError`` listing them.
    """
    config = config if config is not None else VQGANConfig()
    stripped = {k[len(TAMING_PREFIX):] if k.startswith(TAMING_PREFIX) else k: v for k, v in state_dict.items()}
    if len(stripped) != len(state_dict):
        raise ValueError("taming state dict has keys both with and without the 'first_stage_model.' prefix")
    pairs = [(e.taming_key, e.taming_shape, e.diffusers_key, e.diffusers_shape) for e in _key_map(config)]
    return _rename("taming", stripped, pairs)


def convert_to_taming_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: VQGANConfig | None = None
) -> dict[str, torch.Tensor]:
    """diffusers ``VQModel`` weights -> taming keys (no prefix); the inverse of
    :func:`convert_taming_state_dict`, with the same key and shape checks."""
    config = config if config is not None else VQGANConfig()
    pairs = [(e.diffusers_key, e.diffusers_shape, e.taming_key, e.taming_shape) for e in _key_map(config)]
    return _rename("diffusers", state_dict, pairs)


def _rename(
    kind: str, state_dict: Mapping[str, torch.Tensor], pairs: list[tuple[str, tuple[int, ...], str, tuple[int, ...]]]
) -> dict[str, torch.Tensor]:
    """(source key, source shape, target key, target shape) for every tensor: check, then rename
    (and reshape where the layouts differ: taming's 1x1 attention convolutions)."""
    _check_keys(kind, state_dict, (src for src, *_ in pairs))
    _check_shapes(kind, [
        f"{src}: got {tuple(state_dict[src].shape)}, expected {shape}"
        for src, shape, _, _ in pairs if tuple(state_dict[src].shape) != shape
    ])
    return {dst: state_dict[src] if dst_shape == shape else state_dict[src].reshape(dst_shape)
            for src, shape, dst, dst_shape in pairs}
