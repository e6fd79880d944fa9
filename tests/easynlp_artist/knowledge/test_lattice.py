import pytest
import torch

from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.errors import LatticeFormatError
from easynlp_artist.knowledge.lattice import (
    Lattice,
    LatticeBuilder,
    LatticeConfig,
    LexiconMatcher,
    Match,
    knowledge_from_lattices,
    normalize,
)

NAMES = ["南京", "南京市", "市长", "长江", "长江大桥", "大桥", "iPhone", "phone", "华为", "上海", "天安门",
         "天安门广场", "广场", "苹果", "人民", "江", "New York"]

BRIDGE = "南京市长江大桥"


def make_store(names, dim=4, seed=0):
    ids = list(range(len(names)))[::-1]  # ids against file order, so that an id/row mix-up shows
    vectors = torch.randn(len(names), dim, generator=torch.Generator().manual_seed(seed))
    return EntityStore(names, ids, vectors)


def brute_force_matches(text, names_to_ids, min_chars):
    """Every substring that is a (normalised) name: the definition of the lattice, written independently."""
    keys = {}
    for name, i in names_to_ids.items():
        keys.setdefault(name.lower(), i)
    return sorted(
        Match(s, e, keys[text[s:e].lower()])
        for s in range(len(text))
        for e in range(s + min_chars, len(text) + 1)
        if text[s:e].lower() in keys
    )


def test_normalize_is_one_to_one_per_character():
    text = "ＩＰｈｏｎｅ１２　Café ÀB 南京"
    out = normalize(text)
    assert out == "iphone12 cafe ab 南京"
    assert len(out) == len(text)
    assert len(normalize("İ")) == 1  # lower() would give two characters


@pytest.mark.parametrize("min_chars", [1, 2, 3])
def test_matcher_finds_overlapping_and_nested_matches(min_chars):
    store = make_store(NAMES)
    matcher = LexiconMatcher.from_store(store, min_chars=min_chars)
    for text in [BRIDGE, "我在天安门广场和上海的南京市长江大桥", "长江长江", ""]:
        assert matcher.matches(text) == brute_force_matches(text, dict(store.items()), min_chars)
    bridge = {(m.start, m.end) for m in matcher.matches(BRIDGE)}
    if min_chars == 2:  # nested (南京 ⊂ 南京市, 长江 ⊂ 长江大桥) and overlapping (南京市 / 市长)
        assert bridge == {(0, 2), (0, 3), (2, 4), (3, 5), (3, 7), (5, 7)}
    assert matcher.skipped_short == sum(len(n) < min_chars for n in NAMES)


def test_matcher_case_width_collisions_and_empty():
    matcher = LexiconMatcher([("iPhone", 3), ("IPHONE", 4), ("ab", 7)])
    assert matcher.collisions == 1
    assert matcher.matches("买ＩＰＨＯＮＥ和AB") == [Match(1, 7, 3), Match(8, 10, 7)]
    assert LexiconMatcher([]).matches("abc") == []


MIXED_NAMES = ["iPhone", "phone", "华为", "P40", "40", "New York", "天安门广场", "天安门", "iphone12"]
MIXED = "我的IPhone12和华为P40"  # 我 的 iphone ##12 和 华 为 p ##40


def spans_by_name(lattice, store):
    names = {i: n for n, i in store.items()}
    return sorted((names[i], s, e) for i, s, e in zip(lattice.entity_ids, lattice.starts, lattice.ends))


def test_alignment_strict_on_mixed_text(tokenizer):
    store = make_store(MIXED_NAMES)
    builder = LatticeBuilder(store, tokenizer)
    enc = tokenizer([MIXED], add_special_tokens=False, return_offsets_mapping=True)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == ["我", "的", "iphone", "##12", "和", "华", "为", "p", "##40"]
    lat = builder.lattices([MIXED])[0]
    assert lat.token_len == 9
    # "phone" starts inside the token "iphone": dropped; "40" starts where "##40" starts: kept
    assert spans_by_name(lat, store) == [("40", 8, 9), ("P40", 7, 9), ("iPhone", 2, 3), ("iphone12", 2, 4), ("华为", 5, 7)]
    lat = builder.lattices(["new york 天安门广场"])[0]
    assert spans_by_name(lat, store) == [("New York", 0, 2), ("天安门", 2, 5), ("天安门广场", 2, 7)]


