import logging

import pytest
import torch
from safetensors.torch import save_file

from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.errors import EntityFileError


def test_from_easynlp_reads_names_ids_and_vectors(entity_files):
    id_path, vec_path, name_to_id, vectors = entity_files
    store = EntityStore.from_easynlp(id_path, vec_path)
    assert dict(store.items()) == name_to_id
    assert store.dim == 6 and store.num_vectors == vectors.shape[0]
    assert torch.equal(store.vectors, vectors)
    assert torch.equal(store.vectors_for([name_to_id["南京"], 0]), vectors[[name_to_id["南京"], 0]])
    assert store.id_of("长江大桥") == name_to_id["长江大桥"]


def test_both_formats_round_trip(entity_files, tmp_path):
    store = EntityStore.from_easynlp(*entity_files[:2])
    store.save(tmp_path / "ours")
    again = EntityStore.from_dir(tmp_path / "ours")
    assert again.names == store.names and again.ids == store.ids and torch.equal(again.vectors, store.vectors)
    id_path, vec_path = again.save_easynlp(tmp_path / "orig")
    third = EntityStore.from_easynlp(id_path, vec_path)
    assert third.names == store.names and third.ids == store.ids and torch.equal(third.vectors, store.vectors)
    assert EntityStore.load(tmp_path / "ours").names == store.names
    assert EntityStore.load(tmp_path / "orig").ids == store.ids
    assert EntityStore.load(vec_path, entity_map=id_path).ids == store.ids


def test_empty_dictionary_warns(tmp_path):
    (tmp_path / "entity2id.txt").write_text("0\n", encoding="utf-8")
    torch.save(torch.zeros(3, 4), tmp_path / "entity2vec.pt")
    with pytest.warns(UserWarning, match="no entity names"):
        store = EntityStore.from_easynlp(tmp_path / "entity2id.txt", tmp_path / "entity2vec.pt")
    assert len(store) == 0 and store.dim == 4


@pytest.mark.parametrize(
    "body, line, column, message",
    [
        ("南京\t0\n长江\n", 3, 1, "found 1 field"),
        ("南京\t0\n长江\t1\t2\n", 3, 1, "found 3 field"),
        ("南京\t0\n长江\tx1\n", 3, 4, "non-negative integer"),
        ("南京\t0\n长江\t-1\n", 3, 4, "non-negative integer"),
        ("南京\t0\n\t1\n", 3, 1, "empty entity name"),
        # 南京's repeat keeps its last id (1, line 3), which 长江 on line 4 then repeats
        ("南京\t0\n南京\t1\n长江\t1\n", 4, 4, "duplicate entity id 1 .first at line 3."),
        ("南京\t0\n长江\t0\n", 3, 4, "duplicate entity id 0 .first at line 2."),
        ("南京\t0\n长江\t3\n", 3, 4, r"outside the vector table \[0, 3\)"),
        ("南京\t0\n\n", 3, 1, "found 1 field"),
    ],
)
def test_entity2id_errors_name_file_line_column(tmp_path, body, line, column, message):
    id_path = tmp_path / "entity2id.txt"
    id_path.write_text("header\n" + body, encoding="utf-8")
    torch.save(torch.zeros(3, 2), tmp_path / "entity2vec.pt")
    with pytest.raises(EntityFileError, match=message) as info:
        EntityStore.from_easynlp(id_path, tmp_path / "entity2vec.pt")
    err = info.value
    assert (err.path, err.line, err.column) == (str(id_path), line, column)
    assert str(err).startswith(f"{id_path}:{line}:{column}: ")


def test_entity2id_repeated_names_keep_the_last_id_with_one_warning(tmp_path, caplog):
    # EasyNLP reads entity2id.txt into a dict: a repeated name keeps its last id. Here 南京 repeats
    # with ids 0 -> 2 -> 4 and 长江 with 5 -> 1 (so the overridden ids 0, 2, 5 may be reused or out of range).
    lines = ["南京\t0", "长江\t5", "南京\t2", "上海\t0", "南京\t4", "长江\t1"]
    lines += [f"名{k}\t{6 + k}" for k in range(4)] + [f"名{k}\t{6 + k}" for k in range(4)]  # exact repeats
    id_path = tmp_path / "entity2id.txt"
    id_path.write_text("14\n" + "".join(line + "\n" for line in lines), encoding="utf-8")
    torch.save(torch.randn(10, 3), tmp_path / "entity2vec.pt")
    with caplog.at_level(logging.WARNING, logger="easynlp_artist.knowledge.entities"):
        store = EntityStore.from_easynlp(id_path, tmp_path / "entity2vec.pt")
    assert dict(store.items()) == {"南京": 4, "长江": 1, "上海": 0, **{f"名{k}": 6 + k for k in range(4)}}
    assert store.names[:3] == ["南京", "长江", "上海"]  # a name keeps the place of its first line
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(id_path) in message and "7 repeated entity name" in message
    assert "lines 4, 6, 7, 12, 13, ..." in message and "last id" in message


