"""Fixtures for the knowledge tests: a tiny vocabulary and tokenizer, entity files on disk."""

import pytest
import torch
from transformers import BertTokenizerFast

from easynlp_artist.tokenization import char_vocab, write_vocab

CHARS = "南京市长江大桥我的和华为买了手机北上海天安门广场苹果在吃一个人民"
ASCII_PIECES = ["iphone", "##12", "12", "p", "##40", "abc", "new", "york"]
NAMES = ["南京", "南京市", "市长", "长江", "长江大桥", "大桥", "华为", "上海", "天安门", "天安门广场", "广场", "江"]


@pytest.fixture
def vocab_path(tmp_path):
    path = tmp_path / "vocab.txt"
    write_vocab(char_vocab(CHARS, extra=ASCII_PIECES), path)
    return path


@pytest.fixture
def tokenizer(vocab_path):
    return BertTokenizerFast.from_pretrained(str(vocab_path.parent), do_lower_case=True)


@pytest.fixture
def entity_files(tmp_path):
    """entity2id.txt (ids shuffled against file order) and entity2vec.pt with one spare row."""
    ids = [(7 * k + 3) % (len(NAMES) + 1) for k in range(len(NAMES))]
    id_path = tmp_path / "entity2id.txt"
    id_path.write_text(f"{len(NAMES)}\n" + "".join(f"{n}\t{i}\n" for n, i in zip(NAMES, ids)), encoding="utf-8")
    vectors = torch.randn(len(NAMES) + 1, 6, generator=torch.Generator().manual_seed(0))
    vec_path = tmp_path / "entity2vec.pt"
    torch.save(vectors, vec_path)
    return id_path, vec_path, dict(zip(NAMES, ids)), vectors
