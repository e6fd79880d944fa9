"""The serving engine: one scheduler thread owns the model and runs every request in one batch.

Continuous batching, as a server needs it: requests wait in a bounded queue; at every step
boundary the waiting requests that fit are prefilled (their conditional and, with guidance, their
unconditional rows; one forward pass for all that join together with inputs of one shape) and join
the running batch; every running
row then advances one image token in one ``gpt.step``; a request whose last token is drawn leaves
at once, and a decoder thread decodes its codes with the VQGAN while the batch goes on, so the batch
never waits for its slowest member nor for the decoder (on CPU, with one torch thread, the two
threads use two cores). On CPU each decoder thread hands its requests to a child process of its
own (``decoders.py``), so the VQGAN's Python never takes turns for the interpreter lock with the
scheduler's. While no row is being sampled, the sampler's share of the cores decodes
too: an idle decoder (one where the CPU has room for it) takes finished requests only then, so a
batch that finishes together is decoded two images at a time, and sampling never shares its cores.

Rows keep their own positions in a :class:`RowCache` (the per-row cache the model's
``DecodingCache`` protocol allows: it supplies positions and an attention mask), and each request
keeps its own sampling settings and ``torch.Generator``. Sampling is ``sampling.py``'s, step for
step: logits as float, the guidance mix, ``filter_logits`` after the temperature, softmax, and one
uniform per row per step by the same inverse-CDF draw (a request's uniforms are drawn at its
prefill, all at once: the generator gives the numbers it gives one step at a time) — so a
request with a ``seed`` draws the same random numbers as
``pipe(prompt, generator=torch.Generator().manual_seed(seed), num_images_per_prompt=n)``. Whether
its codes are then bit-identical depends on the kernels giving the same logits at another batch
size (measured in tests/easynlp_artist/serve/test_engine.py and docs/SERVE.md).

The engine knows nothing of HTTP: :meth:`Engine.submit` returns a :class:`Job` whose ``listener``
hears ``("partial", index, images)`` from the scheduler thread, then ``("done", images)`` (from the
decoder thread) or ``("error", exception)``.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.models.stage2 import decoding
from easynlp_artist.models.stage2.gpt import ArtistGPT
from easynlp_artist.models.stage2.sampling import SamplingConfig, _inverse_cdf_at, filter_logits, guide
from easynlp_artist.runtime import available_cores
from easynlp_artist.serve.decoders import (
    DecoderStartError,
    ProcessDecoder,
    decode_pixels,
    decode_pngs,
    png_bytes,
    shared_memory_shortfall,
)

logger = logging.getLogger(__name__)

GREY = 128  # pixels of a partial image not generated yet


class QueueFull(RuntimeError):
    """The waiting queue holds ``max_queue`` requests."""


class EngineClosed(RuntimeError):
    """The engine is draining or stopped and takes no new requests."""


class RequestTimeout(TimeoutError):
    """A request did not finish within its timeout."""


class Cancelled(RuntimeError):
    """The request was cancelled (its client went away)."""


# ------------------------------------------------------------------------------------ the row cache


class _Layout(NamedTuple):
    length: int  # the window's smallest position (what the model adds T to)
    uniform: int | None  # the position of every row, where they are at one
    slots: torch.Tensor | None  # else: the window's slots,
    at: torch.Tensor | None  # each row's position,
    mask: torch.Tensor | None  # and (B, 1, 1, S) additive: 0 for a row's keys, -inf past its position


class RowCache:
    """Keys and values for up to ``capacity`` rows, each row at its own position.

    Rows occupy slots ``0 .. rows-1`` (kept compact: :meth:`remove` moves the last rows into the
    holes). A forward pass runs on the slots of :attr:`window`: a prefill on the slots of the rows
    that join (all at position 0), a step on every running row. Where the window's rows are all at
    one position the model takes its usual path (no mask); otherwise ``attention_mask`` hides each
    row's keys past its own position. Linears are multiplied as ``decoding.new_cache`` would for
    the same number of rows (oneDNN-packed weights where that pays off, Linear by Linear), or with ``weights="int8"``
    through ``decoding.INT8`` at every row count, as the sequential sampler does.
    """

    def __init__(self, gpt: ArtistGPT, capacity: int, weights: str = "model") -> None:
        cfg = gpt.config
        p = gpt.pos_emb
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, capacity, cfg.n_head, cfg.block_size, hd)
        # zeros, not empty: a row's masked keys past its own position still enter attention's product
        # with weight 0, and 0 * NaN from uninitialised memory would be NaN
        self.k = torch.zeros(shape, device=p.device, dtype=decoding.cache_dtype(p))
        self.v = torch.zeros_like(self.k)
        self.capacity = capacity
        self.block_size = cfg.block_size
        self.lengths = [0] * capacity  # positions cached, per slot
        self.window = (0, 0)  # (also clears the layout worked out for the last one)
        # caches used only for their ``linear``, sharing the weight copies the pipeline's sampler keeps
        self._gpt = gpt
        self._int8 = weights == "int8"
        if self._int8:  # decoding.INT8 for every row count, as new_cache(weights="int8") does
            self._plain = self._packed = decoding.new_cache(gpt, 0, weights="int8")
        else:  # plain, and oneDNN-packed for every Linear packing pays for at some row count up to capacity
            self._plain = decoding.new_cache(gpt, 0, pack_weights=False, weights=weights)
            self._packed = decoding.new_cache(gpt, 0, rows_per_step=capacity)
        self._packed.k = self._packed.v = None  # their own keys and values are never used
        self._forms: dict[tuple[nn.Linear, int], decoding.KVCache] = {}  # (Linear, rows) -> the cache that multiplies

    # -- the DecodingCache protocol --

    @property
    def window(self) -> tuple[int, int]:
        """The slots ``lo .. hi-1`` the next forward pass runs on (set before each one)."""
        return self._window

    @window.setter
    def window(self, value: tuple[int, int]) -> None:
        self._window = value
        self._plan = None

    def _layout(self) -> _Layout:
        """Where the window's rows are, worked out once per forward pass (every layer asks)."""
        if self._plan is None:
            lo, hi = self.window
            pos = self.lengths[lo:hi]
            if all(n == pos[0] for n in pos):
                self._plan = _Layout(pos[0], pos[0], None, None, None)
            else:
                dev = self.k.device
                at = torch.tensor(pos, device=dev)  # each row's new token's position
                keys = torch.arange(max(pos) + 1, device=dev)
                hidden = (keys[None, :] > at[:, None])[:, None, None, :]  # (B, 1, 1, S)
                # additive: SDPA adds it as it is (a bool mask it converts to this in every layer)
                mask = torch.zeros(hidden.shape, device=dev, dtype=self.k.dtype).masked_fill_(hidden, float("-inf"))
                self._plan = _Layout(min(pos), None, torch.arange(lo, hi, device=dev), at, mask)
        return self._plan

    @property
    def length(self) -> int:
        return self._layout().length if self.window[1] > self.window[0] else 0

    @length.setter
    def length(self, value: int) -> None:
        delta = value - self.length  # the model adds the T positions it ran to every row
        lo, hi = self.window
        for s in range(lo, hi):
            self.lengths[s] += delta
        self._plan = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.window
        T = k.shape[2]
        plan = self._layout()
        if plan.uniform is not None:
            at = plan.uniform
            if at + T > self.block_size:
                raise ValueError(f"rows reach position {at + T} > block_size={self.block_size}")
            self.k[layer, lo:hi, :, at : at + T] = k
            self.v[layer, lo:hi, :, at : at + T] = v
            return self.k[layer, lo:hi, :, : at + T], self.v[layer, lo:hi, :, : at + T]
        if T != 1:
            raise ValueError("rows at different positions advance one token at a time")
        end = plan.mask.shape[-1]
        if end > self.block_size:
            raise ValueError(f"a row reaches position {end} > block_size={self.block_size}")
        self.k[layer, plan.slots, :, plan.at] = k[:, :, 0].to(self.k.dtype)
        self.v[layer, plan.slots, :, plan.at] = v[:, :, 0].to(self.v.dtype)
        return self.k[layer, lo:hi, :, :end], self.v[layer, lo:hi, :, :end]

    def linear(self, module: nn.Linear, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
        key = (module, x.shape[0])
        form = self._forms.get(key)
        if form is None:  # as new_cache would choose for this many rows
            packs = self._int8 or decoding.pays_off(self._gpt, module, x.shape[0])
            form = self._forms[key] = self._packed if packs else self._plain
        return form.linear(module, x, act)

    def positions(self, T: int) -> torch.Tensor | None:
        plan = self._layout()
        if plan.uniform is not None:
            return None  # every row at ``length``: the model's own path
        return plan.at[:, None] + torch.arange(T, device=self.k.device)

    def attention_mask(self, T: int) -> torch.Tensor | None:
        return self._layout().mask  # None where the rows are at one position: the model's own path

    # -- slots --

    def remove(self, slots: list[int], rows: int) -> dict[int, int]:
        """Free ``slots`` among the first ``rows``; move the last rows into the holes. Returns the moves
        (old slot → new slot)."""
        gone = set(slots)
        keep = rows - len(gone)
        holes = sorted(s for s in gone if s < keep)
        movers = [s for s in range(keep, rows) if s not in gone]
        moves = dict(zip(movers, holes, strict=True))
        if moves:
            src = torch.tensor(list(moves), device=self.k.device)
            dst = torch.tensor(list(moves.values()), device=self.k.device)
            self.k[:, dst] = self.k[:, src]
            self.v[:, dst] = self.v[:, src]
            for a, b in moves.items():
                self.lengths[b] = self.lengths[a]
        for s in range(keep, rows):
            self.lengths[s] = 0
        self._plan = None
        return moves


# ------------------------------------------------------------------------------------------ requests


@dataclass
class ImageRequest:
    """One generation request, its settings already validated and put over the model's defaults."""

    prompt: str
    n: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    negative_prompt: str | None = None
    partial_images: int = 0
    timeout: float | None = None  # seconds from submission


Listener = Callable[..., None]


class Job:
    """A request inside the engine. ``listener(kind, ...)`` is called from the scheduler thread."""

    def __init__(self, request: ImageRequest, listener: Listener | None, rows: int) -> None:
        self.request = request
        self.id = secrets.token_hex(6)
        self.listener = listener or (lambda *event: None)
        self.rows = rows  # slots it needs: n, or 2n with guidance
        self.submitted = time.monotonic()
        self.deadline = None if request.timeout is None else self.submitted + request.timeout
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.slots: list[int] = []  # its rows in the RowCache: conditional first, then unconditional
        self.codes: torch.Tensor | None = None  # (n, img_len)
        self.uniforms: torch.Tensor | None = None  # (img_len, n, 1): one per code, drawn at the prefill
        self.drawn = 0  # image tokens drawn per row
        self.partial_at: list[int] = []  # token counts after which a partial image is sent
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.result: list[bytes] | None = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        """Leave at the next step boundary (the listener hears a Cancelled error)."""
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> list[bytes]:
        """The PNGs (blocking; for callers without a listener)."""
        if not self.finished.wait(timeout):
            raise RequestTimeout(f"request {self.id} not finished after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class EngineConfig:
    max_batch_rows: int = 32  # rows decoded together (a guided image takes two)
    max_queue: int = 64  # requests waiting; one more is refused (QueueFull)
    # decoders that take finished requests only while no row is sampled; None: one on a CPU with a
    # core for it besides the sampler's and the decoder's threads, else none
    idle_decoders: int | None = None
    # each decoder thread hands its requests to a child process of its own holding the VQGAN
    # (serve/decoders.py: the decode's Python then does not take turns for the interpreter lock with
    # the scheduler's), or decodes them itself; None: child processes for a model on CPU
    decode_processes: bool | None = None


def check_decoding(sampling: SamplingConfig) -> str:
    """The weight form a server with these sampling settings decodes with (``sampling.weights``).
    ``method="jacobi"`` is refused: rows of a continuous batch advance one code per step, and a
    speculative window per row is not built here."""
    if sampling.method != "sequential":
        raise ValueError(f"method={sampling.method!r} is not served: the continuous batch decodes one code "
                         f"per row and step; serve with method=sequential (the default)")
    return sampling.weights


def _rows(x: torch.Tensor, slots: list[int], first: int) -> torch.Tensor:
    """The rows of ``x`` (row ``i`` is slot ``first + i``) of ``slots``; a view where they are consecutive."""
    lo = slots[0] - first
    if slots == list(range(slots[0], slots[0] + len(slots))):
        return x[lo : lo + len(slots)]
    return x[torch.tensor(slots, device=x.device) - first]


def _put(buf: torch.Tensor, slots: list[int], values: torch.Tensor) -> None:
    """``buf[slots] = values``, through a slice where the slots are consecutive."""
    if slots == list(range(slots[0], slots[0] + len(slots))):
        buf[slots[0] : slots[0] + len(slots)] = values
    else:
        buf[torch.tensor(slots, device=buf.device)] = values


class Engine:
    """Owns ``pipe``'s model in one scheduler thread; :meth:`submit` from any thread."""

    def __init__(self, pipe, config: EngineConfig | None = None) -> None:
        self.pipe = pipe
        self.config = config or EngineConfig()
        if self.config.max_batch_rows < 1 or self.config.max_queue < 0:
            raise ValueError("max_batch_rows must be >= 1 and max_queue >= 0")
        if self.config.idle_decoders is not None and self.config.idle_decoders < 0:
            raise ValueError("idle_decoders must be >= 0")
        self.gpt: ArtistGPT = pipe.model.gpt
        self.vqgan = pipe.model.vqgan
        self.img_len = self.gpt.config.img_len
        self.weights = check_decoding(pipe.sampling)
        self.cache = RowCache(self.gpt, self.config.max_batch_rows, self.weights)
        self._next = torch.zeros(self.config.max_batch_rows, dtype=torch.long, device=pipe.device)  # each slot's next input
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._joining: list[Job] = []  # out of the queue, not yet prefilled
        self._rows = 0
        lock = threading.RLock()
        self._cv = threading.Condition(lock)  # the scheduler waits on it for requests
        self._decode_cv = threading.Condition(lock)  # the decoders wait on it for finished requests
        self._accepting = True
        self._stop = False
        self._decoders_stop = False
        # statistics (read by /metrics)
        self.peak_rows = 0
        self.peak_requests = 0
        self.steps = 0
        self.step_rows = 0
        self.prefills = 0  # forward passes over joining requests' text
        self.images_done = 0
        self._done_times: deque[float] = deque(maxlen=1024)
        self._decodes: deque[Job] = deque()  # drawn, waiting for the VQGAN (guarded by the lock)
        self._decoding: set[Job] = set()  # jobs handed to the decoders and not finished (set.add/discard are atomic)
        self._thread = threading.Thread(target=self._loop, name="artist-engine", daemon=True)
        helpers = self.config.idle_decoders
        if helpers is None:
            helpers = int(self.pipe.device.type == "cpu" and available_cores() >= 2 * torch.get_num_threads())
        processes = self.config.decode_processes
        if processes is None:
            processes = all(p.device.type == "cpu" for p in self.vqgan.parameters())
        short = shared_memory_shortfall(self.vqgan) if processes else None
        if short and self.config.decode_processes:
            raise ValueError(f"decode_processes=true: {short} (give the container more, e.g. docker --shm-size=1g)")
        if short:
            logger.warning("decoding in the server's process: %s (decode_processes=true needs more)", short)
            processes = False
        names = [f"artist-decoder-{i}" for i in range(1 + helpers)]
        # one child process per decoder thread, where decodes leave the server's process
        self.decode_processes = [ProcessDecoder(self.vqgan, torch.get_num_threads(), name) if processes else None
                                 for name in names]
        self._decoders = [threading.Thread(target=self._decode_loop, args=(i > 0, process), name=name, daemon=True)
                          for i, (name, process) in enumerate(zip(names, self.decode_processes, strict=True))]
        self._thread.start()
        for t in self._decoders:
            t.start()

    # -- the outside --

    def rows_for(self, request: ImageRequest) -> int:
        return request.n * (2 if request.sampling.guidance_scale != 1.0 else 1)

    def submit(self, request: ImageRequest, listener: Listener | None = None) -> Job:
        if check_decoding(request.sampling) != self.weights:
            raise ValueError(f"weights={request.sampling.weights!r}: this server decodes its whole batch with "
                             f"weights={self.weights!r}")
        rows = self.rows_for(request)
        if rows > self.config.max_batch_rows:
            raise ValueError(
                f"n={request.n}{' with guidance' if rows > request.n else ''} needs {rows} rows; "
                f"this server runs at most max_batch_rows={self.config.max_batch_rows}"
            )
        job = Job(request, listener, rows)
        with self._cv:
            if not self._accepting:
                raise EngineClosed("the server is shutting down")
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue={self.config.max_queue})")
            self._waiting.append(job)
            self._cv.notify()
        return job

    def stats(self) -> dict:
        now = time.monotonic()
        recent = [t for t in self._done_times if now - t <= 60.0]
        return {
            "queued": len(self._waiting), "running_requests": len(self._running), "running_rows": self._rows,
            "peak_rows": self.peak_rows, "peak_requests": self.peak_requests, "steps": self.steps,
            "step_rows": self.step_rows, "prefills": self.prefills,
            "decoding": len(self._decoding),
            "images_done": self.images_done, "images_per_second": len(recent) / 60.0,
        }

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running and not self._decoding

    def close(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop taking requests; with ``drain`` finish the queued and running ones, else fail them.
        Returns whether the scheduler thread ended within ``timeout``."""
        with self._cv:
            self._accepting = False
            if not drain:
                for job in list(self._waiting):
                    self._fail(job, EngineClosed("the server stopped"))
                self._waiting.clear()
            self._stop = True
            self._cv.notify()
        end = None if timeout is None else time.monotonic() + timeout
        self._thread.join(timeout)
        with self._decode_cv:  # after the last job the scheduler hands over
            self._decoders_stop = True
            self._decode_cv.notify_all()
        for t in self._decoders:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self._thread.is_alive() and not any(t.is_alive() for t in self._decoders)

    # -- the scheduler thread --

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._waiting and not self._running and not self._stop:
                    self._cv.wait()
                if self._stop and not self._waiting and not self._running:
                    return
                self._drop_expired_waiting()
                joining = self._joining  # taken from the queue under the lock: the sampler is not idle
                while self._waiting and self._rows + sum(j.rows for j in joining) + self._waiting[0].rows \
                        <= self.config.max_batch_rows:
                    joining.append(self._waiting.popleft())
            if joining:
                self._prefill(joining)
            joining.clear()  # each one is running now, or failed
            self._leave_finished()
            if self._running:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - a failed batch step fails its requests, not the engine
                    self._fail_batch(list(self._running), exc, "decoding step")
                self._leave_finished()

    def _guarded(self, job: Job, fn: Callable[[Job], None]) -> None:
        try:
            fn(job)
        except Exception as exc:  # noqa: BLE001 - one request's failure is its own
            logger.exception("request %s failed", job.id)
            if job in self._running:
                self._remove(job)
            self._fail(job, exc)

    def _fail_batch(self, jobs: list[Job], exc: BaseException, what: str) -> None:
        """``what`` failed for all of ``jobs`` together: they leave the batch with the error."""
        logger.error("%s failed; failing %d requests", what, len(jobs), exc_info=exc)
        for job in jobs:
            self._remove(job)
            self._fail(job, exc)

    def _drop_expired_waiting(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._waiting if j.cancelled.is_set() or (j.deadline and now > j.deadline)]:
            self._waiting.remove(job)
            self._fail(job, Cancelled("cancelled") if job.cancelled.is_set() else self._timeout(job))

    def _timeout(self, job: Job) -> RequestTimeout:
        where = f"{job.drawn} of {self.img_len} codes drawn" if job.codes is not None else "still waiting"
        return RequestTimeout(f"request {job.id} exceeded request_timeout={job.request.timeout:g} s ({where})")

    def _inputs(self, job: Job) -> tuple[torch.Tensor, KnowledgeInputs | None]:
        """The request's rows as ``sampling.sample_image_tokens`` builds them (cond, then uncond)."""
        req = job.request
        device = self.pipe.device
        guided = job.rows > req.n
        negative = guided and bool(req.negative_prompt)
        # with a negative prompt both are encoded in one batch, so their entity slots line up
        text_ids, know = self.pipe.encode_prompts([req.prompt, req.negative_prompt] if negative else [req.prompt])
        text_ids = text_ids.to(device)
        if know is not None:
            know = know.to(device, self.gpt.pos_emb.dtype)
        rows = torch.zeros(req.n, dtype=torch.long, device=device)
        text = text_ids[rows]
        cond_know = know.index_select(rows) if know is not None else None
        if not guided:
            return text, cond_know
        if negative:  # the unconditional rows read the negative prompt (and its entities)
            uncond = text_ids[rows + 1]
            uncond_know = know.index_select(rows + 1) if know is not None else None
        else:  # the empty caption, no entities (sampling.py's unconditional rows)
            uncond = torch.full_like(text, self.gpt.pad_text_id)
            uncond_know = cond_know.with_mask(torch.zeros_like(cond_know.mask)) if know is not None else None
        text = torch.cat([text, uncond])
        know = cond_know.cat(uncond_know) if know is not None else None
        return text, know

    def _prefill(self, jobs: list[Job]) -> None:
        """The joining jobs' rows join the batch: one forward pass over the text of all of them whose
        inputs have the same shape (with knowledge: the same number of entity slots, so each row sees
        what it would see alone), each group at the next free slots, then their first codes drawn."""
        ready: list[tuple[Job, torch.Tensor, KnowledgeInputs | None]] = []
        for job in jobs:  # a request whose prompt cannot be encoded fails alone
            self._guarded(job, lambda j: ready.append((j, *self._inputs(j))))
        groups: dict[tuple | None, list[tuple[Job, torch.Tensor, KnowledgeInputs | None]]] = {}
        for job, text, know in ready:
            key = None if know is None else (know.mask.shape[1], know.nothing is None)
            groups.setdefault(key, []).append((job, text, know))
        for group in groups.values():
            members = [job for job, _, _ in group]
            try:
                self._prefill_group(group)
            except Exception as exc:  # noqa: BLE001 - the group's requests fail, not the engine
                self._fail_batch(members, exc, "prefill")

    def _prefill_group(self, group: list[tuple[Job, torch.Tensor, KnowledgeInputs | None]]) -> None:
        text = torch.cat([t for _, t, _ in group])  # (R, text_len)
        know = None
        for _, _, k in group:
            know = k if know is None else know.cat(k)
        lo = self._rows
        hi = lo + text.shape[0]
        for s in range(lo, hi):
            self.cache.lengths[s] = 0
        self.cache.window = (lo, hi)
        logits = self.gpt.prefill(text, know, self.cache)  # (R, V)
        self.prefills += 1
        start = lo
        for job, _, _ in group:
            job.slots = list(range(start, start + job.rows))
            start += job.rows
            job.codes = torch.empty(job.request.n, self.img_len, dtype=torch.long, device=self.pipe.device)
            # every uniform its rows will draw, up front: the CPU generator gives the numbers it would give
            # one step at a time, in the same order (sampling.py's draws)
            job.uniforms = torch.rand((self.img_len, job.request.n, 1), generator=job.generator,
                                      device=job.generator.device)
            p = job.request.partial_images
            job.partial_at = sorted({max(1, round(self.img_len * i / (p + 1))) for i in range(1, p + 1)})
            self._running.append(job)
        self._rows = hi
        self.peak_rows = max(self.peak_rows, self._rows)
        self.peak_requests = max(self.peak_requests, len(self._running))
        self._draw_groups([job for job, _, _ in group], logits, first_slot=lo)

    def _draw(self, jobs: list[Job], logits: torch.Tensor, first_slot: int = 0) -> None:
        """One token for each row of ``jobs`` (sharing one sampling setting) from the logits of the
        slots they hold (row ``i`` of ``logits`` is slot ``first_slot + i``): sampling.py's steps on all
        their rows at once (each step works row by row), one uniform per row from each job's own
        generator (drawn at its prefill), in job order. The codes go to each job and to the slots'
        next input (both rows of a guided image read it)."""
        cfg = jobs[0].request.sampling
        cond = [s for j in jobs for s in j.slots[: j.request.n]]
        x = logits.float()
        if jobs[0].rows > jobs[0].request.n:
            uncond = [s for j in jobs for s in j.slots[j.request.n :]]
            x = guide(_rows(x, cond, first_slot), _rows(x, uncond, first_slot), cfg.guidance_scale)
        else:
            uncond = []
            x = _rows(x, cond, first_slot)
        probs = filter_logits(x / cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)
        u = jobs[0].uniforms[jobs[0].drawn] if len(jobs) == 1 else torch.cat([j.uniforms[j.drawn] for j in jobs])
        nxt = _inverse_cdf_at(probs, u.to(probs.device))[:, 0]  # (rows,)
        _put(self._next, cond, nxt)
        if uncond:
            _put(self._next, uncond, nxt)
        start = 0
        for job in jobs:
            n = job.request.n
            job.codes[:, job.drawn] = nxt[start : start + n]
            start += n
            job.drawn += 1
        for job in jobs:
            if job.drawn in job.partial_at and job.drawn < self.img_len:
                self._guarded(job, lambda j: j.listener("partial", j.partial_at.index(j.drawn), self._partial_pngs(j)))

    def _step(self) -> None:
        R = self._rows
        self.cache.window = (0, R)
        logits = self.gpt.step(self._next[:R, None], self.cache)  # (R, V)
        self.steps += 1
        self.step_rows += R
        self._draw_groups(self._running, logits)

    def _draw_groups(self, jobs: list[Job], logits: torch.Tensor, first_slot: int = 0) -> None:
        """:meth:`_draw` for ``jobs``, the rows with the same settings together."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            c = job.request.sampling
            groups.setdefault((c.guidance_scale, c.temperature, c.top_k, c.top_p), []).append(job)
        failed = []
        for same in groups.values():
            try:
                self._draw(same, logits, first_slot)
            except Exception as exc:  # noqa: BLE001 - the group's requests fail, not the engine
                failed.append((same, exc))
        for same, exc in failed:  # after every group has drawn: removing moves the others' slots
            self._fail_batch(same, exc, "sampling")

    def _leave_finished(self) -> None:
        now = time.monotonic()
        drawn = []
        for job in list(self._running):
            if job.cancelled.is_set():
                self._remove(job)
                self._fail(job, Cancelled("cancelled"))
            elif job.drawn == self.img_len:  # done in time (only the VQGAN decode is left)
                self._remove(job)
                self._decoding.add(job)
                drawn.append(job)
            elif job.deadline and now > job.deadline:
                self._remove(job)
                self._fail(job, self._timeout(job))
        with self._decode_cv:
            self._decodes.extend(drawn)
            if drawn or self._sampler_idle():  # work for the decoder, or the idle decoders' turn
                self._decode_cv.notify_all()

    def _sampler_idle(self) -> bool:
        return not self._waiting and not self._joining and not self._running

    def _remove(self, job: Job) -> None:
        if job not in self._running:
            return
        moves = self.cache.remove(job.slots, self._rows)
        if moves:
            self._next[list(moves.values())] = self._next[list(moves)]
        self._running.remove(job)
        self._rows -= job.rows
        for other in self._running:
            other.slots = [moves.get(s, s) for s in other.slots]
        job.slots = []

    def _decode_loop(self, only_when_idle: bool, process: ProcessDecoder | None) -> None:
        """Decode finished requests in the order they finished, through ``process`` (else in this
        thread); ``only_when_idle``: only while no row is sampled (a decode already begun goes on
        when rows join)."""
        torch.set_grad_enabled(False)

        def decode(codes: torch.Tensor) -> list[bytes]:
            nonlocal process
            if process is not None:
                try:
                    return process(codes)
                except DecoderStartError as exc:  # this thread decodes from now on; the request is not lost
                    logger.error("%s; %s decodes in the server's process from now on (a script that starts "
                                 "the engine must guard its entry point with `if __name__ == \"__main__\":`)",
                                 exc, threading.current_thread().name)
                    process.close()
                    process = None
            return decode_pngs(self.vqgan, codes)

        try:
            while True:
                with self._decode_cv:
                    while not (self._decodes and (not only_when_idle or self._sampler_idle())):
                        if self._decoders_stop and (only_when_idle or not self._decodes):
                            return  # the first decoder drains the rest
                        self._decode_cv.wait()
                    job = self._decodes.popleft()
                try:
                    if job.cancelled.is_set():
                        self._fail(job, Cancelled("cancelled"))
                    else:
                        self._guarded(job, lambda j: self._finish(j, decode))
                finally:
                    self._decoding.discard(job)
        finally:
            if process is not None:
                process.close()

    def _finish(self, job: Job, decode: Callable[[torch.Tensor], list[bytes]]) -> None:
        job.result = decode(job.codes)
        self.images_done += len(job.result)
        t = time.monotonic()
        self._done_times.extend([t] * len(job.result))
        job.finished.set()
        job.listener("done", job.result)

    def _fail(self, job: Job, exc: BaseException) -> None:
        job.error = exc
        job.finished.set()
        job.listener("error", exc)

    def _partial_pngs(self, job: Job) -> list[bytes]:
        """The images so far: whole rows of tokens already drawn are final, the rest grey."""
        codes = job.codes.clone()
        codes[:, job.drawn :] = 0
        pixels = decode_pixels(self.vqgan, codes)
        grid = math.isqrt(self.img_len)
        done_rows = job.drawn // grid
        pixels[:, done_rows * pixels.shape[1] // grid :] = GREY
        return [png_bytes(p) for p in pixels]


__all__ = ["Cancelled", "Engine", "EngineClosed", "EngineConfig", "ImageRequest", "Job", "QueueFull",
           "RequestTimeout", "RowCache", "check_decoding", "png_bytes"]