def test_entity2id_invalid_utf8(tmp_path):
    id_path = tmp_path / "entity2id.txt"
    id_path.write_bytes("h\n南京\t0\n".encode() + b"ab\xff\t1\n")
    torch.save(torch.zeros(3, 2), tmp_path / "entity2vec.pt")
    with pytest.raises(EntityFileError, match="invalid UTF-8") as info:
        EntityStore.from_easynlp(id_path, tmp_path / "entity2vec.pt")
    assert (info.value.line, info.value.column) == (3, 3)


@pytest.mark.parametrize(
    "vectors, message",
    [
        (torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), "row 1 .* NaN or inf"),
        (torch.tensor([[0.0, float("inf")], [0.0, 0.0]]), "row 0 .* NaN or inf"),
        (torch.zeros(4), "2-D tensor"),
        (torch.zeros(2, 2, dtype=torch.long), "float tensor"),
        ({"weight": torch.zeros(2, 2)}, "expected a tensor"),
    ],
)
def test_entity2vec_errors_name_file(tmp_path, vectors, message):
    (tmp_path / "entity2id.txt").write_text("h\n南京\t0\n", encoding="utf-8")
    vec_path = tmp_path / "entity2vec.pt"
    torch.save(vectors, vec_path)
    with pytest.raises(EntityFileError, match=message) as info:
        EntityStore.from_easynlp(tmp_path / "entity2id.txt", vec_path)
    assert info.value.path == str(vec_path)


def test_entity2vec_not_a_torch_file(tmp_path):
    (tmp_path / "entity2id.txt").write_text("h\n南京\t0\n", encoding="utf-8")
    (tmp_path / "entity2vec.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EntityFileError, match="cannot read a tensor"):
        EntityStore.from_easynlp(tmp_path / "entity2id.txt", tmp_path / "entity2vec.pt")


def _ours(path, names, ids, vectors=None, extra=None):
    path.mkdir()
    tensors = {"vectors": torch.zeros(3, 2) if vectors is None else vectors, "ids": torch.tensor(ids)}
    tensors.update(extra or {})
    save_file(tensors, path / "entities.safetensors")
    (path / "entity_names.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")


@pytest.mark.parametrize(
    "names, ids, line, message",
    [
        (["南京", "长江", "南京"], [0, 1, 2], 3, "duplicate entity name '南京' .first at line 1."),
        (["南京", "长江"], [1, 1], 2, "duplicate entity id 1"),
        (["南京", "长江"], [0, 5], 2, "outside the vector table"),
        (["南京", ""], [0, 1], 2, "empty entity name"),
        (["南京"], [0, 1], None, "1 names for 2 ids"),
    ],
)
def test_our_format_errors(tmp_path, names, ids, line, message):
    _ours(tmp_path / "e", names, ids)
    with pytest.raises(EntityFileError, match=message) as info:
        EntityStore.from_dir(tmp_path / "e")
    assert info.value.line == line
    assert info.value.path == str(tmp_path / "e" / "entity_names.txt")


def test_our_format_missing_tensor(tmp_path):
    d = tmp_path / "e"
    d.mkdir()
    save_file({"vectors": torch.zeros(2, 2)}, d / "entities.safetensors")
    (d / "entity_names.txt").write_text("", encoding="utf-8")
    with pytest.raises(EntityFileError, match="missing tensor 'ids'"):
        EntityStore.from_dir(d)


def test_constructor_validates():
    with pytest.raises(EntityFileError, match="contains '\\\\t'"):
        EntityStore(["a\tb"], [0], torch.zeros(1, 2))
    with pytest.raises(EntityFileError, match="outside the vector table"):
        EntityStore(["ab"], [1], torch.zeros(1, 2))
    store = EntityStore(["ab"], [0], torch.ones(1, 2))
    with pytest.raises(ValueError, match="entity id 4 is outside"):
        store.vectors_for([0, 4])
    with pytest.raises(FileNotFoundError, match="no entities.safetensors"):
        EntityStore.load("/nonexistent-dir")


def test_our_format_corrupt_files(tmp_path):
    d = tmp_path / "e"
    _ours(d, ["南京"], [0])
    (d / "entity_names.txt").write_bytes(b"\xff\n")
    with pytest.raises(EntityFileError, match="invalid UTF-8") as info:
        EntityStore.from_dir(d)
    assert (info.value.line, info.value.column) == (1, 1)
    save_file({"vectors": torch.zeros(2, 2), "ids": torch.zeros(1)}, d / "entities.safetensors")
    with pytest.raises(EntityFileError, match="'ids' must be a 1-D integer tensor"):
        EntityStore.from_dir(d)
    (d / "entities.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(EntityFileError, match="cannot read safetensors"):
        EntityStore.from_dir(d)