def test_alignment_expand(tokenizer):
    store = make_store(MIXED_NAMES)
    builder = LatticeBuilder(store, tokenizer, LatticeConfig(alignment="expand"))
    lat = builder.lattices([MIXED])[0]
    assert ("phone", 2, 3) in spans_by_name(lat, store)


def test_truncation_and_priority(tokenizer):
    store = make_store(NAMES)
    bridge = {"南京": (0, 2), "南京市": (0, 3), "市长": (2, 4), "长江": (3, 5), "长江大桥": (3, 7), "大桥": (5, 7)}
    for priority, expected in [("longest", ["南京", "南京市", "长江大桥"]), ("position", ["南京", "南京市", "市长"])]:
        builder = LatticeBuilder(store, tokenizer, LatticeConfig(entity_num=3, priority=priority))
        enc, know, stats = builder.build([BRIDGE, "上海"])
        assert (stats.kept, stats.over_entity_num, stats.past_text_len) == (4, 3, 0)
        assert know.vectors.shape == (2, 3, 4)
        assert know.mask.tolist() == [[True] * 3, [True, False, False]]
        assert know.starts[0].tolist() == [bridge[n][0] for n in expected]
        assert know.ends[0].tolist() == [bridge[n][1] for n in expected]
        ids = [store.id_of(n) for n in expected]
        assert torch.equal(know.vectors[0], store.vectors[ids])
        assert torch.equal(know.vectors[1, 0], store.vectors[store.id_of("上海")])
        assert torch.equal(know.vectors[1, 1:], torch.zeros(2, 4))

    builder = LatticeBuilder(store, tokenizer, LatticeConfig(text_len=4))
    enc, know, stats = builder.build([BRIDGE])
    assert enc.input_ids.shape == (1, 4) and enc.truncated == [True]
    assert stats.past_text_len == 3  # 长江, 长江大桥, 大桥 end after token 4
    assert sorted(zip(know.starts[0].tolist(), know.ends[0].tolist())) == [(0, 2), (0, 3), (2, 4)]
    cover = know.coverage(4)[0]  # (T, E): token 3 (长) is covered by 市长 only
    assert cover[3].sum() == 1


def test_build_with_empty_store(tokenizer):
    with pytest.warns(UserWarning):
        store = EntityStore([], [], torch.zeros(2, 5))
    enc, know, stats = LatticeBuilder(store, tokenizer).build([BRIDGE, "上海"])
    assert know.vectors.shape == (2, 0, 5) and stats.matches == 0


def test_jieba_filter_drops_matches_across_words(tokenizer):
    store = make_store(NAMES)
    builder = LatticeBuilder(store, tokenizer, LatticeConfig(use_jieba_filter=True))
    stats_lat = builder.lattices([BRIDGE])[0]
    kept = {n for n, _, _ in spans_by_name(stats_lat, store)}
    assert kept == {"南京", "南京市", "长江", "长江大桥", "大桥"}  # 市长 cuts through 南京市/长江大桥


def test_lattice_columns_round_trip():
    lat = Lattice(7, (5, 9, 1), (0, 0, 3), (2, 3, 7))
    cols = lat.to_columns()
    assert cols == {"lex_id": "5 9 1", "pos_s": "0 1 2 3 4 5 6 0 0 3", "pos_e": "0 1 2 3 4 5 6 1 2 6", "token_len": "7"}
    assert Lattice.from_columns(**cols) == lat
    empty = Lattice(3)
    assert empty.to_columns() == {"lex_id": "", "pos_s": "0 1 2", "pos_e": "0 1 2", "token_len": "3"}
    assert Lattice.from_columns(**empty.to_columns()) == empty
    assert Lattice(0).to_columns() == {"lex_id": "", "pos_s": "", "pos_e": "", "token_len": "0"}
    assert Lattice.from_columns("", "", "", "0") == Lattice(0)


