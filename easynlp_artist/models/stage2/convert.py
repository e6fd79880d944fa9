"""The original minGPT / EasyNLP checkpoint layout of the stage-2 GPT, to and from ours.

The only differences: the original keeps query, key and value as three Linears where ours stacks
them into ``attn.qkv``, and it stores a causal-mask buffer ``attn.mask`` per block.
"""

from __future__ import annotations

import torch

from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig
from easynlp_artist.models.state_dicts import mismatches

_PREFIX = "transformer."  # the GPT's keys in the whole EasyNLP app state dict
_BUFFER_SUFFIX = ".attn.mask"  # a causal-mask buffer per block; it carries no weights
_QKV = ("query", "key", "value")


def original_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the original minGPT checkpoint (without the ``transformer.`` prefix)."""
    C, bs = config.n_embd, config.block_size
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in ArtistGPT.expected_shapes(config).items():
        if ".attn.qkv." in key:
            head, kind = key.split(".attn.qkv.")
            for name in _QKV:
                out[f"{head}.attn.{name}.{kind}"] = (C, *shape[1:])
        else:
            out[key] = shape
    for i in range(config.n_layer):
        out[f"blocks.{i}{_BUFFER_SUFFIX}"] = (1, 1, bs, bs)
    return out


def convert_original(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """minGPT/EasyNLP ``transformer.*`` keys (prefix optional) → ``ArtistGPT`` state dict.

    Every key must fit, checked in the original names: missing, unexpected or mis-shaped tensors
    raise ``ValueError`` listing them. Query, key and value are then stacked into ``qkv``; the
    per-block ``attn.mask`` buffers (a causal mask) carry no weights and are dropped.
    """
    sd = {k[len(_PREFIX) :] if k.startswith(_PREFIX) else k: v for k, v in sd.items()}
    problems = mismatches(sd, original_shapes(config))
    if problems:
        raise ValueError("checkpoint does not fit the GPT config:\n  " + "\n  ".join(problems))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(_BUFFER_SUFFIX):
            continue
        head, sep, rest = key.partition(".attn.query.")
        if sep:
            out[f"{head}.attn.qkv.{rest}"] = torch.cat([sd[f"{head}.attn.{n}.{rest}"] for n in _QKV], dim=0)
        elif ".attn.key." not in key and ".attn.value." not in key:
            out[key] = value
    return out


def to_original(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Inverse of ``convert_original``: split ``qkv`` and add the causal-mask buffers (no prefix)."""
    out: dict[str, torch.Tensor] = {}
    bs = config.block_size
    mask = torch.tril(torch.ones(bs, bs)).view(1, 1, bs, bs)
    for key, value in sd.items():
        if ".attn.qkv." in key:
            head, kind = key.split(".attn.qkv.")
            for name, part in zip(_QKV, value.split(config.n_embd, dim=0)):
                out[f"{head}.attn.{name}.{kind}"] = part.clone()
        else:
            out[key] = value
    for i in range(config.n_layer):
        out[f"blocks.{i}{_BUFFER_SUFFIX}"] = mask.clone()
    return out
