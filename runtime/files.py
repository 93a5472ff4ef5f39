"""File utilities shared by the runtime, the daemon, the exporter and training: a content hash,
atomic writes, and the one YAML mapping reader.

An atomic write leaves either the old file or the new one, whole, never half of one, and is on disk
when it returns: the data is fsynced before the rename, and the folder after it, because on ext4 and
most other POSIX file systems a rename is durable only once its folder is (a power cut on a drone
otherwise can leave an empty ``detections.json`` or a missing frame).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

HASH_CHUNK = 1 << 20  # 1 MiB: bounded memory for any photo or engine size


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename into this folder durable (POSIX); a no-op where folders cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike, data: bytes, tmp_dir: str | os.PathLike | None = None, mode: int = 0o666
) -> None:
    """Write bytes so that the file appears complete or not at all, and is on disk when this returns.

    Args:
        path: The file to write (replaced if it exists).
        data: Its new content.
        tmp_dir: Where the temporary file is written: a folder on the same file system as ``path``
            (default: beside it, under a hidden name that folder watchers skip).
        mode: Permissions of the new file, before the umask (0o600 keeps it to its owner).
    """
    target = Path(path)
    folder = Path(tmp_dir) if tmp_dir is not None else target.parent
    # A unique name: two threads writing the same file (two cameras' identical frames) must not
    # write into one temporary file.
    tmp = folder / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`write_atomic`); line endings are written as given."""
    write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """Write JSON (indented by one space) atomically (see :func:`write_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=1))


def parse_yaml_mapping(
    text: str, where: str, holds: str, install: str = "install it: pip install pyyaml"
) -> dict[str, Any]:
    """The mapping a YAML text holds ({} for an empty text), by PyYAML's safe loader.

    Args:
        text: The YAML.
        where: How messages name it, e.g. "--hyp runs/best.yaml".
        holds: What the mapping holds, for the message when the text is something else.
        install: The end of the message when PyYAML is missing: how to get it.

    Raises:
        ImportError: PyYAML is missing.
        ValueError: Not valid YAML (PyYAML's problem in one line, with its line), or not a mapping.
    """
    try:
        import yaml
    except ImportError:
        raise ImportError(f"{where}: reading YAML needs PyYAML, {install}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's own message spans several lines; keep the problem and where it is.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML{at}: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a mapping of {holds}, found {type(doc).__name__}")
    return doc


def read_text_file(path: str | os.PathLike, kind: str, option: str | None = None) -> str:
    """The UTF-8 text of a file (a byte-order mark dropped), for files a user names.

    Args:
        path: The file.
        kind: What it should hold, for the message about binary data (e.g. "YAML or JSON").
        option: The option that named it, to begin the messages (e.g. "--settings").

    Raises:
        ValueError: "OPTION: cannot read PATH: reason", or "OPTION PATH: expected a UTF-8 text file
            of KIND, found binary data".
    """
    lead = f"{option}: " if option else ""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"{lead}cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        where = f"{option} {path}" if option else str(path)
        raise ValueError(f"{where}: expected a UTF-8 text file of {kind}, found binary data") from None


def read_yaml_mapping(
    path: str | os.PathLike,
    holds: str,
    option: str | None = None,
    install: str = "install it: pip install pyyaml",
) -> dict[str, Any]:
    """The mapping a UTF-8 YAML file holds (see :func:`parse_yaml_mapping`).

    Args:
        path: The file.
        holds: What the mapping holds, for the message when the file holds something else.
        option: The option that named the file, to begin the messages (e.g. "--hyp").
        install: As for parse_yaml_mapping.

    Raises:
        ImportError: PyYAML is missing.
        ValueError: The file cannot be read, is not text, is not valid YAML or not a mapping.
    """
    text = read_text_file(path, "YAML", option)
    return parse_yaml_mapping(text, f"{option} {path}" if option else str(path), holds, install)
