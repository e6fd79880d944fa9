"""Autoregressive sampling of image tokens with a key/value cache.

One prefill pass runs the text (plus any known leading image tokens); each further image token
costs one single-position step. Classifier-free guidance puts the conditional rows and the
unconditional rows (all-[PAD] text, no entities) in one batch and mixes their logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.models.fields import from_dict
from easynlp_artist.models.stage2 import decoding
from easynlp_artist.models.stage2.gpt import ArtistGPT

METHODS = ("sequential", "jacobi")


@dataclass
class SamplingConfig:
    top_k: int | None = None  # keep the k most likely codes (None or 0: all)
    top_p: float | None = None  # nucleus: smallest set with this much probability (None or 1: all)
    temperature: float = 1.0
    guidance_scale: float = 1.0  # 1 = plain conditional sampling; > 1 = classifier-free guidance
    # "sequential": one forward step per code; "jacobi": speculative Jacobi decoding, a window of
    # guessed codes verified per forward pass (same distribution, fewer passes; see _sample_jacobi)
    method: str = "sequential"
    jacobi_window: int = 16  # guessed codes per pass (Teng et al. 2024 use 16)
    # the GPT's Linear weights while decoding: "model" (its own dtype, oneDNN-packed where that
    # pays) or "int8" (weight-only int8, CPU: fewer bytes per step, pays at 1-2 rows per step)
    weights: str = "model"

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0 (use top_k=1 for greedy decoding), got {self.temperature}")
        if self.guidance_scale < 0.0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.jacobi_window < 1:
            raise ValueError(f"jacobi_window must be >= 1, got {self.jacobi_window}")
        if self.weights not in decoding.WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(decoding.WEIGHTS)}, got {self.weights!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SamplingConfig:
        return from_dict(cls, d, "sampling")

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
        logits = logits.masked_fill(_outside_nucleus(logits, top_p), float("-inf"))
    return logits


NUCLEUS_CANDIDATES = (256, 2048)  # the most likely codes searched for the nucleus before a full sort


def _outside_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The codes (B, V) bool outside the nucleus: a code is dropped when the codes more likely than it
    already reach ``top_p`` (the most likely is always kept). A full sort of 16384 codes costs ~1 ms
    per row, so the nucleus is first looked for among the most likely codes (``torch.topk``); rows
    whose nucleus is larger go on to more candidates, then to the full sort."""
    B, V = logits.shape
    log_total = logits.logsumexp(dim=-1, keepdim=True)
    drop = torch.ones_like(logits, dtype=torch.bool)
    todo = torch.arange(B, device=logits.device)
    for k in [c for c in NUCLEUS_CANDIDATES if c < V] + [V]:
        rows = logits[todo]
        values, order = torch.sort(rows, dim=-1, descending=True) if k == V else torch.topk(rows, k, dim=-1)
        probs = (values - log_total[todo]).exp()
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        found = drop_sorted[:, -1] if k < V else torch.ones_like(drop_sorted[:, -1])  # nucleus ends inside
        rows_drop = torch.ones_like(rows, dtype=torch.bool).scatter(-1, order, drop_sorted)
        drop[todo[found]] = rows_drop[found]
        todo = todo[~found]
        if not todo.numel():
            break
    return drop


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: move from the unconditional logits towards (and past) the conditional."""
    return uncond + scale * (cond - uncond)


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One code per row of probs (n, V) → (n, 1): the first code whose cumulative mass exceeds a
    uniform draw. One random number per row; ``torch.multinomial`` draws V exponentials per row
    (its cost at 16384 codes: bench/README.md)."""
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=probs.dtype)
    return _inverse_cdf_at(probs, u)


def _inverse_cdf_at(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The code of each row of probs (n, V) (unnormalised) at the uniform u (n, 1) in [0, 1) → (n, 1)."""
    cdf = probs.cumsum(dim=-1)  # (n, V)
    total = cdf[:, -1:]
    u = u.to(cdf.dtype) * total
    # u < total, so a code with zero mass (cdf equal to its predecessor's) is never the first above u
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)


def _probs(logits: torch.Tensor, cfg: SamplingConfig, n: int) -> torch.Tensor:
    """The distribution codes are drawn from: logits (2n or n, ..., V) of the GPT's rows (the
    unconditional ones second when guided) → float probabilities (n, ..., V), guided, then
    tempered and filtered."""
    logits = logits.float()
    if cfg.guidance_scale != 1.0:
        logits = guide(logits[:n], logits[n:], cfg.guidance_scale)
    shape = logits.shape
    logits = filter_logits(logits.reshape(-1, shape[-1]) / cfg.temperature, cfg.top_k, cfg.top_p)
    return logits.softmax(dim=-1).reshape(shape)


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
    stats: JacobiStats | None = None,
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
    ``callback_on_step_end``). With ``method="jacobi"`` rows advance at their own pace and
    ``step_index`` follows the slowest row; ``stats`` (a :class:`JacobiStats`) then records the
    forward passes and the codes each one accepted.

    With guidance, the unconditional rows take ``negative_text_ids`` (B, text_len) and
    ``negative_knowledge`` (a negative prompt, as in diffusers) instead of the empty caption.
    """
    cfg = sampling or SamplingConfig()
    jacobi = cfg.method == "jacobi"
    if jacobi and not use_cache:
        raise ValueError("method='jacobi' verifies guesses against a key/value cache: it needs use_cache=True")
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

    rows_per_step = text.shape[0] * (cfg.jacobi_window + 1 if jacobi else 1)
    cache = (decoding.new_cache(gpt, text.shape[0], rows_per_step=rows_per_step, weights=cfg.weights)
             if use_cache else None)
    logits = gpt.prefill(text, know, cache, prefix)
    if jacobi:
        _sample_jacobi(gpt, cache, _probs(logits, cfg, n), out, k, cfg,
                       _row_generators(generator, n, num_images_per_prompt), callback, stats)
        return out
    for i in range(k, img_len):
        nxt = _draw(_probs(logits, cfg, n), generator, num_images_per_prompt).to(out.device)  # (n, 1)
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


