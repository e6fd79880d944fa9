import logging
import os
import sys

import pytest
import torch

from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.errors import LatticeFormatError, TableFormatError
from easynlp_artist.knowledge.lattice import LatticeBuilder, knowledge_from_lattices
from easynlp_artist.knowledge.preprocess import main, preprocess_table, read_knowledge_table

INPUT = "1\t南京市长江大桥\timgA\n2\t上海的天安门广场\n3\t一个人\timgC\n4\t\n"
# Written by hand in the original format (EasyNLP preprocess_data_knowl.py): ids from conftest's
# entity2id.txt (南京 3, 南京市 10, 市长 4, 长江 11, 长江大桥 5, 大桥 12, 上海 0, 天安门 7, 天安门广场 1,
# 广场 8; the single character 江 is not matched); pos_e inclusive; no entity -> empty lex_id field.
EXPECTED = (
    "1\t南京市长江大桥\t3 10 4 11 5 12\t0 1 2 3 4 5 6 0 0 2 3 3 5\t0 1 2 3 4 5 6 1 2 3 4 6 6\t7\timgA\n"
    "2\t上海的天安门广场\t0 7 1 8\t0 1 2 3 4 5 6 7 0 3 3 6\t0 1 2 3 4 5 6 7 1 5 7 7\t8\n"
    "3\t一个人\t\t0 1 2\t0 1 2\t3\timgC\n"
    "4\t\t\t\t\t0\n"
)


@pytest.fixture
def builder(entity_files, tokenizer):
    return LatticeBuilder(EntityStore.from_easynlp(*entity_files[:2]), tokenizer)


@pytest.mark.parametrize("batch_rows", [1, 3, 256])
def test_output_matches_hand_written_original_table_byte_for_byte(tmp_path, builder, batch_rows):
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_text(INPUT, encoding="utf-8")
    stats = preprocess_table(src, out, builder, batch_rows=batch_rows, progress=False)
    assert out.read_bytes() == EXPECTED.encode("utf-8")
    assert (stats.rows, stats.written, stats.bad_rows) == (4, 4, [])
    assert (stats.lattice.texts, stats.lattice.matches) == (4, 10)  # the single character 江 is not matched
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_round_trip_through_original_format(tmp_path, builder):
    path = tmp_path / "knowl.tsv"
    path.write_text(EXPECTED, encoding="utf-8")
    rows = list(read_knowledge_table(path))
    assert [(r.line, r.idx, r.text, r.rest) for r in rows] == [
        (1, "1", "南京市长江大桥", ("imgA",)), (2, "2", "上海的天安门广场", ()), (3, "3", "一个人", ("imgC",)), (4, "4", "", ()),
    ]
    assert [r.lattice for r in rows] == builder.lattices([r.text for r in rows])
    lines = ["\t".join([r.idx, r.text, *r.lattice.to_columns().values(), *r.rest]) + "\n" for r in rows]
    assert "".join(lines) == EXPECTED
    know = knowledge_from_lattices([r.lattice for r in rows], builder.store, text_len=32, entity_num=10)
    assert know.ends[0].tolist() == [2, 3, 4, 5, 7, 7]  # inclusive ends became exclusive
    assert torch.equal(know.vectors[0], builder.store.vectors[[3, 10, 4, 11, 5, 12]])
    assert know.mask.sum(1).tolist() == [6, 4, 0, 0]


BAD_INPUT = "1\t上海\n2\t南京\tx\ty\n".encode() + b"3\t\xff\xfe\n" + "4\t长江\n5\n".encode()


def test_bad_rows_stop_by_default_or_go_to_a_rejects_file(tmp_path, builder, caplog):
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_bytes(BAD_INPUT)
    with pytest.raises(TableFormatError) as info:  # as predict does: the first bad row stops the run
        preprocess_table(src, out, builder, progress=False)
    assert (info.value.path, info.value.line, info.value.column) == (str(src), 2, 1)
    assert not out.exists() and not os.path.exists(f"{out}.rejects.tsv")
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []

    stats = preprocess_table(src, out, builder, skip_bad_rows=True, progress=False)
    assert stats.bad_rows == [2, 3, 5] and stats.written == 2 and stats.rows == 5
    assert out.read_text(encoding="utf-8").splitlines()[1].startswith("4\t长江\t11\t")
    rejects = open(f"{out}.rejects.tsv", encoding="utf-8").read().splitlines()
    assert [r.split("\t") for r in rejects] == [
        ["2", f"{src}:2:1: expected 2 or 3 tab-separated fields, found 4"],
        ["3", f"{src}:3: invalid UTF-8 at byte 3 (invalid start byte)"],
        ["5", f"{src}:5:1: expected 2 or 3 tab-separated fields, found 1"],
    ]
    assert f"{src}:2:1: expected 2 or 3 tab-separated fields, found 4" in caplog.text
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_warnings_do_not_tangle_with_the_progress_bar(tmp_path, builder, capsys):
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_bytes(BAD_INPUT)
    handler = logging.StreamHandler(sys.stderr)  # what logging.basicConfig in the CLI sets up
    logging.getLogger().addHandler(handler)
    try:
        preprocess_table(src, out, builder, skip_bad_rows=True, progress=True)
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "%|" in err  # the bar was drawn
    for message in ("skipping bad row: " + str(src) + ":2:1", "skipping bad row: " + str(src) + ":5:1"):
        before = err[: err.index(message)]
        # the bar is cleared before a message is written: only blanks since the last line start
        assert before.replace("\r", "\n").rsplit("\n", 1)[-1].strip() == "", repr(before[-80:])


