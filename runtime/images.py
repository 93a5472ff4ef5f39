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

# A 100 MP camera (11648x8736, Hasselblad H6D-100c, DJI Zenmuse P1's 45 MP twice over) fits with room;
# a photo above it is refused from its header, before anything is allocated for its pixels.
MAX_PIXELS = 120_000_000


class ImageReadError(ValueError):
    """An input that is not a readable image; the message is one line naming the reason."""


class ImageTooLarge(ImageReadError):
    """An image whose header claims more pixels than the limit (``--max-pixels``)."""


def check_pixels(width: int, height: int, max_pixels: int | None, name: str | os.PathLike) -> None:
    """Refuse an image of more than ``max_pixels`` pixels (None: no limit).

    Raises:
        ImageTooLarge: One line naming the size found and the limit.
    """
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"image too large: expected at most {max_pixels} pixels (--max-pixels), found "
            f"{width}x{height} = {width * height}: {name}"
        )


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


def claimed_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) that a photo's header claims, for every format :func:`read_image` decodes.

    JPEG and PNG through :func:`read_header`; BMP, TIFF (the first page, as OpenCV reads it), WebP
    and JPEG 2000 (JP2 boxes) from their own headers, a few dozen bytes each. Used to refuse a
    decompression bomb before OpenCV allocates anything for it.

    Returns:
        The size, or None when the header is unknown, cut short or malformed.

    Raises:
        OSError: When the file cannot be opened.
    """
    header = read_header(path)
    if header is not None:
        return header.width, header.height
    with open(path, "rb") as f:
        head = f.read(32)
        try:
            if head[:2] == b"BM" and len(head) >= 26:
                (dib,) = struct.unpack("<I", head[14:18])
                if dib == 12:
                    w, h = struct.unpack("<HH", head[18:22])
                else:
                    w, h = struct.unpack("<ii", head[18:26])
                return (abs(w), abs(h)) if w and h else None
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff_size(f, "<" if head[:2] == b"II" else ">")
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                return _webp_size(head)
            if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
                return _jp2_size(f)
        except struct.error:
            return None
    return None


def _tiff_size(f, order: str) -> tuple[int, int] | None:
    f.seek(4)
    (ifd,) = struct.unpack(order + "I", f.read(4))
    f.seek(ifd)
    (count,) = struct.unpack(order + "H", f.read(2))
    size: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        tag, kind, _n, value = struct.unpack(order + "HHI4s", f.read(12))
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    return (size[256], size[257]) if size.get(256) and size.get(257) else None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk, body = head[12:16], head[20:32]
    if chunk == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and body[:1] == b"\x2f":
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    return None


def _jp2_size(f) -> tuple[int, int] | None:
    f.seek(12)
    end = None  # inside jp2h: where it ends
    for _ in range(64):
        box = f.read(8)
        if len(box) < 8:
            return None
        length, kind = struct.unpack(">I4s", box)
        if kind == b"jp2h":
            end = f.tell() + length - 8
            continue  # its first child follows
        if kind == b"ihdr":
            h, w = struct.unpack(">II", f.read(8))
            return (w, h) if w and h else None
        if length < 8 or (end is not None and f.tell() >= end):
            return None
        f.seek(length - 8, os.SEEK_CUR)
    return None


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


def _decode_jpeg(data: np.ndarray, path: str | os.PathLike, max_pixels: int | None) -> np.ndarray | None:
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
    check_pixels(w, h, max_pixels, path)  # libjpeg-turbo's own view, should read_header have missed it
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


def read_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Read a photo as (H, W, 3) uint8 BGR, pixels as stored (EXIF orientation is not applied).

    16-bit, grey and RGBA images are converted. Missing, empty, non-image and truncated files raise
    ImageReadError with a one-line reason.

    Memory: a photo's size is read from its header (:func:`claimed_size`: JPEG, PNG, BMP, TIFF, WebP,
    JP2) before anything else, and one of more than ``max_pixels`` pixels is refused then, so a
    673-byte file that claims 60000x60000 pixels costs nothing. One within the limit needs at most
    its file's bytes plus 11 bytes per pixel while it is read (a 16-bit RGBA image decoded, then
    converted to 8-bit BGR; a JPEG needs 3 bytes per pixel); the image kept is 3 bytes per pixel. A
    header this reader does not know (BigTIFF, a raw JPEG 2000 codestream) is checked once OpenCV
    has decoded it, within OpenCV's own limit of 2^30 pixels.

    Args:
        path: The photo.
        max_pixels: Most pixels (width x height) accepted; None for no limit of ours.

    Raises:
        ImageTooLarge: The photo has more than ``max_pixels`` pixels.
        ImageReadError: Any other reason it cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"file not found: {path}")
    if p.is_dir():
        raise ImageReadError(f"expected an image file, found a folder: {path}")
    try:
        claimed = claimed_size(p)
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if claimed is not None:
        check_pixels(*claimed, max_pixels, path)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ImageReadError(f"empty file (0 bytes): {path}")
    is_jpeg = data.size >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF
    if is_jpeg and _jpeg_is_truncated(data):
        raise ImageReadError(f"truncated JPEG (no end-of-image marker after the last scan): {path}")
    img = _decode_jpeg(data, path, max_pixels) if is_jpeg else None
    if img is not None:
        return img
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        # e.g. a PNG whose header claims more than OpenCV's 2^30 pixels: OpenCV raises where it
        # returns None for other broken files; either way it is one input that is not an image
        said = str(exc).strip().splitlines()
        reason = said[0].partition("error: ")[2] if said else ""
        raise ImageReadError(
            f"not a readable image ({data.size} bytes; OpenCV: {reason or 'refused'}): {path}"
        ) from None
    if img is None:
        kind = "corrupt or truncated JPEG" if is_jpeg else "not a readable image"
        raise ImageReadError(f"{kind} ({data.size} bytes): {path}")
    check_pixels(int(img.shape[1]), int(img.shape[0]), max_pixels, path)
    return to_bgr8(img, str(path))
