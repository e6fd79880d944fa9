"""The ground floor: atomic files and folders, stale temporaries, booleans, environment numbers."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from modelzoo.files import (
    atomic_dir,
    atomic_path,
    env_bool,
    env_number,
    parse_bool,
    publish_dir,
    recover_dir,
    remove_stale,
    temp_sibling,
    write_text_atomic,
)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "one\n")
    assert target.read_text() == "one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "one\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "table.tsv"
    dead = tmp_path / f".table.tsv.{_dead_pid()}-0123abcd.tmp"
    live = tmp_path / f".table.tsv.{os.getppid()}-0123abcd.tmp"  # our parent still runs
    other = tmp_path / f".other.tsv.{_dead_pid()}-0123abcd.tmp"  # another target's: not ours to touch
    for p in (dead, live, other):
        p.write_text("x")
    assert remove_stale(target) == [dead]
    assert not dead.exists() and live.exists() and other.exists()
    write_text_atomic(target, "new\n")  # a writer cleans up before it writes
    assert live.exists()


def test_atomic_dir_swaps_whole_folders_and_recovers_an_interrupted_swap(tmp_path):
    target = tmp_path / "images"
    with atomic_dir(target) as staging:
        (staging / "a.png").write_bytes(b"1")
    with atomic_dir(target) as staging:
        (staging / "b.png").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["b.png"]  # nothing of the old run mixes in
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as staging:
        (staging / "c.png").write_bytes(b"3")
        raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["b.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]

    # killed between "images -> .old-images" and "staging -> images"
    staging = temp_sibling(target, "staging")
    staging.mkdir()
    os.replace(target, tmp_path / ".old-images")
    recover_dir(target)
    assert sorted(p.name for p in target.iterdir()) == ["b.png"]
    publish_dir(staging, target)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(("text", "value"), [("on", True), ("Off", False), (" YES ", True), ("0", False)])
def test_one_boolean_vocabulary(text, value, monkeypatch):
    assert parse_bool(text) is value
    monkeypatch.setenv("X_FLAG", text)
    assert env_bool("X_FLAG") is value


def test_bad_environment_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ValueError, match="X_FLAG='maybe'"):
        env_bool("X_FLAG")
    monkeypatch.setenv("X_N", "3.5")
    assert env_number("X_N", 1.0) == 3.5
    with pytest.raises(ValueError, match="X_N='3.5' is not an integer"):
        env_number("X_N", 1, int)
    monkeypatch.setenv("X_N", "-1")
    with pytest.raises(ValueError, match="at least 0"):
        env_number("X_N", 1.0, minimum=0)
    monkeypatch.delenv("X_N")
    assert env_number("X_N", 7, int) == 7
