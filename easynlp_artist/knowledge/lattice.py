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
   earlier end, then smaller id — the order our preprocessing writes). Kept entities are listed in
   (start, end, id) order.

**Preprocessed tables** (the original knowledge columns, read by :meth:`Lattice.from_columns`) are turned
into model inputs by :func:`knowledge_from_lattices`, by default the way EasyNLP's loader did it:
priority ``"file"`` keeps the first ``entity_num`` entities in file order, and a span crossing ``text_len``
keeps its part inside (EasyNLP sliced its token matrix; an entity wholly past ``text_len`` still took its
slot there and covers nothing). Every ``lex_id`` must be an id of the loaded store
(:meth:`Lattice.check_ids`); :func:`describe_entities` shows a few rows' ids with their names.

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
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import ahocorasick

from ..tokenization import EncodedText, encode_texts
from .batch import KnowledgeInputs
from .entities import EntityStore
from .errors import LatticeFormatError, location

ALIGNMENTS = ("strict", "expand")
PRIORITIES = ("longest", "position", "file")
FILE_ORDER = "file"  # the priority for preprocessed tables: their first entity_num entities, as EasyNLP
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
    priority: str = "longest"  # "longest", "position" or "file", see module docstring
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
    past_text_len: int = 0  # on the fly: not wholly inside the first text_len tokens; tables: wholly past them
    clipped: int = 0  # spans of a table cut at text_len (the part inside is kept)
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


class Selection(NamedTuple):
    """What :meth:`Lattice.select` kept, and how many entities it dropped or cut."""

    lattice: Lattice
    past_text_len: int  # dropped: no token inside text_len
    over_entity_num: int  # dropped: beyond entity_num
    clipped: int  # kept, cut at text_len


@dataclass(frozen=True)
class Lattice:
    """The entities of one text: ids and half-open token spans, over ``token_len`` text tokens.

    A lattice read from a table also carries where it came from (``path``, 1-based ``line`` and, when
    known, the 1-based character column of each id in that line), for errors; equality ignores them.
    """

    token_len: int
    entity_ids: tuple[int, ...] = ()
    starts: tuple[int, ...] = ()  # first token covered
    ends: tuple[int, ...] = ()  # one past the last token covered
    path: str | None = field(default=None, compare=False, repr=False)
    line: int | None = field(default=None, compare=False, repr=False)
    id_columns: tuple[int, ...] | None = field(default=None, compare=False, repr=False)

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
        for name, values in (("pos_s", ps), ("pos_e", pe)):
            if len(values) != expected:
                raise fail(
                    name, 0, f"expected {expected} positions (token_len {n_tokens} + {len(ids)} entities), "
                    f"found {len(values)}"
                )
            for k in range(n_tokens):
                if values[k][0] != k:
                    raise fail(name, values[k][1], f"position {k + 1} must be {k} (token index), found {values[k][0]}")
        for k, (entity_id, _) in enumerate(ids):
            (s, s_off), (e, e_off) = ps[n_tokens + k], pe[n_tokens + k]
            if not 0 <= s < n_tokens:
                raise fail("pos_s", s_off, f"entity {entity_id} starts at {s}, outside [0, {n_tokens})")
            if not s <= e < n_tokens:
                raise fail("pos_e", e_off, f"entity {entity_id} ends at {e}, outside [{s}, {n_tokens})")
        id_col = cols.get("lex_id")
        return cls(
            n_tokens,
            tuple(i for i, _ in ids),
            tuple(ps[n_tokens + k][0] for k in range(len(ids))),
            tuple(pe[n_tokens + k][0] + 1 for k in range(len(ids))),
            path=None if path is None else os.fspath(path),
            line=line,
            id_columns=None if id_col is None else tuple(id_col + off for _, off in ids),
        )

    def check_ids(self, store: EntityStore) -> None:
        """Every entity id must be an id of ``store``; else a :class:`LatticeFormatError` naming the file,
        line and column (the id's character column when known; the message names ``lex_id``)."""
        for k, entity_id in enumerate(self.entity_ids):
            if not store.has_id(entity_id):
                column = None if self.id_columns is None else self.id_columns[k]
                raise LatticeFormatError(
                    f"lex_id: entity id {entity_id} is not in the entity store "
                    f"({store.source or 'in memory'}, {len(store)} names); was the table preprocessed with "
                    f"another entity2id.txt?",
                    self.path, self.line, column,
                )

    def select(self, text_len: int | None, entity_num: int | None, priority: str = "longest") -> Selection:
        """At most ``entity_num`` entities by ``priority``, cut to the first ``text_len`` tokens.

        A span crossing ``text_len`` keeps its part inside; one wholly past it is dropped. With
        ``"file"`` the first ``entity_num`` in file order are taken before the cut (so, as in EasyNLP,
        an entity wholly past ``text_len`` still uses up its slot) and kept in file order; the other
        priorities choose among the cut spans and list them in (start, end, id) order. The kept
        lattice has ``token_len`` capped at ``text_len``.
        """
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        limit = self.token_len if text_len is None else min(self.token_len, text_len)
        items = list(zip(self.starts, self.ends, self.entity_ids, range(len(self))))
        over = 0
        if priority == FILE_ORDER and entity_num is not None and len(items) > entity_num:
            over, items = len(items) - entity_num, items[:entity_num]
        inside = [(s, min(e, limit), i, k) for s, e, i, k in items if s < limit]
        past = len(items) - len(inside)
        if priority != FILE_ORDER:
            if priority == "longest":
                inside.sort(key=lambda t: (t[0] - t[1], t[0], t[2]))
            else:
                inside.sort(key=lambda t: t[:3])
            if entity_num is not None and len(inside) > entity_num:
                over, inside = len(inside) - entity_num, inside[:entity_num]
            inside.sort(key=lambda t: t[:3])
        clipped = sum(self.ends[t[3]] > limit for t in inside)
        kept = Lattice(
            limit,
            tuple(t[2] for t in inside),
            tuple(t[0] for t in inside),
            tuple(t[1] for t in inside),
            path=self.path,
            line=self.line,
            id_columns=None if self.id_columns is None else tuple(self.id_columns[t[3]] for t in inside),
        )
        return Selection(kept, past, over, clipped)


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
    entity_num: int | None = LatticeConfig.entity_num,
    priority: str = FILE_ORDER,
    stats: LatticeStats | None = None,
) -> KnowledgeInputs:
    """Padded entity vectors + half-open token spans + mask for the fusion layer: ``(B, E, D)``, E ≤ entity_num.

    Every id must belong to ``store`` (:meth:`Lattice.check_ids`). ``priority`` defaults to ``"file"``,
    EasyNLP's reading of a preprocessed table; see :meth:`Lattice.select`.
    """
    vectors, spans = [], []
    for lat in lattices:
        lat.check_ids(store)
        kept, past, over, clipped = lat.select(text_len, entity_num, priority)
        vectors.append(store.vectors_for(kept.entity_ids))
        spans.append(list(zip(kept.starts, kept.ends)))
        if stats is not None:
            stats.past_text_len += past
            stats.over_entity_num += over
            stats.clipped += clipped
            stats.kept += len(kept)
    return KnowledgeInputs.from_lists(vectors, spans, store.dim)


