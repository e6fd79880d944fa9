"""Stage 2 of ARTIST: a decoder-only transformer that writes image tokens after text tokens.

The layout is minGPT's, so the original EasyNLP weights load one to one (``stage2/convert.py``):
one embedding table holds image codes (ids ``0 .. img_vocab_size-1``) and text tokens (offset by
``img_vocab_size``), positions are learned, blocks are pre-LN with exact GELU, and the output head
covers the image codes only.

Knowledge (the paper's contribution) is an optional part of the same class: with ``entity_dim``
set, ``ent_emb`` projects entity vectors to the model width. Where its output is added is
``knowledge_fusion``:

* ``"input"`` (models made here): every text token embedding gets the softmax-weighted average of
  the entities whose span covers it, weighted by the inner product with the token embedding. This
  happens *before* the transformer, so every image position attends to the fused text — at
  training and at each cached decoding step.
* ``"output"`` (what the EasyNLP knowledge release computes, and what its ``ent_emb`` was trained
  for): after the last block, before ``ln_f``, the text positions' hidden states ``X`` (Tt, C) get
  ``sum_i w_i E_i`` over the slots, where ``E_i`` (Tt, C) is ``ent_emb`` of entity i where it
  covers a token and ``ent_emb`` of the "nothing" vector elsewhere, and ``w = softmax_i <X, E_i>``
  (inner product over all Tt × C numbers). Only the text positions change, so only the logits of
  the first image token differ from the plain model; keys and values are not affected, so with a
  cache it is applied once, at the prefill.

There is one forward path. Without a cache it scores whole sequences (training, teacher forcing,
the full-recompute sampler); with one (``decoding.new_cache``) it runs only the new positions and
reads the earlier ones' keys and values from the cache, and the cache also decides how each
Linear is multiplied (``decoding.py``: oneDNN-packed weights on CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.models.fields import from_dict

KNOWLEDGE_FUSIONS = ("input", "output")
BERT_CHINESE_VOCAB_SIZE = 21128


@dataclass
class GPTConfig:
    img_vocab_size: int = 16384  # image codes = VQGAN codebook size
    text_vocab_size: int = BERT_CHINESE_VOCAB_SIZE  # BERT Chinese WordPiece
    text_len: int = 32
    img_len: int = 256  # image tokens = (resolution / downsampling factor) ** 2
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    entity_dim: int | None = None  # width of entity vectors; None = no knowledge fusion
    knowledge_fusion: str = "input"  # "input" (per token, before the blocks) or "output" (the release's)
    caption_dropout: float = 0.0  # training only: drop text + entities so guidance has p(image)
    mention_dropout: float = 0.0  # training only: random tokens for mentions (the vector carries the look)

    def __post_init__(self) -> None:
        for name in ("img_vocab_size", "text_vocab_size", "text_len", "img_len", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.entity_dim is not None and self.entity_dim <= 0:
            raise ValueError(f"GPTConfig.entity_dim must be positive or None, got {self.entity_dim}")
        if self.knowledge_fusion not in KNOWLEDGE_FUSIONS:
            raise ValueError(f"GPTConfig.knowledge_fusion must be one of {KNOWLEDGE_FUSIONS}, got {self.knowledge_fusion!r}")
        for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop", "caption_dropout", "mention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def vocab_size(self) -> int:
        return self.img_vocab_size + self.text_vocab_size

    @property
    def block_size(self) -> int:
        return self.text_len + self.img_len

    @property
    def knowledge(self) -> bool:
        return self.entity_dim is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        return from_dict(cls, d, "GPTConfig")


class DecodingCache(Protocol):
    """What the forward pass needs from a decoding cache (``decoding.KVCache`` is the one we have)."""

    length: int  # positions already cached; the next input starts at this position

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' (B, H, T, hd) keys and values; return all cached ones so far (in
        the cache's dtype, which attention then runs in)."""

    def linear(self, module: nn.Linear, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
        """``act(module(x))`` (or ``module(x)``), computed as the cache sees fit."""

    # Optional, for a cache whose rows sit at different positions (continuous batching); a cache
    # without them (``decoding.KVCache``) has every row at ``length``:
    #   positions(T) -> (B, T) absolute positions of the T new inputs of each row, or None;
    #   attention_mask(T) -> bool (B, 1, T, S) over the S keys ``update`` returns, or None.


def _cache_hook(cache: DecodingCache | None, name: str, T: int) -> torch.Tensor | None:
    hook = getattr(cache, name, None)
    return None if hook is None else hook(T)


def linear(module: nn.Linear, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """``act(module(x))``: how a Linear (and the activation after it) runs without a cache."""
    y = module(x)
    return y if act is None else act(y)


def _linear_of(cache: DecodingCache | None) -> Callable[..., torch.Tensor]:
    return linear if cache is None else cache.linear


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value stacked
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, cache: DecodingCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        lin = _linear_of(cache)
        q, k, v = lin(self.qkv, x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, H, past + T, hd), in the cache's dtype
            q = q.to(k.dtype)  # attention runs in the cache's precision (decoding.cache_dtype)
        dropout = self.attn_pdrop if self.training else 0.0
        mask = _cache_hook(cache, "attention_mask", T)
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # one new token sees all
        else:
            # new block after a cached prefix: query i (absolute past + i) sees keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C).to(x.dtype)  # (B, T, C)
        y = lin(self.proj, y)
        return self.resid_drop(y) if self.training else y  # eval: skip the no-op call (decoding steps)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        # indices 0 and 2 match the original keys mlp.0 / mlp.2
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),  # exact (erf) GELU, as minGPT
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.resid_pdrop),
        )

    def forward(self, x: torch.Tensor, cache: DecodingCache | None = None, layer: int = 0) -> torch.Tensor:
        # x: (B, T, C)
        lin = _linear_of(cache)
        x = x + self.attn(self.ln1(x), cache, layer)
        fc, gelu, out, drop = self.mlp  # the activation goes with its Linear: a cache may fuse them
        y = lin(out, lin(fc, self.ln2(x), gelu))
        return x + (drop(y) if self.training else y)


