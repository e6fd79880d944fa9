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
