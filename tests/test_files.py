"""File utilities: the content hash, and atomic writes that leave the old or the new file and sync both."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from edgetile.runtime import files
from edgetile.runtime.files import sha256_file, write_atomic, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("size", [0, 1, files.HASH_CHUNK - 1, files.HASH_CHUNK, 3 * files.HASH_CHUNK + 7])
def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "write,read",
    [
        # case: bytes, as the daemon's frames
        (lambda p: write_atomic(p, b"\x00\xffjpeg"), lambda p: p.read_bytes() == b"\x00\xffjpeg"),
        # case: text keeps its line endings (KML, CSV with \r\n)
        (lambda p: write_text_atomic(p, "a,b\r\nc\n"), lambda p: p.read_bytes() == b"a,b\r\nc\n"),
        # case: JSON indented by one space, as detections.json
        (
            lambda p: write_json_atomic(p, [{"a": 1}]),
            lambda p: p.read_text() == json.dumps([{"a": 1}], indent=1),
        ),
    ],
)
def test_atomic_writes_replace_the_file_and_leave_nothing_behind(tmp_path, write, read):
    target = tmp_path / "out"
    target.write_bytes(b"old")
    write(target)
    assert read(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_syncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    write_atomic(tmp_path / "out", b"x")
    expected = [False, True] if os.name == "posix" else [False]
    assert synced == expected


def test_atomic_write_through_another_folder_and_private_mode(tmp_path):
    (tmp_path / "tmp").mkdir()
    write_atomic(tmp_path / "frame.jpg", b"x", tmp_path / "tmp", mode=0o600)
    assert (tmp_path / "frame.jpg").read_bytes() == b"x" and not any((tmp_path / "tmp").iterdir())
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "frame.jpg").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("[]")
    with pytest.raises(TypeError):
        write_json_atomic(target, {"not json": object()})
    assert target.read_text() == "[]" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
