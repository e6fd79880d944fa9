"""Preprocessed knowledge tables (lex_id, pos_s, pos_e, token_len) read the way EasyNLP reads them."""

import random

import pytest
import torch

from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.errors import LatticeFormatError
from easynlp_artist.knowledge.lattice import (
    Lattice,
    LatticeStats,
    describe_entities,
    knowledge_from_lattices,
)
from easynlp_artist.knowledge.preprocess import read_knowledge_table

NAMES = ["南京", "南京市", "市长", "长江", "长江大桥", "大桥", "上海", "天安门", "天安门广场", "广场"]


@pytest.fixture
def store(tmp_path):
    """entity2id.txt + entity2vec.pt on disk; ids against file order; vector row i starts with i.

    Row 10 has a vector but no name, so "has a vector" and "is in the store" differ.
    """
    ids = list(range(len(NAMES)))[::-1]
    (tmp_path / "entity2id.txt").write_text(
        f"{len(NAMES)}\n" + "".join(f"{n}\t{i}\n" for n, i in zip(NAMES, ids)), encoding="utf-8"
    )
    vectors = torch.randn(len(NAMES) + 1, 3, generator=torch.Generator().manual_seed(0))
    vectors[:, 0] = torch.arange(len(NAMES) + 1, dtype=torch.float32)
    torch.save(vectors, tmp_path / "entity2vec.pt")
    return EntityStore.from_easynlp(tmp_path / "entity2id.txt", tmp_path / "entity2vec.pt")


def _write_table(path, lattices):
    lines = []
    for k, lat in enumerate(lattices, 1):
        cols = lat.to_columns()
        lines.append("\t".join([str(k), "文" * lat.token_len, cols["lex_id"], cols["pos_s"], cols["pos_e"], cols["token_len"]]))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _easynlp_cover(line: str, text_len: int, entity_num: int) -> list[tuple[int, int]]:
    """(token, entity id) pairs of a table line as EasyNLP's knowledge dataset builds them: the first
    entity_num ids in file order, each written over tokens pos_s..pos_e of a text_len-wide row (numpy
    slicing keeps the part inside). Written from the format, independently of the package."""
    _, _, lex_id, pos_s, pos_e, token_len = line.rstrip("\n").split("\t")
    n = int(token_len)
    ents = [int(x) for x in lex_id.split(" ")][:entity_num] if lex_id else []
    starts = [int(x) for x in pos_s.split(" ")][n:n + entity_num]
    ends = [int(x) for x in pos_e.split(" ")][n:n + entity_num]
    return sorted((t, ent) for ent, s, e in zip(ents, starts, ends) for t in range(s, e + 1) if t < text_len)


def _our_cover(know, row: int, text_len: int) -> list[tuple[int, int]]:
    cover = know.coverage(text_len)[row]  # (T, E)
    return sorted((t, int(know.vectors[row, j, 0])) for t, j in cover.nonzero().tolist())


def test_preprocessed_tables_keep_the_first_entity_num_in_file_order_and_clip_at_text_len(tmp_path, store):
    rng = random.Random(0)
    lattices = []
    for _ in range(40):
        n = rng.randint(1, 12)
        spans = [(s, rng.randint(s + 1, n)) for s in (rng.randrange(n) for _ in range(rng.randint(0, 9)))]
        ids = [rng.choice(store.ids) for _ in spans]
        lattices.append(Lattice(n, tuple(ids), tuple(s for s, _ in spans), tuple(e for _, e in spans)))
    path = tmp_path / "knowl.tsv"
    _write_table(path, lattices)
    rows = list(read_knowledge_table(path))
    lines = path.read_text(encoding="utf-8").splitlines()
    clipped = 0
    for text_len, entity_num in [(6, 4), (3, 2), (12, 9), (12, 3)]:
        stats = LatticeStats()
        know = knowledge_from_lattices([r.lattice for r in rows], store, text_len=text_len, entity_num=entity_num,
                                       stats=stats)
        for k, line in enumerate(lines):
            assert _our_cover(know, k, text_len) == _easynlp_cover(line, text_len, entity_num), (text_len, entity_num, k)
        assert stats.over_entity_num == sum(max(0, len(lat) - entity_num) for lat in lattices)
        clipped += stats.clipped
    assert clipped > 0  # the settings really cut spans at text_len


