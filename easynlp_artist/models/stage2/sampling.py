"""Autoregressive sampling of image tokens with a key/value cache.

One prefill pass runs the text (plus any known leading image tokens); each further image token
costs one single-position step. Classifier-free guidance puts the conditional rows and the
unconditional rows (all-[PAD] text, no entities) in one batch and mixes their logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

import torch

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.models.stage2 import decoding
from easynlp_artist.models.stage2.gpt import ArtistGPT


@dataclass
class SamplingConfig:
    top_k: int | None = None  # keep the k most likely codes (None or 0: all)
    top_p: float | None = None  # nucleus: smallest set with this much probability (None or 1: all)
    temperature: float = 1.0
    guidance_scale: float = 1.0  # 1 = plain conditional sampling; > 1 = classifier-free guidance

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0 (use top_k=1 for greedy decoding), got {self.temperature}")
        if self.guidance_scale < 0.0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SamplingConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown sampling fields: {', '.join(unknown)}")
        return cls(**d)

    def updated(self, **given) -> SamplingConfig:
        """These defaults with every argument that is not None put over them. To switch a default
        filter off, pass its neutral value (``top_k=0``, ``top_p=1.0``)."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k / top-p set to -inf. logits: (B, V)."""
    if top_k:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a code when the codes before it already reach top_p (the most likely is always kept)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: move from the unconditional logits towards (and past) the conditional."""
    return uncond + scale * (cond - uncond)


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One code per row of probs (n, V) → (n, 1): the first code whose cumulative mass exceeds a
    uniform draw. One random number per row; ``torch.multinomial`` draws V exponentials per row
    (its cost at 16384 codes: bench/README.md)."""
    cdf = probs.cumsum(dim=-1)  # (n, V)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    # u < total, so a code with zero mass (cdf equal to its predecessor's) is never the first above u
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)


def _draw(
    probs: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None, per_prompt: int
) -> torch.Tensor:
    """One code per row of probs (n, V) → (n, 1); a list of generators serves one prompt's rows each."""
    if not isinstance(generator, (list, tuple)):
        if generator is not None and generator.device != probs.device:
            probs = probs.to(generator.device)
        return _inverse_cdf(probs, generator)
    parts = []
    for i, g in enumerate(generator):
        rows = probs[i * per_prompt : (i + 1) * per_prompt]
        parts.append(_inverse_cdf(rows.to(g.device), g).to(probs.device))
    return torch.cat(parts)


@torch.no_grad()
def sample_image_tokens(
    gpt: ArtistGPT,
    text_ids: torch.Tensor,
    knowledge: KnowledgeInputs | None = None,
    *,
    num_images_per_prompt: int = 1,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    image_prefix: torch.Tensor | None = None,
    use_cache: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    negative_text_ids: torch.Tensor | None = None,
    negative_knowledge: KnowledgeInputs | None = None,
) -> torch.Tensor:
    """Sample image codes for each prompt.

    text_ids: (B, text_len) tokenizer ids. image_prefix: (B, k) known leading codes (image-prompt
    completion, e.g. the top rows of an encoded picture). Returns (B * num_images_per_prompt,
    img_len) codes, prompt-major (all samples of prompt 0 first). ``use_cache=False`` re-runs the
    whole sequence for every token — the original algorithm, kept as the reference.

    ``generator`` may be a list with one generator per prompt: each prompt's samples then depend
    only on its own generator, not on which other prompts share the batch (so sharded and
    batched runs reproduce each other).

    ``callback(step_index, codes_so_far)`` is called after each drawn position: ``codes_so_far``
    is the (B * num_images_per_prompt, img_len) output, of which the columns ``< step_index + 1``
    are final (the image prefix included); the others are not yet written. It is the output tensor
    itself, so a callback that keeps it must clone it (a streaming preview, a diffusers-style
    ``callback_on_step_end``).

    With guidance, the unconditional rows take ``negative_text_ids`` (B, text_len) and
    ``negative_knowledge`` (a negative prompt, as in diffusers) instead of the empty caption.
    """
    cfg = sampling or SamplingConfig()
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
    B = text_ids.shape[0]
    img_len = gpt.config.img_len
    k = 0 if image_prefix is None else image_prefix.shape[1]
    if image_prefix is not None:
        if image_prefix.shape[0] != B:
            raise ValueError(f"image_prefix has {image_prefix.shape[0]} rows for {B} prompts")
        if not 0 <= k < img_len:
            raise ValueError(f"image_prefix must hold fewer than img_len={img_len} codes, got {k}")
        if k and (image_prefix.min() < 0 or image_prefix.max() >= gpt.config.img_vocab_size):
            raise ValueError(f"image_prefix codes must be in [0, {gpt.config.img_vocab_size})")

    rows = torch.arange(B, device=text_ids.device).repeat_interleave(num_images_per_prompt)
    text = text_ids[rows]
    know = knowledge.index_select(rows) if knowledge is not None else None
    prefix = image_prefix[rows] if image_prefix is not None else None
    n = text.shape[0]
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for {B} prompts (one per prompt, or a single one)")
    guided = cfg.guidance_scale != 1.0
    if negative_text_ids is not None and negative_text_ids.shape != text_ids.shape:
        raise ValueError(f"negative_text_ids has shape {tuple(negative_text_ids.shape)}, text_ids {tuple(text_ids.shape)}")
    if guided:
        # second half: the unconditional rows — the negative prompt, else the empty caption and no entities
        if negative_text_ids is None:
            text = torch.cat([text, torch.full_like(text, gpt.pad_text_id)])
        else:
            text = torch.cat([text, negative_text_ids.to(text.device)[rows]])
        if negative_knowledge is not None and know is not None:
            if negative_knowledge.mask.shape != knowledge.mask.shape:
                raise ValueError(f"negative_knowledge has {tuple(negative_knowledge.mask.shape)} entity slots, "
                                 f"knowledge {tuple(knowledge.mask.shape)} (encode both in one batch)")
            know = know.cat(negative_knowledge.index_select(rows))
        elif know is not None:
            know = know.cat(know.with_mask(torch.zeros_like(know.mask)))
        if prefix is not None:
            prefix = torch.cat([prefix, prefix])

    out = torch.empty(n, img_len, dtype=torch.long, device=text_ids.device)
    if k:
        out[:, :k] = image_prefix[rows]

    cache = decoding.new_cache(gpt, text.shape[0]) if use_cache else None
    logits = gpt.prefill(text, know, cache, prefix)
    for i in range(k, img_len):
        logits = logits.float()
        if guided:
            logits = guide(logits[:n], logits[n:], cfg.guidance_scale)
        logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
        nxt = _draw(logits.softmax(dim=-1), generator, num_images_per_prompt).to(out.device)  # (n, 1)
        out[:, i] = nxt[:, 0]
        if callback is not None:
            callback(i, out)
        if i == img_len - 1:
            break
        fed = torch.cat([nxt, nxt]) if guided else nxt
        if use_cache:
            logits = gpt.step(fed, cache)
        else:
            seen = out[:, : i + 1]  # (n, i+1): the image prefix and every code sampled so far
            logits = gpt.prefill(text, know, None, torch.cat([seen, seen]) if guided else seen)
    return out
