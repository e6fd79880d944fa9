"""resolve(): downloads from real loopback servers, verification, resume, retries, offline, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers.range_server import closed_port, write_random

import modelzoo

from .conftest import checkpoint_files, make_tgz, sha256, tree, write_index

pytestmark = pytest.mark.filterwarnings("ignore::modelzoo.UnverifiedDownloadWarning")


def _serve_tgz(served, name: str = "ckpt.tgz") -> tuple[str, Path]:
    archive = make_tgz(served.root / name, checkpoint_files())
    return served.url(name), archive


def _register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: dict) -> Path:
    index = write_index(tmp_path / "user-index.json", models)
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(index))
    return index


def test_local_directory_resolves_to_itself(zoo: Path, tmp_path: Path):
    ckpt = tmp_path / "my-ckpt"
    ckpt.mkdir()
    assert modelzoo.resolve(str(ckpt)) == ckpt
    assert modelzoo.resolve(ckpt.as_uri()) == ckpt
    assert not zoo.exists(), "a local directory must not touch the cache"


def test_http_archive_download_verify_install_and_cached_hit(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": sha256(archive),
                                                   "size": archive.stat().st_size}})
    path = modelzoo.resolve("org/tiny")
    assert path == zoo / "models" / "org--tiny"
    for name, data in checkpoint_files().items():  # the single top-level folder is hoisted
        assert (path / name).read_bytes() == data
    meta = json.loads((path / ".modelzoo.json").read_text())
    assert meta["verified"] is True and meta["downloads_sha256"][uri] == sha256(archive)
    assert meta["files_sha256"]["vocab.txt"] == sha256(checkpoint_files()["vocab.txt"])
    assert list((zoo / "tmp").iterdir()) == [], "partial files and staging must be cleaned up"
    assert modelzoo.resolve("org/tiny") == path
    assert len(served.gets("ckpt.tgz")) == 1, "a cached name must not be downloaded again"


def test_files_list_entry_and_changed_entry_reinstalls(zoo, served, tmp_path, monkeypatch):
    files = checkpoint_files()
    for name, data in files.items():
        (served.root / name).write_bytes(data)
    models = {"flat": {"files": [{"path": f"sub/{n}" if n == "vocab.txt" else n, "uri": served.url(n),
                                  "sha256": sha256(d), "size": len(d)} for n, d in files.items()]}}
    _register(tmp_path, monkeypatch, models)
    path = modelzoo.resolve("flat")
    assert (path / "sub" / "vocab.txt").read_bytes() == files["vocab.txt"]
    assert (path / "config.json").read_bytes() == files["config.json"]
    (served.root / "config.json").write_bytes(b'{"v": 2}')
    models["flat"]["files"][0].update(sha256=sha256(b'{"v": 2}'), size=len(b'{"v": 2}'))
    _register(tmp_path, monkeypatch, models)
    assert (modelzoo.resolve("flat") / "config.json").read_bytes() == b'{"v": 2}'
    assert len(served.gets("config.json")) == 2


def test_corrupted_object_checksum_error_nothing_installed(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    good = sha256(archive)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": good}})
    modelzoo.resolve("org/tiny")
    before = tree(zoo / "models")
    # The object on the server is corrupted (one byte flipped), while the index moves to a new version.
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": sha256(b"the new release")}})
    with pytest.raises(modelzoo.ChecksumError, match="sha256 mismatch") as err:
        modelzoo.resolve("org/tiny")
    assert "org/tiny" in str(err.value) and uri in str(err.value)
    assert tree(zoo / "models") == before, "the installed copy must be unchanged"
    assert list((zoo / "tmp").iterdir()) == [], "the corrupt download must be discarded"


def test_corrupted_fresh_download_installs_nothing(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": "0" * 64}})
    with pytest.raises(modelzoo.ChecksumError):
        modelzoo.resolve("org/tiny")
    assert tree(zoo / "models") == {} and tree(zoo / "tmp") == {}


def test_size_mismatch_is_refused(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "size": archive.stat().st_size + 1}})
    with pytest.raises(modelzoo.ChecksumError, match="bytes"):
        modelzoo.resolve("org/tiny")
    assert tree(zoo / "models") == {}


def test_dropped_connection_next_resolve_resumes(zoo, served, tmp_path, monkeypatch):
    blob = write_random(served.root / "model.safetensors", 3 * 1024 * 1024 + 17)
    size, half = blob.stat().st_size, blob.stat().st_size // 2
    served.faults.drop_after["/model.safetensors"] = half
    monkeypatch.setenv("EASYNLP_MODELZOO_RETRIES", "1")  # no retry inside this resolve: it must fail
    _register(tmp_path, monkeypatch, {"big": {"files": [{"path": "model.safetensors",
                                                         "uri": served.url("model.safetensors"),
                                                         "sha256": sha256(blob), "size": size}]}})
    with pytest.raises(modelzoo.ModelZooError, match="after 1 attempts") as err:
        modelzoo.resolve("big")
    assert served.url("model.safetensors") in str(err.value)
    parts = list((zoo / "tmp").glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == half
    path = modelzoo.resolve("big")
    assert (path / "model.safetensors").read_bytes() == blob.read_bytes()
    gets = served.gets("model.safetensors")
    assert [g.range for g in gets] == [None, f"bytes={half}-"] and gets[1].status == 206


def test_disk_writeback_is_started_on_the_way_and_continues_after_a_resume(zoo, served, tmp_path, monkeypatch):
    """Every finished WRITEBACK_BYTES is handed to the kernel (sync_file_range, real call, recorded)
    in order and without gaps, also when a download resumes from a partial file."""
    from modelzoo import download

    assert download._sync_file_range is not None  # Linux: the call exists
    calls = []

    def recording(fd, offset, nbytes, flags):
        calls.append((offset, nbytes))
        return real(fd, offset, nbytes, flags)

    real = download._sync_file_range
    monkeypatch.setattr(download, "_sync_file_range", recording)
    monkeypatch.setattr(download, "WRITEBACK_BYTES", 256 * 1024)
    blob = write_random(served.root / "model.safetensors", 3 * 1024 * 1024 + 17)
    size, half = blob.stat().st_size, blob.stat().st_size // 2
    served.faults.drop_after["/model.safetensors"] = half
    monkeypatch.setenv("EASYNLP_MODELZOO_RETRIES", "1")
    _register(tmp_path, monkeypatch, {"big": {"files": [{"path": "model.safetensors",
                                                         "uri": served.url("model.safetensors"),
                                                         "sha256": sha256(blob), "size": size}]}})
    with pytest.raises(modelzoo.ModelZooError):
        modelzoo.resolve("big")
    first = len(calls)
    path = modelzoo.resolve("big")
    assert (path / "model.safetensors").read_bytes() == blob.read_bytes()
    assert 0 < first < len(calls)
    assert calls[0][0] == 0 and calls[first][0] == half  # the resumed writer starts at the partial's end
    for (o1, n1), (o2, _) in zip(calls, calls[1:]):
        assert o2 == o1 + n1 or (o2 == half and o1 + n1 <= half)  # contiguous (gap only before the resume)
    assert all(n >= 256 * 1024 for _, n in calls) and calls[-1][0] + calls[-1][1] <= size


def test_dropped_connection_retried_within_one_resolve(zoo, served, tmp_path, monkeypatch):
    blob = write_random(served.root / "w.bin", 1024 * 1024 + 5, seed=1)
    served.faults.drop_after["/w.bin"] = 1000
    _register(tmp_path, monkeypatch, {"one": {"uri": served.url("w.bin"), "sha256": sha256(blob)}})
    path = modelzoo.resolve("one")
    assert (path / "w.bin").read_bytes() == blob.read_bytes()
    assert [g.range for g in served.gets("w.bin")] == [None, "bytes=1000-"]


def test_transient_503_retried_then_bounded(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": sha256(archive)}})
    served.faults.fail_with_503["/ckpt.tgz"] = 2
    assert (modelzoo.resolve("org/tiny") / "config.json").is_file()
    assert [g.status for g in served.gets("ckpt.tgz")] == [503, 503, 200]
    served.faults.fail_with_503["/other.tgz"] = 10
    make_tgz(served.root / "other.tgz", checkpoint_files())
    _register(tmp_path, monkeypatch, {"org/other": {"uri": served.url("other.tgz")}})
    with pytest.raises(modelzoo.ModelZooError, match="failed after 3 attempts.*HTTP 503"):
        modelzoo.resolve("org/other")
    assert len(served.gets("other.tgz")) == 3


def test_not_found_is_permanent_no_retry(zoo, served, tmp_path, monkeypatch):
    uri = served.url("missing.tgz")
    _register(tmp_path, monkeypatch, {"gone": {"uri": uri}})
    with pytest.raises(modelzoo.ModelZooError, match="HTTP 404") as err:
        modelzoo.resolve("gone")
    assert uri in str(err.value) and "'gone'" in str(err.value)
    assert len(served.gets("missing.tgz")) == 1


def test_original_name_unreachable_fails_cleanly_naming_uri(zoo, tmp_path, monkeypatch):
    # The shipped entry points at the public bucket, which is unreachable here (and must not be tried):
    # the same entry, overridden to a closed loopback port, exercises the failure path.
    name = "alibaba-pai/pai-artist-knowl-base-zh"
    shipped = modelzoo.get_entry(name)
    assert shipped.uri.endswith(f"/release/easynlp_modelzoo/{name}.tgz") and not shipped.verified
    uri = f"http://127.0.0.1:{closed_port()}/release/easynlp_modelzoo/{name}.tgz"
    _register(tmp_path, monkeypatch, {name: {"uri": uri}})
    with pytest.raises(modelzoo.ModelZooError) as err:
        modelzoo.resolve(name)
    message = str(err.value)
    assert name in message and uri in message and "after 3 attempts" in message
    assert "refused" in message.lower()
    assert tree(zoo / "models") == {}


def test_unverified_download_warns_and_records_computed_sha(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"artist-base-zh": {"uri": uri}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = modelzoo.resolve("artist-base-zh")
    messages = [str(w.message) for w in caught if issubclass(w.category, modelzoo.UnverifiedDownloadWarning)]
    assert len(messages) == 1 and "UNVERIFIED" in messages[0] and sha256(archive) in messages[0]
    meta = json.loads((path / ".modelzoo.json").read_text())
    assert meta["verified"] is False and meta["downloads_sha256"] == {uri: sha256(archive)}


def test_direct_uri_and_local_archive(zoo, served, tmp_path):
    uri, archive = _serve_tgz(served)
    path = modelzoo.resolve(uri)
    assert (path / "vocab.txt").read_bytes() == checkpoint_files()["vocab.txt"]
    assert path.parent == zoo / "models"
    local = make_tgz(tmp_path / "local.tar.gz", {"config.json": b"{}"}, top=None)
    assert (modelzoo.resolve(str(local)) / "config.json").read_bytes() == b"{}"


def test_offline_mode(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": sha256(archive)}})
    monkeypatch.setenv("EASYNLP_MODELZOO_OFFLINE", "1")
    with pytest.raises(modelzoo.ModelZooError) as err:
        modelzoo.resolve("org/tiny")
    message = str(err.value)
    assert "offline" in message and "'org/tiny'" in message and uri in message
    assert str(zoo / "models" / "org--tiny") in message
    assert served.gets("ckpt.tgz") == [], "offline mode must not touch the network"
    path = modelzoo.resolve("org/tiny", offline=False)
    served.stop()
    assert modelzoo.resolve("org/tiny") == path  # offline, from the cache, server gone


def test_unknown_name_suggests_close_matches(zoo):
    with pytest.raises(modelzoo.ModelZooError, match="did you mean 'artist-base-zh'"):
        modelzoo.resolve("artist-bse-zh")
    with pytest.raises(modelzoo.ModelZooError, match="no such directory"):
        modelzoo.resolve("./not/here")


_RESOLVE_SCRIPT = "import sys, modelzoo; print(modelzoo.resolve(sys.argv[1]))"


def test_four_processes_resolving_at_once_download_once(zoo, served, tmp_path, monkeypatch):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": sha256(archive)}})
    served.faults.delay_s = 0.5  # every process has started and contends for the lock meanwhile
    env = dict(os.environ, PYTHONPATH=str(Path(modelzoo.__file__).parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE_SCRIPT, "org/tiny"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert paths == {str(zoo / "models" / "org--tiny")}
    assert len(served.gets("ckpt.tgz")) == 1
    assert (Path(paths.pop()) / "config.json").read_bytes() == checkpoint_files()["config.json"]


def test_s3_archive_resolve(s3, zoo, tmp_path, monkeypatch):
    archive = make_tgz(tmp_path / "a.tgz", checkpoint_files())
    s3.upload_file(str(archive), s3.bucket, "release/a.tgz")
    uri = f"s3://{s3.bucket}/release/a.tgz"
    _register(tmp_path, monkeypatch, {"s3-model": {"uri": uri, "sha256": sha256(archive)}})
    path = modelzoo.resolve("s3-model")
    assert (path / "model.safetensors").read_bytes() == checkpoint_files()["model.safetensors"]
    _register(tmp_path, monkeypatch, {"s3-missing": {"uri": f"s3://{s3.bucket}/nope.tgz"}})
    with pytest.raises(modelzoo.ModelZooError, match=r"NoSuchKey|404") as err:
        modelzoo.resolve("s3-missing")
    assert "testing-secret-do-not-print" not in str(err.value)


def test_s3_resume_from_partial(s3, zoo, tmp_path, monkeypatch):
    from modelzoo.download import RetryPolicy, fetch

    data = os.urandom(300_000)
    s3.put_object(Bucket=s3.bucket, Key="w.bin", Body=data)
    uri = f"s3://{s3.bucket}/w.bin"
    part = tmp_path / "w.part"
    etag = s3.head_object(Bucket=s3.bucket, Key="w.bin")["ETag"]
    part.write_bytes(data[:123_456])  # what an interrupted earlier download left behind
    (tmp_path / "w.part.json").write_text(json.dumps({"uri_sha256": sha256(uri.encode()), "validator": etag}))
    result = fetch(uri, part, expected_sha256=sha256(data), policy=RetryPolicy(attempts=1))
    assert result.resumed_from == 123_456 and part.read_bytes() == data


def test_secrets_in_uris_never_printed(zoo, served):
    secret = "Signature=TOPSECRET123"
    for uri in (f"http://127.0.0.1:{closed_port()}/m.tgz?{secret}", served.url(f"missing.tgz?{secret}"),
                f"http://user:TOPSECRET123@127.0.0.1:{closed_port()}/m.tgz"):
        with pytest.raises(modelzoo.ModelZooError) as err:
            modelzoo.resolve(uri)
        assert "TOPSECRET123" not in str(err.value) and "127.0.0.1" in str(err.value)


def test_unsupported_scheme_and_bad_settings(zoo, monkeypatch):
    with pytest.raises(modelzoo.ModelZooError, match="unsupported scheme 'ftp'"):
        modelzoo.resolve("ftp://host/model.tgz")
    monkeypatch.setenv("EASYNLP_MODELZOO_RETRIES", "0")
    with pytest.raises(modelzoo.ModelZooError, match="EASYNLP_MODELZOO_RETRIES='0' must be at least 1"):
        modelzoo.resolve(f"http://127.0.0.1:{closed_port()}/m.tgz")


def test_progress_bar_and_stale_staging_cleanup(zoo, served, tmp_path, monkeypatch, capsys):
    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": sha256(archive)}})
    stale = zoo / "tmp" / "org--tiny.staging.killed"
    (stale / "content").mkdir(parents=True)
    monkeypatch.setenv("EASYNLP_MODELZOO_PROGRESS", "1")
    modelzoo.resolve("org/tiny")
    err = capsys.readouterr().err
    assert "org/tiny" in err and f"/{archive.stat().st_size} " in err  # tqdm's "done/total" bytes
    assert not stale.exists()


def test_offline_still_installs_local_archives(zoo, tmp_path):
    local = make_tgz(tmp_path / "offline.tgz", checkpoint_files())
    path = modelzoo.resolve(local.as_uri(), offline=True)
    assert (path / "config.json").read_bytes() == checkpoint_files()["config.json"]


def test_resume_never_splices_two_versions(zoo, served, tmp_path):
    from modelzoo.download import RetryPolicy, fetch

    old = write_random(served.root / "v.bin", 200_000, seed=2).read_bytes()
    uri, part = served.url("v.bin"), tmp_path / "v.part"
    served.faults.drop_after["/v.bin"] = 50_000
    with pytest.raises(modelzoo.ModelZooError):
        fetch(uri, part, policy=RetryPolicy(attempts=1))
    assert part.stat().st_size == 50_000
    new = write_random(served.root / "v.bin", 200_000, seed=3)  # a new version with a new ETag
    os.utime(new, ns=(1, 1))
    result = fetch(uri, part, expected_sha256=sha256(new), policy=RetryPolicy(attempts=1))
    assert result.resumed_from == 0 and part.read_bytes() == new.read_bytes() != old
    assert [g.range for g in served.gets("v.bin")] == [None, "bytes=50000-"]
    assert served.gets("v.bin")[1].status == 200, "If-Range mismatch: the server sends the whole object"


def test_offline_uses_stale_copy_with_warning_and_refuses_force(zoo, served, tmp_path, monkeypatch):
    from modelzoo.cli import main

    uri, archive = _serve_tgz(served)
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": sha256(archive)}})
    path = modelzoo.resolve("org/tiny")
    _register(tmp_path, monkeypatch, {"org/tiny": {"uri": uri, "sha256": "1" * 64}})  # a newer release
    with pytest.warns(UserWarning, match="different index entry"):
        assert modelzoo.resolve("org/tiny", offline=True) == path
    assert main(["--offline", "download", "--force", "org/tiny"]) == 1
    assert len(served.gets("ckpt.tgz")) == 1
