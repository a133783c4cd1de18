"""Durable files: atomic replacement of one file, atomic publication of a directory."""

import os

import pytest

from proto import checkpoint
from proto.checkpoint import commit_dir, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    write_atomic(path, '{"new": 1}', mode=0o600)
    assert path.read_text() == '{"new": 1}'
    assert os.stat(path).st_mode & 0o777 == 0o600
    write_atomic(path, b"bytes")
    assert path.read_bytes() == b"bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text("old")

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_commit_dir_publishes_the_whole_directory(tmp_path):
    tmp = tmp_path / ".tmp-v1"
    tmp.mkdir()
    (tmp / "weights").write_bytes(b"w")
    (tmp / "state.json").write_text("{}")
    commit_dir(tmp, tmp_path / "v1")
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["state.json", "weights"]
    assert not tmp.exists()