@pytest.mark.parametrize(
    "cols, field, offset, message",
    [
        (("", "0 1", "0 1", "two"), "token_len", 0, "non-negative integer"),
        (("4 x", "0 1 0 1", "0 1 0 1", "2"), "lex_id", 2, "non-negative integer, found 'x'"),
        (("4", "0 1 0", "0 1", "2"), "pos_e", 0, "expected 3 positions"),
        (("4", "0 1", "0 1 0", "2"), "pos_s", 0, "expected 3 positions"),
        (("4", "0 2 0", "0 1 0", "2"), "pos_s", 2, "position 2 must be 1"),
        (("4", "0 1 2", "0 1 1", "2"), "pos_s", 4, r"starts at 2, outside \[0, 2\)"),
        (("4", "0 1 1", "0 1 0", "2"), "pos_e", 4, r"ends at 0, outside \[1, 2\)"),
        (("4", "0 1 0", "0 1 -1", "2"), "pos_e", 4, "non-negative integer, found '-1'"),
    ],
)
def test_from_columns_errors_name_file_line_column(cols, field, offset, message):
    columns = {"lex_id": 10, "pos_s": 20, "pos_e": 30, "token_len": 40}
    with pytest.raises(LatticeFormatError, match=message) as info:
        Lattice.from_columns(*cols, path="t.tsv", line=5, columns=columns)
    err = info.value
    assert (err.path, err.line, err.column) == ("t.tsv", 5, columns[field] + offset)
    assert str(err).startswith(f"t.tsv:5:{columns[field] + offset}: {field}: ")


def test_knowledge_from_file_lattices_clips_spans_past_text_len():
    store = make_store(["ab", "cd", "ef", "gh"], dim=3)
    lats = [Lattice(7, (0, 1, 2, 3), (0, 2, 4, 5), (2, 5, 6, 7)), Lattice(2)]
    from easynlp_artist.knowledge.lattice import LatticeStats

    stats = LatticeStats()
    know = knowledge_from_lattices(lats, store, text_len=5, entity_num=10, stats=stats)
    # entity 2 over tokens 4-5 keeps token 4 (EasyNLP sliced at text_len); entity 3 starts past it
    assert (stats.past_text_len, stats.clipped, stats.kept) == (1, 1, 3)
    assert know.starts.tolist() == [[0, 2, 4], [0, 0, 0]] and know.ends.tolist() == [[2, 5, 5], [0, 0, 0]]
    assert torch.equal(know.vectors[0], store.vectors[[0, 1, 2]])
    assert know.mask.tolist() == [[True, True, True], [False, False, False]]
    with pytest.raises(LatticeFormatError, match="entity id 7 is not in the entity store"):
        knowledge_from_lattices([Lattice(2, (7,), (0,), (1,))], store)


def test_config_and_lattice_validation():
    with pytest.raises(ValueError, match="alignment must be one of"):
        LatticeConfig(alignment="loose")
    with pytest.raises(ValueError, match="priority must be one of"):
        LatticeConfig(priority="random")
    with pytest.raises(ValueError, match="text_len must be positive"):
        LatticeConfig(text_len=0)
    with pytest.raises(ValueError, match=r"span \[2, 2\)"):
        Lattice(3, (1,), (2,), (2,))


def test_matcher_and_config_limits():
    with pytest.raises(ValueError, match="entity id 2147483648 of 'ab' is outside"):
        LexiconMatcher([("ab", 2**31)])
    with pytest.raises(ValueError, match="longer than 65535 characters"):
        LexiconMatcher([("a" * 70000, 1)])
    with pytest.raises(ValueError, match="min_chars must be >= 1"):
        LatticeConfig(min_chars=0)
    with pytest.raises(ValueError, match="entity_num must be >= 0"):
        LatticeConfig(entity_num=-1)
    matcher = LexiconMatcher([("南京", 5)])
    assert matcher.spans("在南京") == [(1, 3, 5)] and matcher.matches("在南京") == [Match(1, 3, 5)]