# ---- speculative Jacobi decoding -------------------------------------------------------------------


@dataclass
class JacobiStats:
    """What a Jacobi sampling call did: ``passes`` forward passes after the prefill, and per row and
    pass that row took part in, ``(row, first position, codes accepted)`` in ``commits``."""

    passes: int = 0
    commits: list[tuple[int, int, int]] = field(default_factory=list)

    def accepted_per_pass(self, start: int = 0, stop: int | None = None) -> float:
        """Mean codes accepted per row-pass whose first position lies in ``start .. stop - 1``."""
        counts = [m for _, c, m in self.commits if c >= start and (stop is None or c < stop)]
        return sum(counts) / len(counts) if counts else float("nan")


def _row_generators(
    generator: torch.Generator | list[torch.Generator] | None, n: int, per_prompt: int
) -> list[torch.Generator]:
    """One generator per image row, seeded from the caller's: from a list, each prompt's generator
    seeds its own rows only, so a row's codes never depend on the other prompts of the batch (nor,
    in Jacobi decoding, on how fast the other rows advance)."""
    top = 2**62
    if isinstance(generator, (list, tuple)):
        seeds = [torch.randint(top, (per_prompt,), generator=g, device=g.device) for g in generator]
        devices = [g.device for g in generator for _ in range(per_prompt)]
    else:
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = [torch.randint(top, (n,), generator=generator, device=device)]
        devices = [device] * n
    return [torch.Generator(d).manual_seed(int(s)) for d, s in zip(devices, torch.cat([s.cpu() for s in seeds]))]


