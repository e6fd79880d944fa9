"""Text side of ARTIST: the BERT Chinese WordPiece tokenizer, used the way the original release did.

Texts are tokenized without [CLS]/[SEP], truncated to ``text_len`` and right-padded with [PAD]
(id 0). Offsets into the original string are kept so that knowledge-graph matches (character
spans) can be aligned to tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


def encode_texts(tokenizer: BertTokenizerFast, texts: Sequence[str], text_len: int) -> EncodedText:
    """Tokenize without special tokens, truncate to ``text_len``, right-pad with [PAD] (id 0)."""
    if text_len <= 0:
        raise ValueError(f"text_len must be positive, got {text_len}")
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.zeros(len(texts), text_len, dtype=torch.long)
    lengths, offsets, truncated = [], [], []
    for i, (row, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
        n = min(len(row), text_len)
        ids[i, :n] = torch.tensor(row[:n], dtype=torch.long)
        lengths.append(n)
        offsets.append([tuple(o) for o in offs[:n]])
        truncated.append(len(row) > text_len)
    return EncodedText(ids, lengths, offsets, truncated)


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
