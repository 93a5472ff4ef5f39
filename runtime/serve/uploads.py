"""Storing an uploaded photo: size-limited, checked to be an image, named by its hash, never by the client.

The client's file name is only ever a label in the results, after :func:`sanitize_name`; the bytes
are stored as ``uploads/<sha256><ext>``. The stored file is on disk (fsync) before it is recorded in
the queue, and the queue commit is durable before the client is answered, so a 201 means the photo
will be processed even if the power goes the next moment.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..files import HASH_CHUNK, fsync_dir
from ..images import IMAGE_EXTENSIONS, MAX_PIXELS, ImageReadError, read_image

MAX_NAME = 120
_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"BM", ".bmp"),
    (b"\x00\x00\x00\x0cjP  ", ".jp2"),
)


class UploadTooLarge(ValueError):
    """The upload exceeds the configured limit."""


def sanitize_name(raw: str | None) -> str:
    """A label safe to show and log: the last path component, letters, digits, '.', '_', '-' only.

    Examples: "../../etc/passwd" -> "passwd"; "C:\\\\DCIM\\\\IMG 0001.JPG" -> "IMG_0001.JPG"; "" -> "upload".
    """
    base = re.split(r"[\\/]", unicodedata.normalize("NFKC", raw or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:MAX_NAME]
    return base or "upload"


def _extension(name: str, head: bytes) -> str:
    # From the content first, so that the same photo is always stored under the same name.
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    for magic, guess in _MAGIC:
        if head.startswith(magic):
            return guess
    ext = Path(name).suffix.lower()
    return ext if ext in IMAGE_EXTENSIONS else ".img"


@dataclass(frozen=True)
class StoredUpload:
    """An accepted upload: content hash, sanitized name, where the bytes are, image size.

    ``size`` is the file's bytes; ``new_file`` is True when this call wrote the file (False when a
    copy of the same content was already stored).
    """

    sha256: str
    name: str
    path: Path
    width: int
    height: int
    size: int = 0
    new_file: bool = False


def store_upload(
    src: BinaryIO,
    client_name: str | None,
    uploads_dir: Path,
    tmp_dir: Path,
    max_bytes: int,
    max_pixels: int | None = MAX_PIXELS,
) -> StoredUpload:
    """Copy an upload to ``uploads_dir`` if it is a readable image of at most ``max_bytes``.

    Args:
        src: The uploaded bytes (read in 1 MiB pieces; memory stays bounded).
        client_name: The name the client sent; only its sanitized form is kept, as a label.
        uploads_dir: Where accepted photos are stored, as <sha256><ext>.
        tmp_dir: Same file system as uploads_dir, for the atomic rename.
        max_bytes: Size limit.
        max_pixels: Most pixels, checked from the header before the photo is decoded.

    Raises:
        UploadTooLarge: more than max_bytes.
        ImageTooLarge: more than max_pixels pixels.
        ImageReadError: not a readable image (empty, truncated, not an image).
    """
    name = sanitize_name(client_name)
    h = hashlib.sha256()
    size = 0
    head = b""
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in iter(lambda: src.read(HASH_CHUNK), b""):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(f"upload too large: expected at most {max_bytes} bytes, found more")
                if len(head) < 16:
                    head += chunk[:16]
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        try:
            image = read_image(tmp, max_pixels)
        except ImageReadError as exc:
            raise type(exc)(str(exc).replace(str(tmp), name)) from None
        height, width = image.shape[:2]
        del image
        digest = h.hexdigest()
        final = uploads_dir / f"{digest}{_extension(name, head)}"
        new_file = not final.exists()
        if new_file:
            os.replace(tmp, final)
            fsync_dir(uploads_dir)
        else:
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return StoredUpload(digest, name, final, int(width), int(height), size, new_file)