def test_read_knowledge_table_errors_name_line_and_column(tmp_path):
    path = tmp_path / "knowl.tsv"
    path.write_text("1\t上海\t0\t0 1 0\t0 1 1\t2\n2\t长江\t4\t0 1 0\t0 1 x\t2\n", encoding="utf-8")
    rows = read_knowledge_table(path)
    assert next(rows).lattice.entity_ids == (0,)
    with pytest.raises(LatticeFormatError, match="pos_e: expected a non-negative integer, found 'x'") as info:
        next(rows)
    # line 2 = "2\t长江\t4\t0 1 0\t0 1 x\t2": pos_e starts at column 14, 'x' is its 5th character
    assert (info.value.path, info.value.line, info.value.column) == (str(path), 2, 18)
    bad: list[int] = []
    assert [r.line for r in read_knowledge_table(path, strict=False, bad_rows=bad)] == [1]
    assert bad == [2]


def test_cli(tmp_path, entity_files, vocab_path, capsys):
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_text(INPUT, encoding="utf-8")
    id_path, vec_path = entity_files[:2]
    argv = ["--input", str(src), "--output", str(out), "--vocab", str(vocab_path), "--no_progress"]
    assert main([*argv, "--entity_map", str(id_path), "--entity_emb_path", str(vec_path)]) == 0
    assert out.read_text(encoding="utf-8") == EXPECTED
    assert "wrote 4 rows" in capsys.readouterr().err
    EntityStore.from_easynlp(id_path, vec_path).save(tmp_path / "ents")
    os.remove(out)
    assert main([*argv, "--entity_dir", str(tmp_path / "ents")]) == 0
    assert out.read_text(encoding="utf-8") == EXPECTED
    id_path.write_text("h\n南京\tseven\n", encoding="utf-8")
    assert main([*argv, "--entity_map", str(id_path), "--entity_emb_path", str(vec_path)]) == 1
    assert f"{id_path}:2:4: entity id must be a non-negative integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv)


def test_cli_takes_easynlp_flag_names_and_needs_no_vectors(tmp_path, entity_files, vocab_path, capsys):
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_text(INPUT, encoding="utf-8")
    os.remove(entity_files[1])  # entity2vec.pt: preprocessing only needs the names and ids
    argv = ["--input_file", str(src), "--output_file", str(out), "--entity_map_file", str(entity_files[0]),
            "--vocab", str(vocab_path), "--no_progress"]
    assert main(argv) == 0
    assert out.read_text(encoding="utf-8") == EXPECTED
    assert "wrote 4 rows" in capsys.readouterr().err


def test_cli_stops_at_the_first_bad_row_unless_skip_bad_rows(tmp_path, entity_files, vocab_path, capsys):
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_bytes(BAD_INPUT)
    argv = ["--input", str(src), "--output", str(out), "--entity_map", str(entity_files[0]),
            "--vocab", str(vocab_path), "--no_progress"]
    assert main(argv) == 1
    assert f"error: {src}:2:1: expected 2 or 3 tab-separated fields, found 4" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--skip_bad_rows"]) == 0
    err = capsys.readouterr().err
    assert "wrote 2 rows" in err and f"skipped 3 bad rows (see {out}.rejects.tsv)" in err
    assert [r.split("\t")[0] for r in open(f"{out}.rejects.tsv", encoding="utf-8")] == ["2", "3", "5"]


# Without truncation a preprocessed table read with the builder's priority gives the builder's batch. (With
# truncation they differ on purpose: on the fly a match must lie wholly inside text_len, while a table's span
# keeps its part inside, as EasyNLP read it; see test_preprocessed_tables.py.)
@pytest.mark.parametrize("text_len, entity_num, priority", [(32, 10, "longest"), (32, 2, "longest"), (32, 3, "position")])
def test_preprocessed_table_gives_the_same_batch_as_building_on_the_fly(tmp_path, builder, text_len, entity_num, priority):
    src, out = tmp_path / "in.tsv", tmp_path / "out.tsv"
    src.write_text(INPUT + "5\t天安门广场上海南京市长江大桥华为\n", encoding="utf-8")
    preprocess_table(src, out, builder, progress=False)
    rows = list(read_knowledge_table(out))
    from easynlp_artist.knowledge.lattice import LatticeConfig, LatticeStats

    fly = LatticeBuilder(builder.store, builder.tokenizer, LatticeConfig(text_len=text_len, entity_num=entity_num, priority=priority))
    _, live, live_stats = fly.build([r.text for r in rows])
    stats = LatticeStats()
    read = knowledge_from_lattices(
        [r.lattice for r in rows], builder.store, text_len=text_len, entity_num=entity_num, priority=priority, stats=stats
    )
    for name in ("vectors", "starts", "ends", "mask"):
        assert torch.equal(getattr(read, name), getattr(live, name)), name
    assert (stats.kept, stats.past_text_len, stats.over_entity_num) == (
        live_stats.kept, live_stats.past_text_len, live_stats.over_entity_num
    )
    if entity_num < 10:  # the small settings really drop entities, so the counts are compared, not just zeros
        assert stats.over_entity_num > 0
