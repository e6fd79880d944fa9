"""Text side of ARTIST: the BERT Chinese WordPiece tokenizer, used the way the original release did.

Texts are tokenized without [CLS]/[SEP], truncated to ``text_len`` and right-padded with [PAD]
(id 0). Offsets into the original string are kept so that knowledge-graph matches (character
spans) can be aligned to tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import BertTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"


def load_tokenizer(path: str | os.PathLike) -> BertTokenizerFast:
    """Load the WordPiece tokenizer from ``vocab.txt`` or a directory that holds it."""
    path = os.fspath(path)
    vocab = os.path.join(path, VOCAB_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(vocab):
        raise FileNotFoundError(f"no tokenizer vocabulary at {vocab}")
    tokens: dict[str, int] = {}
    with open(vocab, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            token = line.rstrip("\r\n")
            if not token:
                raise ValueError(f"{vocab}, line {line_no}: empty token")
            if token in tokens:
                raise ValueError(f"{vocab}, line {line_no}: token {token!r} repeats line {tokens[token] + 1}")
            tokens[token] = line_no - 1
    if tokens.get("[PAD]") != 0:
        raise ValueError(f"{vocab}: [PAD] must be the first entry (id 0), found id {tokens.get('[PAD]')}")
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ValueError(f"{vocab}: missing special tokens {', '.join(missing)}")
    # the vocabulary is passed as a mapping: transformers 5 ignores a ``vocab_file`` argument here
    tok = BertTokenizerFast(vocab=tokens, do_lower_case=True, tokenize_chinese_chars=True)
    if len(tok) != len(tokens):
        raise ValueError(f"{vocab}: the tokenizer holds {len(tok)} tokens, the file {len(tokens)}")
    return tok


def write_vocab(tokens: Iterable[str], path: str | os.PathLike) -> None:
    """Write a vocabulary file, one token per line (the format ``load_tokenizer`` reads)."""
    with open(path, "w", encoding="utf-8") as f:
        for t in tokens:
            f.write(t + "\n")


def char_vocab(chars: Iterable[str], extra: Sequence[str] = ()) -> list[str]:
    """A character-level vocabulary: the special tokens, then ``extra``, then each character once.

    Used for small models (the embedded default) and tests; a released checkpoint brings its own
    21128-entry BERT Chinese vocab.txt.
    """
    seen: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    for t in extra:
        seen.setdefault(t, None)
    for c in chars:
        if not c.isspace():
            seen.setdefault(c.lower(), None)
    return list(seen)


@dataclass
class EncodedText:
    """Token ids of a batch of texts, ``(B, text_len)``, plus what alignment needs."""

    input_ids: torch.Tensor  # (B, text_len) long, [PAD]=0 right-padded
    lengths: list[int]  # number of real tokens per text (after truncation)
    offsets: list[list[tuple[int, int]]]  # per text, per real token: character span [start, end)
    truncated: list[bool]  # whether the text had more than text_len tokens
    chars: list[int]  # per text, how many leading characters were tokenized (the rest cannot reach the model)
    unknown: list[list[str]]  # per text, the pieces of text that became [UNK] among the kept tokens


# A text longer than this many characters per kept token is cut before tokenizing (a 50 MB cell
# would otherwise be tokenized whole to keep 32 tokens); see _encode_long.
CHARS_PER_TOKEN = 4


def _settled(word_ids: list[int | None], text_len: int) -> bool:
    """Whether the tokens of a cut text begin with the full text's first ``text_len`` tokens (and
    show that it has more). The normalizer and pre-tokenizer of BERT's WordPiece act character by
    character and split at spaces, punctuation and CJK characters, so every word of the cut text
    but its last (the one the cut may split) is a word of the full text with the same tokens;
    and any word, cut or whole, gives at least one token (``[UNK]`` at worst)."""
    if not word_ids:
        return False
    whole = sum(1 for w in word_ids if w != word_ids[-1])
    return whole >= text_len


def _encode_long(tokenizer, text: str, text_len: int) -> tuple[int, list[int], list[tuple[int, int]]]:
    """Tokenize the shortest prefix of ``text`` (``CHARS_PER_TOKEN * (text_len + 1)`` characters,
    doubled while needed) whose tokens are provably the full text's first ``text_len`` tokens:
    characters that become no token (whitespace, control characters) or long words can make a first
    cut too short. Ends by the whole text at worst, so the work is at most about twice that of
    tokenizing it once, and usually a few hundred characters whatever the text's size."""
    limit = CHARS_PER_TOKEN * (text_len + 1)
    while True:
        kept = text[:limit]
        enc = tokenizer([kept], add_special_tokens=False, return_offsets_mapping=True)
        if len(kept) == len(text) or _settled(enc.word_ids(0), text_len):
            return len(kept), enc["input_ids"][0], [tuple(o) for o in enc["offset_mapping"][0]]
        limit *= 2


