"""Reading photos: every input either becomes an 8-bit BGR image or a one-line reason why not."""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2")


class ImageReadError(ValueError):
    """An input that is not a readable image; the message is one line naming the reason."""


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Turn files, folders (recursive) and glob patterns into a list of inputs, in a stable order.

    A path that does not exist and is no glob pattern is kept, so that it is reported as a failed
    input rather than silently dropped. Files named directly are kept whatever their extension.

    Args:
        sources: What the user named.

    Returns:
        Input paths as strings, folders expanded in sorted order.
    """
    out: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(
                str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            out.extend(found)
        elif p.exists() or not glob.has_magic(src):
            out.append(src)
        else:
            matches = sorted(m for m in glob.glob(src, recursive=True) if os.path.isfile(m))
            out.extend(matches if matches else [src])
    return out


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header tells without decoding it.

    Attributes:
        format: "jpeg" or "png".
        width: Width in pixels.
        height: Height in pixels.
        bit_depth: Bits per sample (JPEG: 8 or 12; PNG: 1, 2, 4, 8 or 16).
    """

    format: str
    width: int
    height: int
    bit_depth: int


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length field


def read_header(path: str | os.PathLike) -> ImageHeader | None:
    """The size of a JPEG or PNG photo from its header: a few hundred bytes read, nothing decoded.

    Hand-written rather than Pillow's ``Image.open`` (which also reads only the header) because the
    runtime installs with NumPy, OpenCV and simplejpeg alone: Pillow is not among its requirements,
    and a detector on a drone should not need it to budget its read-ahead.

    Returns:
        The header, or None when the file is neither JPEG nor PNG or its header is cut short or
        malformed: unknown, to be learnt by decoding.

    Raises:
        OSError: When the file cannot be opened (missing, a folder, no permission).
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:3] == b"\xff\xd8\xff":
            f.seek(2)
            return _jpeg_header(f)
        if head == _PNG_SIGNATURE:
            ihdr = f.read(18)  # chunk length, "IHDR", width, height, bit depth, colour type
            if len(ihdr) < 18 or ihdr[4:8] != b"IHDR":
                return None
            w, h, depth = struct.unpack(">IIB", ihdr[8:17])
            return ImageHeader("png", w, h, depth) if w and h else None
    return None


def _jpeg_header(f) -> ImageHeader | None:
    """The first start-of-frame segment's size; ``f`` is positioned after SOI."""
    while True:
        if f.read(1) != b"\xff":
            return None
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = f.read(1)
        if not marker:
            return None
        m = marker[0]
        if m in _JPEG_STANDALONE:
            continue
        if m in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            return None
        length = f.read(2)
        if len(length) < 2:
            return None
        (n,) = struct.unpack(">H", length)
        if m in _JPEG_SOF:
            head = f.read(5)
            if len(head) < 5:
                return None
            depth, h, w = struct.unpack(">BHH", head)
            return ImageHeader("jpeg", w, h, depth) if w and h else None
        if n < 2:
            return None
        f.seek(n - 2, os.SEEK_CUR)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a photo, from its header (JPEG, PNG), else by decoding it.

    Raises:
        ImageReadError: When the file is missing or not an image.
    """
    try:
        header = read_header(path)
    except OSError:
        header = None  # read_image names the reason in its own words
    if header is not None:
        return header.width, header.height
    image = read_image(path)
    return int(image.shape[1]), int(image.shape[0])


def _jpeg_is_truncated(data: np.ndarray) -> bool:
    """True when no end-of-image marker follows the last start-of-scan marker.

    Entropy-coded JPEG data never contains 0xFFD9 (0xFF bytes are stuffed), so an EOI after the last
    SOS proves the scan is complete, while trailing bytes some cameras append after EOI are allowed.
    """
    b = data.tobytes()
    sos = b.rfind(b"\xff\xda")
    return sos < 0 or b.find(b"\xff\xd9", sos + 2) < 0


def _decode_jpeg(data: np.ndarray, path: str | os.PathLike) -> np.ndarray | None:
    """Decode a JPEG into one buffer of our own with libjpeg-turbo (simplejpeg).

    OpenCV's decoder holds a second full-size copy while it decodes (1.8 GB peak for a 20000x15000
    photo); this path peaks at the image itself. Returns None for JPEG flavours simplejpeg does not
    decode (CMYK, 12-bit, lossless), which OpenCV then reads.
    """
    import simplejpeg

    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None
    out = np.empty((h, w, 3), np.uint8)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR", buffer=out, strict=True)
    except ValueError as exc:
        raise ImageReadError(
            f"corrupt or truncated JPEG ({str(exc).strip() or 'decode failed'}): {path}"
        ) from exc


def to_bgr8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert what OpenCV decoded (8/16-bit, float, grey, BGRA) to (H, W, 3) uint8 BGR."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{name}: expected 8- or 16-bit pixels, found {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ImageReadError(f"{name}: expected 1, 3 or 4 channels, found shape {img.shape}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as (H, W, 3) uint8 BGR, pixels as stored (EXIF orientation is not applied).

    16-bit, grey and RGBA images are converted. Missing, empty, non-image and truncated files raise
    ImageReadError with a one-line reason.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"file not found: {path}")
    if p.is_dir():
        raise ImageReadError(f"expected an image file, found a folder: {path}")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ImageReadError(f"empty file (0 bytes): {path}")
    is_jpeg = data.size >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF
    if is_jpeg and _jpeg_is_truncated(data):
        raise ImageReadError(f"truncated JPEG (no end-of-image marker after the last scan): {path}")
    img = _decode_jpeg(data, path) if is_jpeg else None
    if img is not None:
        return img
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        kind = "corrupt or truncated JPEG" if is_jpeg else "not a readable image"
        raise ImageReadError(f"{kind} ({data.size} bytes): {path}")
    return to_bgr8(img, str(path))
