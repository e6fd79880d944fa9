"""Word lattice: every dictionary entity found in a text, aligned to the tokenizer's tokens.

Pipeline for one text (``LatticeBuilder``):

1. **Normalise** text and entity names with :func:`normalize`, one character for one character (so
   character offsets never move): full-width ASCII U+FF01–U+FF5E → half-width, ideographic space U+3000
   → space, lower case, accents stripped (NFD minus combining marks) — each only where the result is a
   single character. This mirrors what the BERT tokenizer does to the text (lower case, accents) and
   adds full-/half-width folding, so "ｉＰｈｏｎｅ", "IPHONE" and "iphone" all match the entity "iPhone".
   Two names that normalise to the same key keep the first in file order (counted in
   ``LexiconMatcher.collisions``).
2. **Match** with an Aho–Corasick automaton (pyahocorasick) over the normalised names: every occurrence,
   overlapping and nested ones included. Names shorter than ``min_chars`` (default 2, as the original
   dropped single characters) are not added.
3. **Optional jieba filter** (``use_jieba_filter``, off by default): the names are added to a private
   jieba dictionary; a match is kept if its start and end are both word boundaries of jieba's precise
   segmentation, or if it is one of the words of jieba's search-mode segmentation (which also lists the
   dictionary words nested in a long word). This drops matches that cut through another word, e.g. 市长
   in 南京市/长江大桥, and keeps 南京 inside 南京市.
4. **Align** character spans to tokens with the fast tokenizer's offsets. ``alignment="strict"`` (default)
   keeps a match only if it starts where a token starts and ends where a token ends — the original
   matched whole tokens, so for Chinese (one token per character) nothing changes; "phone" inside the
   single token "iphone" is dropped, while "iphone12" over "iphone" + "##12" is kept (the original,
   joining token strings, could not match across word pieces). Any token boundary counts, so "40" in
   "p40" ("p" + "##40") is kept; the jieba filter can remove such fragments. ``alignment="expand"`` instead
   widens the match to every token it overlaps. Matches not aligned are counted in
   ``LatticeStats.unaligned``.
5. **Truncate and choose**: with ``text_len`` tokens kept, an entity must lie wholly inside them;
   others are dropped and counted (``past_text_len``). At most ``entity_num`` entities per text are kept,
   chosen by ``priority``: ``"longest"`` (default: more tokens first, then earlier start, then smaller
   id — specific entities beat the fragments nested in them) or ``"position"`` (earlier start, then
   earlier end, then smaller id — the order of the original files, whose loader took the first
   ``entity_num``). Kept entities are listed in (start, end, id) order.

Spans in a :class:`Lattice` are half-open token spans ``[start, end)``. The original knowledge columns
(``lex_id``, ``pos_s``, ``pos_e``, ``token_len``) store inclusive ends; :meth:`Lattice.to_columns` and
:meth:`Lattice.from_columns` convert.
"""

from __future__ import annotations

import bisect
import os
import unicodedata
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import ahocorasick

from ..tokenization import EncodedText, encode_texts
from .batch import KnowledgeInputs
from .entities import EntityStore
from .errors import LatticeFormatError

ALIGNMENTS = ("strict", "expand")
PRIORITIES = ("longest", "position")
COLUMNS = ("lex_id", "pos_s", "pos_e", "token_len")
_MAX_AUTOMATON_ID = 2**31 - 1  # pyahocorasick STORE_INTS values are 32-bit signed
_MAX_NAME_CHARS = 2**16 - 1  # lengths are kept as uint16


class _Fold(dict):
    """Code point → folded code point, filled on first use (``str.translate`` calls ``__missing__``)."""

    def __missing__(self, code: int) -> int:
        c = chr(code)
        if 0xFF01 <= code <= 0xFF5E:
            c = chr(code - 0xFEE0)
        elif code == 0x3000:
            c = " "
        lower = c.lower()
        if len(lower) == 1:
            c = lower
        stripped = "".join(ch for ch in unicodedata.normalize("NFD", c) if not unicodedata.combining(ch))
        if len(stripped) == 1:
            c = stripped
        self[code] = ord(c)
        return self[code]


_FOLD = _Fold()


def normalize(text: str) -> str:
    """Fold width, case and accents character by character; ``len(normalize(t)) == len(t)`` always."""
    return text.translate(_FOLD)


@dataclass
class LatticeConfig:
    text_len: int = 32  # tokens kept per text
    entity_num: int = 10  # entities kept per text
    min_chars: int = 2  # shorter names are not matched
    alignment: str = "strict"  # "strict" or "expand", see module docstring
    priority: str = "longest"  # "longest" or "position", see module docstring
    use_jieba_filter: bool = False

    def __post_init__(self) -> None:
        if self.text_len <= 0:
            raise ValueError(f"text_len must be positive, got {self.text_len}")
        if self.entity_num < 0:
            raise ValueError(f"entity_num must be >= 0, got {self.entity_num}")
        if self.min_chars < 1:
            raise ValueError(f"min_chars must be >= 1, got {self.min_chars}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {self.priority!r}")


