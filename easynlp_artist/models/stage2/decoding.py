"""Fast incremental decoding of the stage-2 GPT: the key/value cache and how its Linears are multiplied.

The model (``gpt.py``) has one forward path; a cache passed to ``prefill`` / ``step`` holds the keys
and values of the positions already run, and every Linear of a block (with the activation after
it) goes through ``cache.linear``. This module decides what that does:

* plain ``F.linear`` (then the activation), as without a cache;
* on CPU, oneDNN-packed weights: a decoding step multiplies a few rows by every weight of the
  model, which is bound by how fast the weights stream from memory, and oneDNN's blocked layout
  streams faster than PyTorch's ``(out, in)`` one; the exact GELU after the first MLP Linear is
  fused into the product. For fp32 packing pays off from two rows once a product is large
  enough to amortise oneDNN's call (:data:`PACK_MIN_PRODUCT`; a 4M-parameter model's Linears
  never are at a few rows); for one row it depends on the CPU, so it is measured once per model
  (:func:`one_row_packing_pays`); for bf16 it pays at any row count;
* on CPU with ``new_cache(weights="int8")``, int8 weight-only Linears (:data:`INT8`: a quarter of
  the fp32 bytes, bf16 products); PyTorch's kernel pays at one or two rows per step only.

Figures in bench/README.md. A bf16 model (``.to(torch.bfloat16)``) decodes in bf16 through the
packed form.

Packed copies are kept between sampling calls (packing the whole model is not free), in a
parameterless child module that ``new_cache`` adds to the GPT (:class:`PackedWeights`). Being part
of the module tree, it hears ``train()`` and every move or cast (``.to``, ``.half``, ...) and drops
the copies at once; a copy whose weight changed in place (optimizer step, ``load_state_dict``) is
remade by the next call (:class:`~easynlp_artist.models.derived.DerivedWeight`). Packed weights are
only read under ``torch.no_grad`` decoding, never for training.

Speculative Jacobi decoding (``sampling._sample_jacobi``) feeds several guessed tokens per row
through :func:`window_logits` and rolls ``cache.length`` back to the prefix every row accepted.
Where the next speed-ups go: another weight form is a third "does it pay off / prepare the weight
/ multiply" triple next to :data:`ONEDNN` and :data:`INT8`, chosen in :func:`new_cache`; a
continuous-batching engine needs a cache with a length per row (and positions from it in
``gpt._run``) behind the same ``update`` / ``linear`` interface (``gpt.DecodingCache``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from easynlp_artist.models.derived import DerivedWeight
from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig, linear

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class WeightForm:
    """A layout of Linear weights for decoding: when it pays off, how to make it, how to multiply."""

    name: str
    pays_off: Callable[[torch.Tensor, int], bool]  # (weight, rows per step) -> use it?
    prepare: Callable[[torch.Tensor, int], Any]  # (weight (out, in), rows) -> the copy kept
    # (x, prepared copy, bias, activation module or None) -> act(x @ W.T + b)
    multiply: Callable[[torch.Tensor, Any, torch.Tensor | None, nn.Module | None], torch.Tensor]


# rows x weight elements below which a packed fp32 product costs more than it saves: oneDNN's call
# costs ~10 us more than MKL's, which a small product (a 4M-parameter model's Linears at a few rows)
# never wins back (bench/README.md, "which Linears to pack")
PACK_MIN_PRODUCT = 2**20


def _onednn_pays_off(weight: torch.Tensor, rows: int) -> bool:
    """Whether packing pays for ``rows`` rows, as far as the weight alone tells: a single fp32 row is
    decided by measuring the whole model (:func:`one_row_packing_pays`)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.float32:
        return rows * weight.numel() >= PACK_MIN_PRODUCT
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _onednn_prepare(weight: torch.Tensor, rows: int) -> torch.Tensor:
    # the row count is only a layout hint: a copy made for 2 rows serves 256 as fast, so copies
    # are kept for any later row count
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def _onednn_multiply(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                     act: nn.Module | None) -> torch.Tensor:
    # oneDNN's fused "gelu" post-op is the exact (erf) GELU, as nn.GELU()
    fused = isinstance(act, nn.GELU) and act.approximate == "none"
    y = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if fused else "none", [], "none")
    return y if act is None or fused else act(y)


ONEDNN = WeightForm("onednn", _onednn_pays_off, _onednn_prepare, _onednn_multiply)


class Int8Weight(NamedTuple):
    """A weight (out, in) as int8 codes and one bf16 scale per output channel: W ≈ codes * scales[:, None]."""

    codes: torch.Tensor
    scales: torch.Tensor


def _int8_pays_off(weight: torch.Tensor, rows: int) -> bool:
    # PyTorch's CPU kernel (aten._weight_int8pack_mm) reads the input width in blocks of 16: other
    # widths give wrong results or crash, so such Linears stay as they are
    return weight.device.type == "cpu" and weight.shape[1] % 16 == 0