def test_select_file_order_and_clipping():
    lat = Lattice(8, (5, 1, 2, 3), (4, 0, 6, 1), (8, 2, 7, 3))  # file order, not sorted
    kept, past, over = lat.select(6, 3, priority="file")[:3]
    # the first three in file order; 5 is cut to [4, 6), 2 lies wholly past token 6, 3 is over entity_num
    assert (kept.entity_ids, kept.starts, kept.ends) == ((5, 1), (4, 0), (6, 2))
    assert (past, over) == (1, 1)
    # the other priorities also keep the inside part of a span crossing text_len (it used to be dropped)
    kept = lat.select(6, None, priority="longest")[0]
    assert (5, 4, 6) in zip(kept.entity_ids, kept.starts, kept.ends)
    with pytest.raises(ValueError, match="priority must be one of"):
        lat.select(6, 3, priority="first-come")


def test_knowledge_from_lattices_priority_is_an_argument(store):
    lat = Lattice(5, (0, 1), (3, 0), (4, 5))  # file order puts the short entity first
    first = knowledge_from_lattices([lat], store, text_len=5, entity_num=1)
    longest = knowledge_from_lattices([lat], store, text_len=5, entity_num=1, priority="longest")
    assert int(first.vectors[0, 0, 0]) == 0 and int(longest.vectors[0, 0, 0]) == 1


def test_ids_outside_the_store_name_file_line_and_column(tmp_path, store):
    path = tmp_path / "knowl.tsv"
    good = Lattice(2, (store.ids[0],), (0,), (2,)).to_columns()
    for bad_id in (10, 11):  # 10: a vector row without a name; 11: no row at all
        bad = Lattice(3, (store.ids[1], bad_id), (0, 1), (1, 3)).to_columns()
        lines = ["1\t上海\t" + "\t".join(good.values()), "2\t长江大\t" + "\t".join(bad.values())]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        rows = list(read_knowledge_table(path))
        with pytest.raises(LatticeFormatError, match=f"lex_id: entity id {bad_id} is not in the entity store") as info:
            knowledge_from_lattices([r.lattice for r in rows], store, text_len=4)
        column = lines[1].index(f" {bad_id}\t") + 2  # 1-based column of the id within its line
        assert (info.value.path, info.value.line, info.value.column) == (str(path), 2, column)
        assert str(info.value).startswith(f"{path}:2:{column}: lex_id: ")
        with pytest.raises(LatticeFormatError, match=f"entity id {bad_id} is not in the entity store"):
            list(read_knowledge_table(path, store=store))
        skipped: list[int] = []
        assert [r.line for r in read_knowledge_table(path, store=store, strict=False, bad_rows=skipped)] == [1]
        assert skipped == [2]
    # parsed without column positions (as from a schema-driven table reader): the column is named instead
    lat = Lattice.from_columns(*Lattice(2, (11,), (0,), (1,)).to_columns().values(), path="t.tsv", line=7)
    with pytest.raises(LatticeFormatError, match="entity id 11 is not") as info:
        lat.check_ids(store)
    assert (info.value.path, info.value.line, info.value.column) == ("t.tsv", 7, None)
    assert str(info.value).startswith("t.tsv:7: lex_id: ")
    with pytest.raises(LatticeFormatError, match="lex_id: entity id -1 is not in the entity store"):
        knowledge_from_lattices([Lattice(2, (-1,), (0,), (1,))], store)


def test_describe_entities_names_ids_from_the_store(tmp_path, store):
    nanjing, bridge, shanghai = (store.id_of(n) for n in ("南京", "长江大桥", "上海"))
    lats = [
        Lattice(7, (nanjing, bridge), (0, 3), (2, 7), path="t.tsv", line=1),
        Lattice(2),
        Lattice(2, (shanghai, 10), (0, 0), (2, 1), path="t.tsv", line=3),
    ]
    text = describe_entities(lats, store, limit=10)
    assert f"lex_id {nanjing} = 南京" in text and f"lex_id {bridge} = 长江大桥" in text
    assert f"lex_id {shanghai} = 上海" in text and "lex_id 10 = ?" in text  # no name: not in the store
    assert text.index("南京") < text.index("长江大桥") < text.index("上海")
    short = describe_entities(lats, store, limit=2)
    assert "长江大桥" in short and "上海" not in short
    assert describe_entities(lats[0], store) == describe_entities(lats[:1], store)
    assert text.startswith("t.tsv:1: ") and "; row 2: no entities; t.tsv:3: " in text
    assert describe_entities([Lattice(2, line=4)], store) == "line 4: no entities"