@dataclass
class LatticeStats:
    """Counters over the texts seen; ``kept`` entities reach the model."""

    texts: int = 0
    matches: int = 0  # character matches from the automaton
    jieba_dropped: int = 0  # removed by the jieba filter
    unaligned: int = 0  # not on token boundaries (strict alignment)
    past_text_len: int = 0  # not wholly inside the first text_len tokens
    over_entity_num: int = 0  # beyond entity_num for their text
    kept: int = 0

    def add(self, other: LatticeStats) -> LatticeStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


class Match(NamedTuple):
    start: int  # first character
    end: int  # one past the last character
    entity_id: int


class LexiconMatcher:
    """Aho–Corasick automaton over normalised entity names; :meth:`matches` lists every occurrence.

    Memory: the automaton stores each id as a native 32-bit int; a ``uint16`` name length per id
    turns an automaton hit (last character, id) into a span.
    """

    def __init__(self, entries: Iterable[tuple[str, int]], min_chars: int = 2) -> None:
        if min_chars < 1:
            raise ValueError(f"min_chars must be >= 1, got {min_chars}")
        self.min_chars = min_chars
        self.skipped_short = 0
        self.collisions = 0
        self.size = 0
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        self._lengths = array("H")  # normalised name length per entity id (0: no name)
        for name, entity_id in entries:
            key = normalize(name)
            if len(key) < min_chars:
                self.skipped_short += 1
                continue
            if not 0 <= entity_id <= _MAX_AUTOMATON_ID:
                raise ValueError(f"entity id {entity_id} of {name!r} is outside [0, {_MAX_AUTOMATON_ID}]")
            if len(key) > _MAX_NAME_CHARS:
                raise ValueError(f"entity name {name[:20]!r}... is longer than {_MAX_NAME_CHARS} characters")
            if key in self._automaton:
                self.collisions += 1
                continue
            self._automaton.add_word(key, entity_id)
            if entity_id >= len(self._lengths):
                self._lengths.extend(array("H", bytes(2 * (entity_id + 1 - len(self._lengths)))))
            self._lengths[entity_id] = len(key)
            self.size += 1
        if self.size:
            self._automaton.make_automaton()

    @classmethod
    def from_store(cls, store: EntityStore, min_chars: int = 2) -> LexiconMatcher:
        return cls(store.items(), min_chars=min_chars)

    def spans(self, text: str, normalized: bool = False) -> list[tuple[int, int, int]]:
        """All occurrences as plain ``(start, end, entity_id)`` tuples, sorted; the fast path of :meth:`matches`."""
        if not self.size:
            return []
        key = text if normalized else normalize(text)
        lengths = self._lengths
        found = [(last + 1 - lengths[i], last + 1, i) for last, i in self._automaton.iter(key)]
        found.sort()
        return found

    def matches(self, text: str, normalized: bool = False) -> list[Match]:
        """All occurrences in ``text`` as character spans, sorted by (start, end, id)."""
        return [Match(*t) for t in self.spans(text, normalized)]


