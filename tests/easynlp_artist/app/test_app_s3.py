"""Tables in object storage: a real S3 server (moto, loopback) serves the app's inputs and outputs."""

import json

import pytest
from helpers.servers import s3_bucket
from helpers.tables import write_world
from helpers.tiny import randomize_, tiny_artist_config

from appzoo.cli import main as easynlp
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import load_tokenizer


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    return s3_bucket(s3_endpoint, monkeypatch, prefix="tables")


def test_evaluate_and_predict_with_tables_in_s3(bucket, tmp_path):
    client, name = bucket
    w = write_world(tmp_path / "w")
    tok = load_tokenizer(w["vocab"])
    ckpt = ArtistPipeline(randomize_(ArtistModel(tiny_artist_config(len(tok), text_len=8))), tok).save_pretrained(
        tmp_path / "ckpt"
    )
    for split in ("valid", "test"):
        client.put_object(Bucket=name, Key=f"in/{split}.tsv", Body=w[split].read_bytes())

    metrics = tmp_path / "m.json"
    assert easynlp(["--app_name=text2image_artist", "--mode=evaluate", f"--tables=s3://{name}/in/valid.tsv",
                    f"--checkpoint_dir={ckpt}", f"--outputs={metrics}"]) == 0
    assert json.loads(metrics.read_text())["num_samples"] == 4

    local, remote = tmp_path / "pred.tsv", f"s3://{name}/out/pred.tsv"
    for table, out in ((w["test"], str(local)), (f"s3://{name}/in/test.tsv", remote)):
        assert easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={out}",
                        f"--checkpoint_dir={ckpt}", "--user_defined_parameters=seed=4"]) == 0
    body = client.get_object(Bucket=name, Key="out/pred.tsv")["Body"].read()
    assert body == local.read_bytes() and body.count(b"\n") == 5
