"""The text side: vocab.txt → ids exactly as its line numbers, no [CLS]/[SEP], right-padding."""

import pytest

from easynlp_artist.tokenization import char_vocab, encode_texts, load_tokenizer, main, write_vocab


@pytest.fixture
def vocab(tmp_path):
    tokens = char_vocab("一个红色的圆形", extra=["iphone", "##12"])
    write_vocab(tokens, tmp_path / "vocab.txt")
    return tmp_path, tokens


def test_ids_are_the_line_numbers_of_vocab_txt(vocab):
    path, tokens = vocab
    tok = load_tokenizer(path)
    assert len(tok) == len(tokens)
    enc = encode_texts(tok, ["一个红色的圆形", "iPhone12 圆", "未知字"], text_len=6)
    expected = [tokens.index(c) for c in "一个红色的圆"]
    assert enc.input_ids[0].tolist() == expected and enc.truncated[0]
    assert enc.input_ids[1].tolist() == [tokens.index("iphone"), tokens.index("##12"), tokens.index("圆"), 0, 0, 0]
    assert enc.offsets[1] == [(0, 6), (6, 8), (9, 10)] and enc.lengths[1] == 3
    unk = tokens.index("[UNK]")
    assert enc.input_ids[2].tolist() == [unk, unk, unk, 0, 0, 0]


def test_bad_vocab_files(tmp_path):
    (tmp_path / "v.txt").write_text("[PAD]\n[UNK]\na\na\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 4: token 'a' repeats line 3"):
        load_tokenizer(tmp_path / "v.txt")
    (tmp_path / "w.txt").write_text("[UNK]\n[PAD]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[PAD\] must be the first entry \(id 0\), found id 1"):
        load_tokenizer(tmp_path / "w.txt")
    (tmp_path / "x.txt").write_text("[PAD]\n[UNK]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing special tokens \[CLS\], \[SEP\], \[MASK\]"):
        load_tokenizer(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")


def test_vocab_builder_cli(tmp_path):
    (tmp_path / "t.tsv").write_text("0\t红色圆形\n1\t蓝色\n", encoding="utf-8")
    (tmp_path / "e.txt").write_text("2\n番茄\t0\n", encoding="utf-8")
    assert main(["--out", str(tmp_path / "vocab.txt"), str(tmp_path / "t.tsv"), f"{tmp_path / 'e.txt'}:1"]) == 0
    tokens = (tmp_path / "vocab.txt").read_text(encoding="utf-8").split()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert set("红色圆形蓝番茄2") <= set(tokens)


class Spy:
    """The real tokenizer, refusing (at once, before any work) a text longer than ``most`` characters."""

    def __init__(self, tok, most: int) -> None:
        self.tok, self.most = tok, most

    def __call__(self, texts, **kw):
        longest = max(map(len, texts), default=0)
        assert longest <= self.most, f"asked to tokenize {longest} characters"
        return self.tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_huge_text_is_cut_before_tokenizing_and_gives_the_ids_of_its_kept_prefix(vocab):
    path, tokens = vocab
    tok = Spy(load_tokenizer(path), most=100)  # only a short prefix may be tokenized, not 36 M characters
    huge = "一个红色的圆形 iPhone12 " * 2_000_000
    enc = encode_texts(tok, [huge, "圆形"], text_len=6)
    kept = huge[: enc.chars[0]]
    assert len(kept) < 100 and enc.chars[1] == 2
    prefix = encode_texts(tok.tok, [kept], text_len=6)
    assert enc.input_ids[0].tolist() == prefix.input_ids[0].tolist() == [tokens.index(c) for c in "一个红色的圆"]
    assert enc.truncated[0] and enc.offsets[0] == prefix.offsets[0]


def test_cut_texts_keep_the_ids_of_the_whole_text(vocab):
    """Whitespace and control characters (no token), long words ([UNK] past 100 characters),
    accents and punctuation around the cut: the ids and the truncation flag are those of
    tokenizing the whole text (the reference here, on texts short enough for it)."""
    import random

    path, _ = vocab
    tok = load_tokenizer(path)
    rng = random.Random(0)
    pieces = ["一", "个", "红", " ", "  \t", "\x00", "iphone", "12", "é", "e\u0301", ",", "。", "x" * 120, "的圆形", "\n"]
    texts = ["\x00" * 300 + "红色", " " * 500, "e" * 150 + " 一个", "a" * 99 + "一"]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    for text_len in (1, 3, 6):
        enc = encode_texts(tok, texts, text_len)
        whole = tok(texts, add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(whole):
            n = min(len(ids), text_len)
            assert enc.input_ids[i, :n].tolist() == ids[:n] and enc.lengths[i] == n, (text_len, texts[i])
            assert enc.truncated[i] == (len(ids) > text_len), (text_len, texts[i])


def test_unknown_characters_truncation_and_empty_prompts_are_counted(vocab):
    from easynlp_artist.tokenization import PromptStats

    path, _ = vocab
    tok = load_tokenizer(path)
    texts = ["一个红色的圆形", "一个 apple 😀", "圆", "", "  ", "红色的圆形一个红色"]
    stats = PromptStats()
    stats.add(texts, encode_texts(tok, texts, 6))
    assert (stats.prompts, stats.unknown, stats.truncated, stats.empty) == (6, 1, 2, 2)
    assert stats.examples["unknown"] == ["#1: '一个 apple 😀' ([UNK]: 'apple', '😀')"]
    assert stats.examples["truncated"][0] == "#0: '一个红色的圆形' (7 of 7 characters read)"
    line = stats.summary(6)
    assert "of 6 prompt(s): 1 had characters the vocabulary lacks" in line and "2 were cut to text_len=6" in line
    assert "2 were empty" in line and "#3: ''" in line
    again = PromptStats()
    again.add(["一个"], encode_texts(tok, ["一个"], 6))
    assert again.summary(6) is None
