"""Tables in object storage: a real S3 server (moto, loopback) serves the app's inputs and outputs."""

import json

import boto3
import pytest
from helpers.servers import moto_s3_server
from helpers.tables import write_world
from helpers.tiny import randomize_, tiny_artist_config

from appzoo.cli import main as easynlp
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import load_tokenizer


@pytest.fixture
def bucket(monkeypatch):
    with moto_s3_server() as endpoint:
        monkeypatch.setenv("EASYNLP_S3_ENDPOINT", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="tables")
        yield client


def test_evaluate_and_predict_with_tables_in_s3(bucket, tmp_path):
    w = write_world(tmp_path / "w")
    tok = load_tokenizer(w["vocab"])
    ckpt = ArtistPipeline(randomize_(ArtistModel(tiny_artist_config(len(tok), text_len=8))), tok).save_pretrained(
        tmp_path / "ckpt"
    )
    for name in ("valid", "test"):
        bucket.put_object(Bucket="tables", Key=f"in/{name}.tsv", Body=w[name].read_bytes())

    metrics = tmp_path / "m.json"
    assert easynlp(["--app_name=text2image_artist", "--mode=evaluate", "--tables=s3://tables/in/valid.tsv",
                    f"--checkpoint_dir={ckpt}", f"--outputs={metrics}"]) == 0
    assert json.loads(metrics.read_text())["num_samples"] == 4

    local, remote = tmp_path / "pred.tsv", "s3://tables/out/pred.tsv"
    for table, out in ((w["test"], str(local)), ("s3://tables/in/test.tsv", remote)):
        assert easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={out}",
                        f"--checkpoint_dir={ckpt}", "--user_defined_parameters=seed=4"]) == 0
    body = bucket.get_object(Bucket="tables", Key="out/pred.tsv")["Body"].read()
    assert body == local.read_bytes() and body.count(b"\n") == 5