def fuse_knowledge(tok: torch.Tensor, ent: torch.Tensor, knowledge: KnowledgeInputs) -> torch.Tensor:
    """Add to each text token the entities covering it, softmax-weighted by inner product.

    tok: (B, Tt, C) text token embeddings; ent: (B, E, C) projected entity vectors.
    A token covered by no entity is returned unchanged (its weights are all zero).
    """
    cover = knowledge.coverage(tok.shape[1])  # (B, Tt, E)
    scores = torch.einsum("btc,bec->bte", tok, ent)
    scores = scores.masked_fill(~cover, torch.finfo(scores.dtype).min)
    # masked scores underflow to weight 0; multiplying by cover also zeroes rows with no entity
    weights = scores.softmax(dim=-1) * cover
    return tok + torch.einsum("bte,bec->btc", weights, ent)


def fuse_knowledge_output(h: torch.Tensor, ent: torch.Tensor, nothing: torch.Tensor, knowledge: KnowledgeInputs) -> torch.Tensor:
    """The release's fusion of the text positions' last hidden states over the entity slots.

    h: (B, Tt, C); ent: (B, E, C) projected entity vectors; nothing: (B, C) the projected "nothing"
    vector, which fills every cell of a slot its entity does not cover (all cells of an empty slot).
    """
    cover = knowledge.coverage(h.shape[1]).transpose(1, 2).unsqueeze(-1)  # (B, E, Tt, 1)
    cells = torch.where(cover, ent.unsqueeze(2), nothing[:, None, None, :])  # (B, E, Tt, C)
    scores = torch.einsum("btc,betc->be", h, cells)
    scores = scores.masked_fill(scores == 0, -1e30)
    return h + torch.einsum("be,betc->btc", scores.softmax(dim=-1), cells)


