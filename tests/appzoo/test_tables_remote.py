"""Tables on object storage through modelzoo.storage.open_uri, against a real S3 server (moto)."""

from __future__ import annotations

import pytest

from appzoo.distributed import run_sharded_predict
from appzoo.tables import AtomicWriter, Schema, TableDataset, read_table

SCHEMA = Schema.parse("idx:int:1,text:str:1")


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    from helpers.servers import s3_bucket

    return s3_bucket(s3_endpoint, monkeypatch, prefix="appzoo")


def _keys(client, name) -> list[str]:
    return sorted(obj["Key"] for obj in client.list_objects_v2(Bucket=name).get("Contents", []))


def test_write_then_stream_rows_from_s3(bucket):
    client, name = bucket
    uri = f"s3://{name}/data/train.tsv"
    with AtomicWriter(uri) as out:
        for i in range(3):
            out.write_row([i, f"文本 {i}"])
        assert _keys(client, name) == []
    rows = list(read_table(uri, SCHEMA))
    assert [(r.line_no, r.values) for r in rows] == [(i + 1, {"idx": i, "text": f"文本 {i}"}) for i in range(3)]
    with pytest.raises(ValueError, match="needs random access to a local file"):
        TableDataset(uri, SCHEMA)


def test_failed_write_publishes_nothing_and_predict_to_s3(bucket, tmp_path):
    client, name = bucket
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicWriter(f"s3://{name}/out.tsv") as out:
            out.write_row([1, "a"])
            raise RuntimeError("boom")
    assert _keys(client, name) == []
    table = tmp_path / "in.tsv"
    table.write_text("1\ta\n2\tb\n3\tc\n")
    count = run_sharded_predict(read_table(table, SCHEMA), lambda rows: [[r["idx"], r["text"] * 2] for r in rows],
                                f"s3://{name}/pred.tsv", batch_size=2)
    assert count == 3
    body = client.get_object(Bucket=name, Key="pred.tsv")["Body"].read().decode()
    assert body == "1\taa\n2\tbb\n3\tcc\n"