def encode_texts(tokenizer: BertTokenizerFast, texts: Sequence[str], text_len: int) -> EncodedText:
    """Tokenize without special tokens, truncate to ``text_len``, right-pad with [PAD] (id 0).

    A long text is cut before tokenizing (see :func:`_encode_long`): the ids equal those of the whole
    text, and ``chars`` says how much of it was read."""
    if text_len <= 0:
        raise ValueError(f"text_len must be positive, got {text_len}")
    texts = list(texts)
    limit = CHARS_PER_TOKEN * (text_len + 1)
    short = [i for i, t in enumerate(texts) if len(t) <= limit]
    enc = tokenizer([texts[i] for i in short], add_special_tokens=False, return_offsets_mapping=True)
    encoded = {i: (len(texts[i]), row, [tuple(o) for o in offs])
               for i, row, offs in zip(short, enc["input_ids"], enc["offset_mapping"])}
    for i, t in enumerate(texts):
        if i not in encoded:
            encoded[i] = _encode_long(tokenizer, t, text_len)
    unk = tokenizer.unk_token_id
    ids = torch.zeros(len(texts), text_len, dtype=torch.long)
    out = EncodedText(ids, [], [], [], [], [])
    for i, text in enumerate(texts):
        chars, row, offs = encoded[i]
        n = min(len(row), text_len)
        ids[i, :n] = torch.tensor(row[:n], dtype=torch.long)
        out.lengths.append(n)
        out.offsets.append(offs[:n])
        out.truncated.append(len(row) > text_len)
        out.chars.append(chars)
        out.unknown.append([text[a:b] for t, (a, b) in zip(row[:n], offs[:n]) if t == unk])
    return out


EXAMPLES = 3  # prompts quoted per kind in PromptStats.summary
QUOTE_CHARS = 40


def _quote(text: str) -> str:
    return repr(text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "…")


@dataclass
class PromptStats:
    """Counts, over the prompts encoded, of those the model cannot read whole: with characters that
    became ``[UNK]``, cut at ``text_len`` tokens, or empty (they give the unconditional image)."""

    prompts: int = 0
    unknown: int = 0
    truncated: int = 0
    empty: int = 0
    examples: dict[str, list[str]] = field(default_factory=lambda: {"unknown": [], "truncated": [], "empty": []})

    def add(self, texts: Sequence[str], enc: EncodedText, first_index: int | None = None) -> None:
        """Count ``texts`` (encoded as ``enc``); examples are numbered from ``first_index`` (else from
        the prompts counted so far)."""
        start = self.prompts if first_index is None else first_index
        for i, text in enumerate(texts):
            kinds = {
                "unknown": f"{_quote(text)} ([UNK]: {', '.join(map(repr, enc.unknown[i]))})" if enc.unknown[i] else None,
                "truncated": f"{_quote(text)} ({enc.chars[i]} of {len(text)} characters read)" if enc.truncated[i] else None,
                "empty": _quote(text) if enc.lengths[i] == 0 else None,
            }
            for kind, example in kinds.items():
                if example is None:
                    continue
                setattr(self, kind, getattr(self, kind) + 1)
                if len(self.examples[kind]) < EXAMPLES:
                    self.examples[kind].append(f"#{start + i}: {example}")
        self.prompts += len(texts)

    def summary(self, text_len: int) -> str | None:
        """One line for the log, or None when every prompt was read whole."""
        parts = []
        for kind, what in (("unknown", "had characters the vocabulary lacks (→ [UNK])"),
                           ("truncated", f"were cut to text_len={text_len} tokens"),
                           ("empty", "were empty (they give the unconditional image)")):
            n = getattr(self, kind)
            if n:
                parts.append(f"{n} {what}, e.g. {'; '.join(self.examples[kind])}")
        if not parts:
            return None
        return f"of {self.prompts} prompt(s): " + " | ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m easynlp_artist.tokenization --out vocab.txt TABLE[:COLUMN] ...``: a character
    vocabulary covering the texts of tab-separated files (column 2 by default, 1-based)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m easynlp_artist.tokenization", description=main.__doc__)
    p.add_argument("--out", required=True, help="vocab.txt to write")
    p.add_argument("--skip_first_line", action="store_true", help="every file has a header line")
    p.add_argument("tables", nargs="+", help="FILE or FILE:COLUMN (1-based column of the text)")
    args = p.parse_args(argv)
    chars: list[str] = []
    for spec in args.tables:
        path, _, col = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "2")
        column = int(col) - 1
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if args.skip_first_line and line_no == 1:
                    continue
                fields = line.rstrip("\r\n").split("\t")
                if column >= len(fields):
                    raise SystemExit(f"{path}:{line_no}: no column {column + 1} (found {len(fields)})")
                chars.extend(fields[column])
    vocab = char_vocab(chars)
    tmp = f"{args.out}.tmp"
    write_vocab(vocab, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(vocab)} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