def _int8_prepare(weight: torch.Tensor, rows: int) -> Int8Weight:
    """Symmetric per-output-channel quantisation. The kernel takes bf16 scales, so the codes are
    rounded against the bf16-rounded scale (no second rounding error in the product)."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
    codes = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Weight(codes.contiguous(), scales)


def _int8_multiply(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None,
                   act: nn.Module | None) -> torch.Tensor:
    # the kernel's input and output are bf16 (an fp32 input takes a scalar path ~10x slower)
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), w.codes, w.scales)
    y = y.view(*x.shape[:-1], -1).to(x.dtype)
    if bias is not None:
        y = y + bias
    return y if act is None else act(y)


INT8 = WeightForm("int8", _int8_pays_off, _int8_prepare, _int8_multiply)
WEIGHTS = ("model", "int8")  # what new_cache(weights=...) accepts


class PackedWeights(nn.Module):
    """The GPT's Linear weights in a decoding layout, kept between sampling calls.

    A child module without parameters or buffers (nothing in the state dict): it is only there to
    drop the copies when the model is put into training mode, moved or cast."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: dict[tuple[nn.Linear, str], DerivedWeight] = {}
        self.one_row: bool | None = None  # one_row_packing_pays, measured once

    def get(self, module: nn.Linear, form: WeightForm, rows: int) -> torch.Tensor:
        derived = self.copies.setdefault((module, form.name), DerivedWeight())
        return derived.get(module.weight, lambda w: form.prepare(w, rows))

    def clear(self) -> None:
        self.copies.clear()
        self.one_row = None

    def train(self, mode: bool = True) -> PackedWeights:
        if mode:
            self.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001,ANN202 - nn.Module's hook for .to(), .half(), ...
        self.clear()  # the copies belong to the old weights
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self) -> dict:
        # a copied or pickled model starts without copies (oneDNN's opaque tensors cannot be copied)
        return {**self.__dict__, "copies": {}}

    def extra_repr(self) -> str:
        return f"{len(self.copies)} packed Linear weights"


_STORE = "decoding_weights"  # the child's name in the GPT
_attach = threading.Lock()


def _store(gpt: ArtistGPT) -> PackedWeights:
    with _attach:
        store = getattr(gpt, _STORE, None)
        if store is None:
            store = PackedWeights()
            gpt.add_module(_STORE, store)
        return store


def packed_weights(gpt: ArtistGPT) -> dict[nn.Linear, torch.Tensor]:
    """The packed copies ``gpt`` holds now (for inspection; empty until a sampling call made them)."""
    store = getattr(gpt, _STORE, None)
    return {} if store is None else {m: d.value for (m, _), d in store.copies.items() if d.value is not None}


def release_packed_weights(gpt: ArtistGPT) -> None:
    """Free the packed copies of ``gpt``'s weights (the next sampling call makes them again)."""
    store = getattr(gpt, _STORE, None)
    if store is not None:
        store.clear()