class ArtistGPT(nn.Module):
    """p(image tokens | text [, entities]).

    Inputs use two id spaces, kept apart for clarity: ``text_ids`` are tokenizer ids (0 = [PAD])
    and ``image_ids`` are VQGAN codes. The offset into the shared embedding table is applied here.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.ent_emb = nn.Linear(config.entity_dim, config.n_embd) if config.knowledge else None
        self.drop = nn.Dropout(config.embd_pdrop)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.img_vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # minGPT's initialisation
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    @staticmethod
    def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes for ``config``, computed without allocating memory."""
        with torch.device("meta"):
            model = ArtistGPT(config)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW must not decay (positions; embeddings, norms, biases by kind)."""
        return {"pos_emb"}

    @property
    def pad_text_id(self) -> int:
        return 0

    @property
    def ordinary_text_ids(self) -> tuple[int, int]:
        """[low, high) of the text ids past the special tokens (what mention dropout draws from)."""
        # specials first: BERT Chinese's [PAD] [unused1-99] [UNK] [CLS] [SEP] [MASK] are 0..103, char_vocab's 5 are 0..4
        low = 104 if self.config.text_vocab_size == BERT_CHINESE_VOCAB_SIZE else 5
        return low, self.config.text_vocab_size

    # ---- embedding -------------------------------------------------------------------------------

    def embed_text(self, text_ids: torch.Tensor, knowledge: KnowledgeInputs | None) -> torch.Tensor:
        """(B, Tt) tokenizer ids → (B, Tt, C) token embeddings with knowledge fused (no positions)."""
        if text_ids.shape[1] != self.config.text_len:
            raise ValueError(f"text_ids must have text_len={self.config.text_len} columns, got {text_ids.shape[1]}")
        tok = self.tok_emb(text_ids + self.config.img_vocab_size)
        if self.config.knowledge_fusion != "input" or not self._has_entities(knowledge):
            return tok
        return fuse_knowledge(tok, self.ent_emb(knowledge.vectors.to(tok.dtype)), knowledge)

    def _has_entities(self, knowledge: KnowledgeInputs | None) -> bool:
        """Whether ``knowledge`` has slots to fuse (checked against this model)."""
        if knowledge is None or knowledge.mask.shape[1] == 0:
            return False
        if self.ent_emb is None:
            raise ValueError("entities were given but this model has no knowledge part (entity_dim=None)")
        if knowledge.dim != self.config.entity_dim:
            raise ValueError(f"entity vectors have width {knowledge.dim}, model expects entity_dim={self.config.entity_dim}")
        return True

    def _fuse_output(self, h: torch.Tensor, knowledge: KnowledgeInputs | None, start: int) -> torch.Tensor:
        """The "output" fusion of the text positions among the positions ``start ..`` of ``h`` (B, T, C)."""
        Tt = self.config.text_len
        if self.config.knowledge_fusion != "output" or start >= Tt or not self._has_entities(knowledge):
            return h
        if start:
            raise ValueError("the output fusion needs all text positions in one pass (start at position 0)")
        if knowledge.nothing is None:
            raise ValueError(
                "knowledge_fusion='output' needs the 'nothing' vector (row 0 of entity2vec.pt): "
                "KnowledgeInputs.with_nothing"
            )
        ent = self.ent_emb(knowledge.vectors.to(h.dtype))  # (B, E, C)
        nothing = self.ent_emb(knowledge.nothing.to(h.dtype))  # (B, C)
        text = fuse_knowledge_output(h[:, :Tt], ent, nothing, knowledge)
        return torch.cat([text, h[:, Tt:]], dim=1)

    def _run(
        self, x: torch.Tensor, cache: DecodingCache | None = None, knowledge: KnowledgeInputs | None = None
    ) -> torch.Tensor:
        """Embeddings (B, T, C) of the positions after the cached ones (``cache.length``, or 0 without
        a cache) → final hidden states (B, T, C); the cache then holds these positions too.
        ``knowledge`` is read here by the "output" fusion only."""
        T = x.shape[1]
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions exceeds block_size={self.config.block_size}")
        positions = _cache_hook(cache, "positions", T)  # (B, T) per row, or None: all rows at start
        if positions is None:
            x = self.drop(x + self.pos_emb[:, start : start + T])
        else:
            x = self.drop(x + self.pos_emb[0, positions])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(self._fuse_output(x, knowledge, start))

    # ---- training / scoring ----------------------------------------------------------------------

    def _drop_mentions(self, text_ids: torch.Tensor, knowledge: KnowledgeInputs | None) -> torch.Tensor:
        """In a ``mention_dropout`` fraction of rows, every token an entity covers becomes a random
        ordinary token (the entities stay), so the vector, not the name's characters, carries the look."""
        p = self.config.mention_dropout
        if not (self.training and p > 0) or knowledge is None:
            return text_ids
        B, Tt = text_ids.shape
        drop = torch.rand(B, device=text_ids.device) < p  # (B,)
        covered = knowledge.coverage(Tt).any(-1) & drop[:, None]  # (B, Tt)
        random_ids = torch.randint(*self.ordinary_text_ids, (B, Tt), dtype=text_ids.dtype, device=text_ids.device)
        return torch.where(covered, random_ids, text_ids)

    def _drop_captions(
        self, text_ids: torch.Tensor, knowledge: KnowledgeInputs | None
    ) -> tuple[torch.Tensor, KnowledgeInputs | None]:
        p = self.config.caption_dropout
        if not (self.training and p > 0):
            return text_ids, knowledge
        drop = torch.rand(text_ids.shape[0], device=text_ids.device) < p  # (B,)
        text_ids = text_ids.masked_fill(drop[:, None], self.pad_text_id)
        if knowledge is not None:
            knowledge = knowledge.with_mask(knowledge.mask & ~drop[:, None])
        return text_ids, knowledge

    def image_logits(
        self, text_ids: torch.Tensor, image_ids: torch.Tensor, knowledge: KnowledgeInputs | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits for every image token: (B, Ti, img_vocab_size).

        Position ``text_len - 1 + i`` predicts image token ``i``; the last image token is never
        an input.
        """
        text_ids = self._drop_mentions(text_ids, knowledge)
        text_ids, knowledge = self._drop_captions(text_ids, knowledge)
        Tt = self.config.text_len
        x = torch.cat([self.embed_text(text_ids, knowledge), self.tok_emb(image_ids[:, :-1])], dim=1)
        h = self._run(x, knowledge=knowledge)
        return self.head(h[:, Tt - 1 :])

    def forward(
        self, text_ids: torch.Tensor, image_ids: torch.Tensor, knowledge: KnowledgeInputs | None = None
    ) -> torch.Tensor:
        """Mean negative log-likelihood of the image tokens (text tokens are not predicted)."""
        logits = self.image_logits(text_ids, image_ids, knowledge)
        return F.cross_entropy(logits.float().flatten(0, 1), image_ids.flatten())

    # ---- incremental decoding (the cache: decoding.new_cache) ---------------------------------------

    def prefill(
        self,
        text_ids: torch.Tensor,
        knowledge: KnowledgeInputs | None,
        cache: DecodingCache | None,
        image_prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run text (+ k known leading image tokens); return logits for the next image token (B, V).

        With ``cache=None`` this is the full recompute: the whole sequence, nothing kept."""
        x = self.embed_text(text_ids, knowledge)  # (B, Tt, C)
        if image_prefix is not None and image_prefix.shape[1]:
            x = torch.cat([x, self.tok_emb(image_prefix)], dim=1)  # (B, Tt + k, C)
        h = self._run(x, cache, knowledge)
        return _linear_of(cache)(self.head, h[:, -1])

    def step(self, image_ids: torch.Tensor, cache: DecodingCache) -> torch.Tensor:
        """Feed the newest image token (B, 1) after ``cache.length`` cached positions → logits (B, V)."""
        h = self._run(self.tok_emb(image_ids), cache)
        return cache.linear(self.head, h[:, -1])