def _sample_jacobi(
    gpt: ArtistGPT,
    cache: decoding.KVCache,
    first: torch.Tensor,
    out: torch.Tensor,
    k: int,
    cfg: SamplingConfig,
    gens: list[torch.Generator],
    callback: Callable[[int, torch.Tensor], None] | None,
    stats: JacobiStats | None,
) -> None:
    """Speculative Jacobi decoding (Teng et al. 2024): fill ``out`` (n, img_len) after the k known
    codes, given the prefill's next-code distribution ``first`` (n, V) and its ``cache``.

    Each row keeps up to L = ``cfg.jacobi_window`` guessed codes after its accepted ones, each drawn
    from a known distribution q (uniform for a fresh guess, else the model's distribution at that
    position from the previous pass). One forward pass feeds a row's last accepted code and its
    guesses and so yields the model's distribution p (guided, tempered, filtered: exactly what the
    sequential sampler draws from) at each guessed position given the guesses before it. Guesses
    are checked in order: guess x is accepted with probability min(1, p(x) / q(x)); at the first
    rejection a code is drawn from norm(max(p - q, 0)) instead and the later guesses are dropped; if
    all are accepted, one more code is drawn from p after them. Each accepted or redrawn code is thus
    an exact draw from p given the codes before it (the speculative-sampling argument: a guess is
    independent of the tests before it, which only see earlier positions), so the codes have the
    sequential sampler's distribution. The dropped guesses are redrawn from this pass's p (refined
    by the guesses before them: the Jacobi iteration) and new ones from the uniform distribution
    fill the window.

    Rows advance at their own pace; the cache is shared, so a pass starts at the slowest row
    (``cache.length`` is rolled back to the last position whose code every row has accepted) and a
    row more than L codes ahead of it waits. Every row draws its random numbers from its own
    generator, a fixed count per pass it takes part in, so its codes do not depend on the others.
    """
    n, img_len = out.shape
    L, V = cfg.jacobi_window, first.shape[-1]
    T0 = gpt.config.text_len
    dev = out.device
    work = torch.zeros(n, img_len + L, dtype=torch.long, device=dev)  # accepted codes, then guesses
    work[:, :k] = out[:, :k]
    done = torch.full((n,), k, dtype=torch.long, device=dev)  # accepted codes per row
    guesses = torch.zeros(n, L, dtype=torch.long, device=dev)
    q = torch.full((n, L, V), 1.0 / V, device=dev)  # the distribution each guess was drawn from
    n_guess = torch.zeros(n, dtype=torch.long, device=dev)  # valid guesses per row (0 before the first pass)
    steps = torch.arange(L, device=dev)
    uniform = torch.full((1, 1, V), 1.0 / V, device=dev)

    def verify(rows: torch.Tensor, p: torch.Tensor, record: bool = True) -> None:
        """The acceptance test for ``rows`` given p (R, M, V) at positions done .. done + M - 1."""
        R, M = p.shape[0], p.shape[1]
        u = torch.stack([torch.rand(2 * L + 1, generator=gens[r], device=gens[r].device) for r in rows.tolist()])
        u = u.to(dev)
        g, qr, ng, c = guesses[rows], q[rows], n_guess[rows], done[rows]
        pg = p[:, : min(M, L)].gather(-1, g[:, : min(M, L), None]).squeeze(-1)  # (R, <=L) p(guess)
        qg = qr[:, : pg.shape[1]].gather(-1, g[:, : pg.shape[1], None]).squeeze(-1)
        ok = (u[:, : pg.shape[1]] * qg < pg) & (steps[: pg.shape[1]] < ng[:, None])
        a = ok.long().cumprod(dim=1).sum(dim=1)  # (R,) guesses accepted
        at = torch.arange(R, device=dev)
        p_at = p[at, a.clamp(max=M - 1)]  # (R, V) p at the first unaccepted position
        resid = (p_at - qr[at, a.clamp(max=L - 1)]).clamp_min(0)
        resid = torch.where((a < ng)[:, None] & (resid.sum(-1, keepdim=True) > 0), resid, p_at)
        new = _inverse_cdf_at(resid, u[:, L : L + 1])[:, 0]  # (R,)
        has_new = c + a < img_len
        work[rows, (c + a).clamp(max=img_len + L - 1)] = torch.where(has_new, new, work[rows, c + a])
        m = a + has_new.long()  # codes accepted this pass (the redrawn one included)
        if stats is not None and record:
            stats.commits.extend(zip(rows.tolist(), c.tolist(), m.tolist()))
        c2 = c + m
        # the next guesses: positions c2 .. c2 + L - 1, from this pass's p where it reaches, else uniform
        idx = (m[:, None] + steps).clamp(max=M)  # (R, L) index into p, M = uniform
        q_new = torch.cat([p, uniform.expand(R, 1, V)], dim=1).gather(1, idx[..., None].expand(R, L, V))
        g_new = _inverse_cdf_at(q_new.reshape(R * L, V), u[:, L + 1 :].reshape(R * L, 1)).view(R, L)
        done[rows] = c2
        guesses[rows], q[rows] = g_new, q_new
        n_guess[rows] = (img_len - c2).clamp(min=0, max=L)
        work[rows[:, None], c2[:, None] + steps] = g_new

    emitted = k

    def emit() -> int:
        upto = int(done.min())
        if callback is not None:
            for i in range(emitted, upto):
                callback(i, out)
        return upto

    verify(torch.arange(n, device=dev), first[:, None], record=False)  # the prefill's code: no guesses yet
    out[:, k:] = work[:, k:img_len]  # only accepted columns are final, as the callback contract says
    emitted = emit()
    guided = cfg.guidance_scale != 1.0
    while bool((done < img_len).any()):
        active = done < img_len
        low = int(done[active].min())  # the slowest row's accepted codes
        part = active & (done - low <= L)
        rows = part.nonzero()[:, 0]
        offset = done[rows] - low  # (R,) where each taking-part row's window starts in this pass
        width = min(int((offset + n_guess[rows]).max()) + 1, img_len - low)
        # inputs: codes low - 1 .. low + width - 2 (accepted, then guesses); the cache holds all before
        fed = work[:, low - 1 : low - 1 + width]
        logits = decoding.window_logits(gpt, torch.cat([fed, fed]) if guided else fed, cache)  # (G, W, V)
        at = (offset[:, None] + torch.arange(L + 1, device=dev)).clamp(max=width - 1)  # (R, L + 1)
        pick = torch.cat([rows, rows + n]) if guided else rows
        sel = logits[pick].gather(1, torch.cat([at, at] if guided else [at])[..., None].expand(-1, -1, V))
        verify(rows, _probs(sel, cfg, rows.shape[0]))
        if stats is not None:
            stats.passes += 1
        # roll the cache back to the codes every row has accepted (later ones held guesses)
        cache.length = T0 + min(int(done.min()), img_len) - 1
        out[:, low:] = work[:, low:img_len]
        emitted = emit()