def _pass_seconds(linears: list[nn.Linear], inputs: list[torch.Tensor], multiply) -> float:  # noqa: ANN001
    """The fastest of three passes of ``multiply(module, x)`` over every Linear, in seconds."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for m, x in zip(linears, inputs, strict=True):
            multiply(m, x)
        best = min(best, time.perf_counter() - start)
    return best


def one_row_packing_pays(gpt: ArtistGPT) -> bool:
    """Whether a step of one fp32 row runs faster through oneDNN-packed weights than through the
    plain matrix-vector products, on this CPU: measured once per model (a pass over every Linear
    weight the step streams, each way, the fastest of three) and kept until the copies are dropped.
    Machines differ: packed was 1.7x faster at the ARTIST-base shape on one 2-core AMD EPYC and
    1.15x slower on an Intel Xeon (bench/README.md, "which Linears to pack"). A model whose
    one-row products are all too small to pack (:data:`PACK_MIN_PRODUCT`) is not measured."""
    store = _store(gpt)
    if store.one_row is None:
        linears = [m for m in decoding_linears(gpt) if _onednn_pays_off(m.weight, 1)]
        if not linears:
            store.one_row = False
        else:
            had = {m for m in linears if (m, ONEDNN.name) in store.copies}
            with torch.no_grad():
                inputs = [torch.randn(1, 1, m.in_features, dtype=m.weight.dtype, device=m.weight.device)
                          for m in linears]
                packed = {m: store.get(m, ONEDNN, 2) for m in linears}
                plain = _pass_seconds(linears, inputs, lambda m, x: linear(m, x))
                fast = _pass_seconds(linears, inputs, lambda m, x: ONEDNN.multiply(x, packed[m], m.bias, None))
            store.one_row = fast < 0.95 * plain  # a clear win only: the plain path needs no second copy
            if not store.one_row:  # the copies made only to be measured are not kept
                for m in set(linears) - had:
                    store.copies.pop((m, ONEDNN.name), None)
            logger.info("one-row decoding steps %s oneDNN-packed weights (measured: packed %.1f ms, plain %.1f ms "
                        "per pass over %d Linears)", "use" if store.one_row else "do not use", fast * 1e3,
                        plain * 1e3, len(linears))
    return store.one_row


def pays_off(gpt: ArtistGPT, module: nn.Linear, rows: int) -> bool:
    """Whether ``module`` of ``gpt`` is multiplied through its oneDNN-packed copy at ``rows`` rows."""
    if not _onednn_pays_off(module.weight, rows):
        return False
    return rows > 1 or module.weight.dtype != torch.float32 or one_row_packing_pays(gpt)


def decoding_linears(gpt: ArtistGPT) -> Iterator[nn.Linear]:
    """The Linears a decoding step multiplies by: every one of the blocks, then the head."""
    yield from (m for m in gpt.blocks.modules() if isinstance(m, nn.Linear))
    yield gpt.head


class KVCache:
    """Keys and values of every layer for a fixed batch, preallocated to ``block_size`` positions.

    ``length`` is the number of positions already written. Views of the first ``length`` entries are
    handed to attention, so each decoding step costs one token's worth of projections. ``packed``
    maps Linears to their copy in ``form``'s layout; a Linear without one runs as without a cache.
    """

    def __init__(self, config: GPTConfig, batch: int, device, dtype,
                 packed: dict[nn.Linear, torch.Tensor] | None = None, form: WeightForm = ONEDNN) -> None:
        hd = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, config.block_size, hd)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        self.packed = packed or {}
        self.form = form

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (B, H, T, hd) for the new positions; returns all positions so far
        t0, t1 = self.length, self.length + k.shape[2]
        self.k[layer, :, :, t0:t1] = k
        self.v[layer, :, :, t0:t1] = v
        return self.k[layer, :, :, :t1], self.v[layer, :, :, :t1]

    def linear(self, module: nn.Linear, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
        """``act(module(x))``, through the packed weight when there is one."""
        packed = self.packed.get(module)
        if packed is None:
            return linear(module, x, act)
        return self.form.multiply(x, packed, module.bias, act)


def cache_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of keys and values for a model whose weights are like ``param``: float32 on CPU for a
    bf16 / fp16 model, else the model's. Attention over the cache then runs on PyTorch's fp32 CPU
    kernel: its flash kernel over a bf16 cache is several times slower than over an fp32 one at a few
    rows per step without AMX, and grows with the rows (bench/README.md, "attention over the cache").
    The cache holds a few percent of a step's bytes, so doubling it costs little."""
    if param.device.type == "cpu" and param.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return param.dtype


def new_cache(gpt: ArtistGPT, batch: int, device=None, dtype=None, pack_weights: bool | None = None,
              rows_per_step: int | None = None, weights: str = "model") -> KVCache:
    """An empty cache for ``batch`` rows of ``gpt``. ``pack_weights`` (default: where it pays off for
    ``rows_per_step`` rows multiplied per decoding step, by default ``batch``; a speculative decoder
    feeds several positions per row) gives it oneDNN-packed copies of the Linear weights, kept on
    ``gpt`` between calls (see the module docstring) at the price of a second copy of those weights
    in memory.

    ``weights="int8"``: int8 weight-only Linears instead (:data:`INT8`, CPU; a quarter of the fp32
    bytes per step, products in bf16), for every Linear whose input width the kernel takes; it pays
    at one or two rows per step (figures in bench/README.md). ``pack_weights=False`` keeps the
    model's own weights in either case. Keys and values are kept in ``dtype``, by default
    :func:`cache_dtype`."""
    p = gpt.pos_emb
    linears = list(decoding_linears(gpt))
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "int8" and pack_weights is not False:
        if p.device.type != "cpu":
            raise ValueError(f"weights='int8' runs on CPU only (torch.ops.aten._weight_int8pack_mm), "
                             f"the model is on {p.device}")
        store = _store(gpt)
        packed = {m: store.get(m, INT8, batch) for m in linears if INT8.pays_off(m.weight, batch)}
        return KVCache(gpt.config, batch, device or p.device, dtype or cache_dtype(p), packed, INT8)
    packed = None
    if pack_weights is not False:
        rows = rows_per_step or batch
        chosen = linears if pack_weights else [m for m in linears if pays_off(gpt, m, rows)]
        store = _store(gpt)
        packed = {m: store.get(m, ONEDNN, max(batch, 2)) for m in chosen}  # (a layout hint; see _onednn_prepare)
    return KVCache(gpt.config, batch, device or p.device, dtype or cache_dtype(p), packed, ONEDNN)


def window_logits(gpt: ArtistGPT, image_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed image codes (B, T) after ``cache.length`` cached positions → the logits after each of them
    (B, T, V) (a speculative decoder verifies its guesses in one pass). ``cache.length`` then counts
    all T; set it back to keep only an accepted prefix (the later keys are overwritten next time)."""
    return cache.linear(gpt.head, gpt._run(gpt.tok_emb(image_ids), cache))
