"""File utilities: the content hash, atomic writes that leave the old or the new file and sync both, and
the YAML mapping reader."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from edgetile.runtime import files
from edgetile.runtime.files import (
    parse_yaml_mapping,
    read_text_file,
    read_yaml_mapping,
    sha256_file,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)


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


YAML_CASES = [
    # (text, expected mapping or the message's words)
    ("conf: 0.1\nnames: [a, b]\n", {"conf": 0.1, "names": ["a", "b"]}),  # a mapping
    ("", {}),  # an empty file: no keys
    ("# only a comment\n", {}),
    ("- a\n- b\n", "x.yaml: expected a mapping of things, found list"),
    ("'just text'", "x.yaml: expected a mapping of things, found str"),
    ("a: [1\nb: 2\n", r"x.yaml: not valid YAML at line 2: "),  # one line, with where PyYAML stopped
]


@pytest.mark.parametrize("text,expected", YAML_CASES)
def test_yaml_mapping_or_one_line_saying_what_was_found(text, expected):
    if isinstance(expected, dict):
        assert parse_yaml_mapping(text, "x.yaml", "things") == expected
    else:
        with pytest.raises(ValueError, match=expected) as info:
            parse_yaml_mapping(text, "x.yaml", "things")
        assert "\n" not in str(info.value)


def test_reading_a_named_file_says_which_option_named_it(tmp_path):
    (tmp_path / "h.yaml").write_text("\ufefflr0: 0.01\n", encoding="utf-8")  # a byte-order mark is dropped
    assert read_yaml_mapping(tmp_path / "h.yaml", "name: value", "--hyp") == {"lr0": 0.01}
    with pytest.raises(ValueError, match=rf"^--hyp: cannot read {tmp_path / 'no.yaml'}: No such file"):
        read_yaml_mapping(tmp_path / "no.yaml", "name: value", "--hyp")
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00c")
    with pytest.raises(ValueError, match=r"b\.yaml: expected a UTF-8 text file of YAML, found binary data"):
        read_text_file(tmp_path / "b.yaml", "YAML")
    (tmp_path / "l.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match=rf"^--hyp {tmp_path / 'l.yaml'}: expected a mapping of name: value"):
        read_yaml_mapping(tmp_path / "l.yaml", "name: value", "--hyp")