def describe_entities(lattices: Lattice | Sequence[Lattice], store: EntityStore, limit: int = 10) -> str:
    """The first ``limit`` entities of the first rows, e.g. ``t.tsv:1: lex_id 10 = 交通设施 (tokens 0-3)``.

    One ``; ``-separated part per row (named by ``path:line`` when the lattice has them, else by its
    position); an id the store has no name for (or any id of a store of vectors only) shows as
    ``?``. For a log line at predict start.
    """
    if isinstance(lattices, Lattice):
        lattices = [lattices]
    parts: list[str] = []
    shown = 0
    for row, lat in enumerate(lattices, 1):
        if shown >= limit:
            break
        items = []
        for entity_id, s, e in zip(lat.entity_ids, lat.starts, lat.ends):
            if shown >= limit:
                break
            name = store.name_of(entity_id) if store.has_id(entity_id) and len(store) else "?"
            items.append(f"lex_id {entity_id} = {name} (tokens {s}-{e - 1})")
            shown += 1
        if lat.path is not None:
            where = location(lat.path, lat.line)
        else:
            where = f"row {row}" if lat.line is None else f"line {lat.line}"
        parts.append(f"{where}: {', '.join(items) if items else 'no entities'}")
    return "; ".join(parts)


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
        # a long text was read only as far as its kept tokens need (enc.chars): so is its lattice
        lats = [self.lattice(t[:n], offs, trunc, stats)
                for t, n, offs, trunc in zip(texts, enc.chars, enc.offsets, enc.truncated)]
        knowledge = knowledge_from_lattices(
            lats, self.store, text_len=cfg.text_len, entity_num=cfg.entity_num, priority=cfg.priority, stats=stats
        )
        return enc, knowledge, stats
