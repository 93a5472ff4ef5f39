from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgetile.runtime.images import ImageReadError, expand_sources, image_size, read_header, read_image


@pytest.fixture
def photo(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), img)
    return path


def _truncate(src, dst, fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


BAD = [
    # (how to make the file, expected words in the one-line error)
    (lambda d, p: d / "missing.jpg", "file not found"),
    (lambda d, p: (d / "empty.jpg").write_bytes(b"") and d / "empty.jpg" or d / "empty.jpg", "empty file"),
    (
        lambda d, p: (d / "notes.jpg").write_text("not an image at all") and d / "notes.jpg",
        "not a readable image",
    ),
    (lambda d, p: _truncate(p, d / "cut_half.jpg", 0.5), "truncated JPEG"),
    (lambda d, p: _truncate(p, d / "cut_end.jpg", 0.98), "truncated JPEG"),
    (lambda d, p: d, "folder"),
]


@pytest.mark.parametrize("make,words", BAD)
def test_bad_inputs_give_one_line_errors(tmp_path, photo, make, words):
    path = make(tmp_path, photo)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_png_is_an_error(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(tmp_path / "b.png")


def test_jpeg_with_bytes_after_the_end_marker_is_accepted(tmp_path, photo):
    (tmp_path / "tail.jpg").write_bytes(photo.read_bytes() + b"\x00" * 100 + b"vendor trailer")
    assert read_image(tmp_path / "tail.jpg").shape == (120, 160, 3)


CONVERTED = [
    # (image written, expected BGR after reading)
    ("grey.png", np.full((10, 12), 200, np.uint8), (200, 200, 200)),
    ("grey.jpg", np.full((10, 12), 200, np.uint8), (200, 200, 200)),  # greyscale JPEG via libjpeg-turbo
    ("colour.jpg", np.full((10, 12, 3), (30, 90, 200), np.uint8), (30, 90, 200)),
    ("deep.png", np.full((10, 12, 3), 65535, np.uint16), (255, 255, 255)),
    ("deep_grey.png", np.full((10, 12), 256 * 100, np.uint16), (100, 100, 100)),
    (
        "rgba.png",
        np.dstack([np.full((10, 12, 3), (10, 20, 30), np.uint8), np.full((10, 12), 7, np.uint8)]),
        (10, 20, 30),
    ),
]


@pytest.mark.parametrize("name,pixels,bgr", CONVERTED)
def test_deep_grey_and_alpha_images_become_8bit_bgr(tmp_path, name, pixels, bgr):
    cv2.imwrite(str(tmp_path / name), pixels)
    img = read_image(tmp_path / name)
    assert img.dtype == np.uint8 and img.shape == (10, 12, 3)
    tol = 3 if name.endswith(".jpg") else 0  # JPEG is lossy
    assert np.abs(img[5, 5].astype(int) - np.array(bgr)).max() <= tol


def test_expand_sources_folders_globs_and_missing(tmp_path, photo):
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "b.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "sub" / "readme.txt").write_text("x")
    found = expand_sources([str(tmp_path)])
    assert found == [str(tmp_path / "photo.jpg"), str(tmp_path / "sub" / "b.png")]
    assert expand_sources([str(tmp_path / "*.jpg")]) == [str(tmp_path / "photo.jpg")]
    # Missing files and globs that match nothing are kept, to be reported as failed inputs.
    assert expand_sources([str(tmp_path / "nope.jpg")]) == [str(tmp_path / "nope.jpg")]
    assert expand_sources([str(tmp_path / "*.tif")]) == [str(tmp_path / "*.tif")]


def test_image_size_reads_headers_like_the_decoder(tmp_path):
    for name in ("a.jpg", "b.png", "c.bmp"):
        cv2.imwrite(str(tmp_path / name), np.zeros((37, 53, 3), np.uint8))
        assert image_size(tmp_path / name) == (53, 37)


@pytest.mark.parametrize(
    "name,pixels,expected",
    [
        # case: baseline JPEG, 8-bit
        ("a.jpg", np.zeros((37, 53, 3), np.uint8), ("jpeg", 53, 37, 8)),
        # case: 8-bit PNG
        ("b.png", np.zeros((37, 53, 3), np.uint8), ("png", 53, 37, 8)),
        # case: 16-bit grey PNG
        ("c.png", np.zeros((37, 53), np.uint16), ("png", 53, 37, 16)),
        # case: BMP: the header reader does not know it, decoding does
        ("d.bmp", np.zeros((37, 53, 3), np.uint8), None),
    ],
)
def test_read_header_tells_format_size_and_depth(tmp_path, name, pixels, expected):
    cv2.imwrite(str(tmp_path / name), pixels)
    header = read_header(tmp_path / name)
    got = None if header is None else (header.format, header.width, header.height, header.bit_depth)
    assert got == expected


def test_image_size_of_a_bad_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        image_size(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="found a folder"):
        image_size(tmp_path)
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00")
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        image_size(tmp_path / "cut.jpg")