class JiebaFilter:
    """Keep only matches consistent with jieba's segmentation (names added as a user dictionary)."""

    def __init__(self, names: Iterable[str], min_chars: int = 2) -> None:
        import jieba  # imported here: jieba is only needed when the filter is on

        self._tok = jieba.Tokenizer()
        self._tok.initialize()
        for name in names:
            key = normalize(name)
            if len(key) >= min_chars and not self._tok.FREQ.get(key):
                self._tok.add_word(key)

    def keep(self, text: str, matches: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """The ``(start, end, id)`` matches (or :class:`Match`) of normalised ``text`` that jieba agrees with.

        See the module docstring for the rule.
        """
        if not matches:
            return []
        bounds = {0}
        bounds.update(end for _, _, end in self._tok.tokenize(text, HMM=False))
        words = {(s, e) for _, s, e in self._tok.tokenize(text, mode="search", HMM=False)}
        return [m for m in matches if (m[0] in bounds and m[1] in bounds) or (m[0], m[1]) in words]


@dataclass(frozen=True)
class Lattice:
    """The entities of one text: ids and half-open token spans, over ``token_len`` text tokens."""

    token_len: int
    entity_ids: tuple[int, ...] = ()
    starts: tuple[int, ...] = ()  # first token covered
    ends: tuple[int, ...] = ()  # one past the last token covered

    def __post_init__(self) -> None:
        n = len(self.entity_ids)
        if len(self.starts) != n or len(self.ends) != n:
            raise ValueError(f"{n} entity ids, {len(self.starts)} starts, {len(self.ends)} ends")
        for i, s, e in zip(self.entity_ids, self.starts, self.ends):
            if not 0 <= s < e <= self.token_len:
                raise ValueError(f"entity {i}: span [{s}, {e}) is not inside [0, {self.token_len})")

    def __len__(self) -> int:
        return len(self.entity_ids)

    def to_columns(self) -> dict[str, str]:
        """The original columns: ``pos_s``/``pos_e`` list ``range(token_len)`` then each entity, ends inclusive.

        A row without entities has an empty ``lex_id`` field (as the original wrote ``' '.join([])``).
        """
        positions = " ".join(map(str, range(self.token_len)))
        sep = " " if self.token_len and self.entity_ids else ""
        return {
            "lex_id": " ".join(map(str, self.entity_ids)),
            "pos_s": positions + sep + " ".join(map(str, self.starts)),
            "pos_e": positions + sep + " ".join(str(e - 1) for e in self.ends),
            "token_len": str(self.token_len),
        }

    @classmethod
    def from_columns(
        cls,
        lex_id: str,
        pos_s: str,
        pos_e: str,
        token_len: str,
        *,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        columns: Mapping[str, int] | None = None,
    ) -> Lattice:
        """Parse the original columns; errors name ``path``, ``line`` and the column of the bad item.

        ``columns`` gives the 1-based character column where each field starts in its line.
        """
        cols = dict(columns or {})

        def fail(field: str, offset: int, message: str) -> LatticeFormatError:
            col = cols.get(field)
            return LatticeFormatError(f"{field}: {message}", path, line, None if col is None else col + offset)

        text = token_len.strip()
        if not (text.isascii() and text.isdigit()):
            raise fail("token_len", 0, f"expected a non-negative integer, found {token_len!r}")
        n_tokens = int(text)
        ids = _parse_ints(lex_id, "lex_id", fail)
        ps = _parse_ints(pos_s, "pos_s", fail)
        pe = _parse_ints(pos_e, "pos_e", fail)
        expected = n_tokens + len(ids)
        for field, values in (("pos_s", ps), ("pos_e", pe)):
            if len(values) != expected:
                raise fail(
                    field, 0, f"expected {expected} positions (token_len {n_tokens} + {len(ids)} entities), "
                    f"found {len(values)}"
                )
            for k in range(n_tokens):
                if values[k][0] != k:
                    raise fail(field, values[k][1], f"position {k + 1} must be {k} (token index), found {values[k][0]}")
        for k, (entity_id, _) in enumerate(ids):
            (s, s_off), (e, e_off) = ps[n_tokens + k], pe[n_tokens + k]
            if not 0 <= s < n_tokens:
                raise fail("pos_s", s_off, f"entity {entity_id} starts at {s}, outside [0, {n_tokens})")
            if not s <= e < n_tokens:
                raise fail("pos_e", e_off, f"entity {entity_id} ends at {e}, outside [{s}, {n_tokens})")
        return cls(
            n_tokens,
            tuple(i for i, _ in ids),
            tuple(ps[n_tokens + k][0] for k in range(len(ids))),
            tuple(pe[n_tokens + k][0] + 1 for k in range(len(ids))),
        )

    def select(self, text_len: int | None, entity_num: int | None, priority: str = "longest") -> tuple[Lattice, int, int]:
        """Keep entities wholly inside ``text_len`` tokens, at most ``entity_num`` by ``priority``.

        Returns ``(lattice, past_text_len, over_entity_num)``: the kept lattice (``token_len`` capped at
        ``text_len``) and the two drop counts.
        """
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        limit = self.token_len if text_len is None else min(self.token_len, text_len)
        items = [(s, e, i) for i, s, e in zip(self.entity_ids, self.starts, self.ends) if e <= limit]
        past = len(self) - len(items)
        if priority == "longest":
            items.sort(key=lambda t: (t[0] - t[1], t[0], t[2]))
        else:
            items.sort(key=lambda t: (t[0], t[1], t[2]))
        over = 0
        if entity_num is not None and len(items) > entity_num:
            over = len(items) - entity_num
            items = items[:entity_num]
        items.sort(key=lambda t: (t[0], t[1], t[2]))
        kept = Lattice(limit, tuple(i for _, _, i in items), tuple(s for s, _, _ in items), tuple(e for _, e, _ in items))
        return kept, past, over


def _parse_ints(text: str, field: str, fail) -> list[tuple[int, int]]:
    """Space-separated non-negative integers with their character offsets in ``text``."""
    out = []
    offset = 0
    if text == "":
        return out
    for item in text.split(" "):
        if not (item.isascii() and item.isdigit()):
            raise fail(field, offset, f"expected a non-negative integer, found {item!r}")
        out.append((int(item), offset))
        offset += len(item) + 1
    return out


def knowledge_from_lattices(
    lattices: Sequence[Lattice],
    store: EntityStore,
    *,
    text_len: int | None = None,
    entity_num: int | None = 10,
    priority: str = "longest",
    stats: LatticeStats | None = None,
) -> KnowledgeInputs:
    """Padded entity vectors + half-open token spans + mask for the fusion layer: ``(B, E, D)``, E ≤ entity_num."""
    vectors, spans = [], []
    for lat in lattices:
        kept, past, over = lat.select(text_len, entity_num, priority)
        vectors.append(store.vectors_for(kept.entity_ids))
        spans.append(list(zip(kept.starts, kept.ends)))
        if stats is not None:
            stats.past_text_len += past
            stats.over_entity_num += over
            stats.kept += len(kept)
    return KnowledgeInputs.from_lists(vectors, spans, store.dim)


class LatticeBuilder:
    """Texts → lattices (and model inputs), with one store, one tokenizer and one config."""

    def __init__(self, store: EntityStore, tokenizer, config: LatticeConfig | None = None) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self.config = config or LatticeConfig()
        self.matcher = LexiconMatcher.from_store(store, min_chars=self.config.min_chars)
        self.jieba = JiebaFilter(store.names, self.config.min_chars) if self.config.use_jieba_filter else None

    def lattice(
        self, text: str, offsets: Sequence[tuple[int, int]], truncated: bool = False, stats: LatticeStats | None = None
    ) -> Lattice:
        """The lattice of ``text`` over the tokens whose character spans are ``offsets``.

        With ``truncated``, ``offsets`` are the first tokens of a longer text: matches ending after the
        last of them count as ``past_text_len``.
        """
        stats = stats if stats is not None else LatticeStats()
        key = normalize(text)
        found = self.matcher.spans(key, normalized=True)
        stats.texts += 1
        stats.matches += len(found)
        if self.jieba is not None:
            kept = self.jieba.keep(key, found)
            stats.jieba_dropped += len(found) - len(kept)
            found = kept
        limit = offsets[-1][1] if offsets else 0
        if truncated:
            inside = [m for m in found if m[1] <= limit]
            stats.past_text_len += len(found) - len(inside)
            found = inside
        items = self._align(found, offsets)
        stats.unaligned += len(found) - len(items)
        items = sorted(set(items))
        return Lattice(len(offsets), tuple(i for _, _, i in items), tuple(s for s, _, _ in items), tuple(e for _, e, _ in items))

    def _align(self, found: Sequence[tuple[int, int, int]], offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Character spans → half-open token spans ``(start, end, id)``; unaligned matches are left out."""
        out = []
        if not found or not offsets:
            return out
        if self.config.alignment == "strict":
            first: dict[int, int] = {}
            last: dict[int, int] = {}
            for t, (a, b) in enumerate(offsets):
                first.setdefault(a, t)
                last[b] = t
            for start, end, entity_id in found:
                s, e = first.get(start), last.get(end)
                if s is not None and e is not None and s <= e:
                    out.append((s, e + 1, entity_id))
            return out
        token_ends = [b for _, b in offsets]
        token_starts = [a for a, _ in offsets]
        for start, end, entity_id in found:
            s = bisect.bisect_right(token_ends, start)  # first token ending after the match starts
            e = bisect.bisect_left(token_starts, end)  # tokens starting before the match ends
            if s < e:
                out.append((s, e, entity_id))
        return out

    def lattices(self, texts: Sequence[str], stats: LatticeStats | None = None) -> list[Lattice]:
        """Full lattices over all tokens (no truncation), as the original preprocessing wrote them."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [self.lattice(t, [tuple(o) for o in offs], False, stats) for t, offs in zip(texts, enc["offset_mapping"])]

    def build(self, texts: Sequence[str]) -> tuple[EncodedText, KnowledgeInputs, LatticeStats]:
        """Token ids ``(B, text_len)`` and knowledge inputs ``(B, E, D)`` for raw texts, on the fly."""
        cfg = self.config
        stats = LatticeStats()
        enc = encode_texts(self.tokenizer, texts, cfg.text_len)
        lats = [self.lattice(t, offs, trunc, stats) for t, offs, trunc in zip(texts, enc.offsets, enc.truncated)]
        knowledge = knowledge_from_lattices(
            lats, self.store, text_len=cfg.text_len, entity_num=cfg.entity_num, priority=cfg.priority, stats=stats
        )
        return enc, knowledge, stats
