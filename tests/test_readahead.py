"""Reading the next photo on a thread: order, errors, the memory bound, and the size from headers."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from edgetile.runtime.images import ImageReadError, read_image
from edgetile.runtime.readahead import (
    READ_AHEAD_MB,
    decoded_bytes,
    prefetch,
    read_ahead_bytes,
    read_in_turn,
    read_within,
)

# --- prefetch --------------------------------------------------------------------------------------


def test_prefetch_yields_in_order_with_errors_attached_to_their_item():
    def load(x):
        if x == 3:
            raise OSError(f"cannot read {x}")
        return x * x

    got = list(prefetch(range(6), load))
    assert [(i, v) for i, v, e in got] == [(0, 0), (1, 1), (2, 4), (3, None), (4, 16), (5, 25)]
    errors = [(i, str(e)) for i, _, e in got if e is not None]
    assert errors == [(3, "cannot read 3")]


def test_prefetch_loads_the_next_item_while_the_caller_works():
    second_loaded = threading.Event()

    def load(x):
        if x == 1:
            second_loaded.set()
        return x

    gen = prefetch([0, 1, 2], load)
    item, _, _ = next(gen)
    assert item == 0
    # The caller is still "working" on item 0; item 1 must get loaded meanwhile, on the worker.
    assert second_loaded.wait(timeout=10)
    assert [i for i, _, _ in gen] == [1, 2]


class Frame:
    """A loaded item that counts how many of its kind are alive."""

    def __init__(self, alive: list[int], peak: list[int], lock: threading.Lock) -> None:
        self.alive, self.lock = alive, lock
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])

    def __del__(self) -> None:
        with self.lock:
            self.alive[0] -= 1


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_prefetch_holds_at_most_depth_plus_one_loaded_items(depth):
    alive, peak, lock = [0], [0], threading.Lock()
    loads, loaded = [0], threading.Condition()

    def load(_):
        frame = Frame(alive, peak, lock)
        with loaded:
            loads[0] += 1
            loaded.notify_all()
        return frame

    gen = prefetch(range(12), load, depth=depth)
    for item, frame, _err in gen:
        # "Detecting" until the worker has run ahead to its limit: depth items beyond this one.
        want = min(item + 1 + depth, 12)
        with loaded:
            assert loaded.wait_for(lambda want=want: loads[0] >= want, timeout=30), loads
        del frame  # the caller lets go before it asks for the next
    assert peak[0] == depth + 1  # reached (the worker ran ahead), never exceeded
    assert alive[0] == 0


def test_prefetch_closed_early_stops_and_joins_its_worker():
    loaded: list[int] = []
    gen = prefetch(range(1000), lambda x: loaded.append(x) or x, depth=2)
    next(gen)
    gen.close()
    assert not any(t.name == "edgetile-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(loaded) <= 3  # the one in hand and two ahead


def test_prefetch_raises_a_failure_of_the_items_themselves():
    def items():
        yield 1
        raise RuntimeError("folder vanished")

    gen = prefetch(items(), lambda x: x)
    assert next(gen)[0] == 1
    with pytest.raises(RuntimeError, match="folder vanished"):
        next(gen)


def test_prefetch_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth: expected at least 1, found 0"):
        next(prefetch([1], lambda x: x, depth=0))


# --- sizes from headers ------------------------------------------------------------------------------


def write(path, img, *params):
    assert cv2.imwrite(str(path), img, list(params))
    return path


@pytest.mark.parametrize(
    "name,shape,params,expected",
    [
        # case: baseline JPEG, 3 bytes a pixel decoded
        ("a.jpg", (300, 500, 3), (), 300 * 500 * 3),
        # case: progressive JPEG (SOF2)
        ("p.jpg", (120, 64, 3), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), 120 * 64 * 3),
        # case: grey JPEG still decodes to BGR
        ("g.jpg", (40, 30), (), 40 * 30 * 3),
        # case: 8-bit PNG: up to 4 channels, then BGR
        ("b.png", (50, 70, 3), (), 50 * 70 * 7),
        # case: 16-bit PNG counts 2 bytes a sample
        ("w.png", (50, 70, 3), (), 50 * 70 * 11),
    ],
)
def test_decoded_bytes_from_the_header(tmp_path, name, shape, params, expected):
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    if name == "w.png":
        img = img.astype(np.uint16) * 257
    assert decoded_bytes(write(tmp_path / name, img, *params)) == expected


def test_decoded_bytes_skips_exif_before_the_frame_header(tmp_path):
    img = np.zeros((64, 96, 3), np.uint8)
    ok, jpg = cv2.imencode(".jpg", img)
    app1 = b"Exif\x00\x00" + bytes(60000)  # a large APP1 segment, as cameras write
    data = jpg.tobytes()
    data = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    (tmp_path / "exif.jpg").write_bytes(data)
    assert decoded_bytes(tmp_path / "exif.jpg") == 64 * 96 * 3
    assert read_image(tmp_path / "exif.jpg").shape == (64, 96, 3)


@pytest.mark.parametrize(
    "content", [b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xda\x00\x02", b"GIF89a....", b"\x89PNG\r\n\x1a\n"]
)
def test_decoded_bytes_is_unknown_for_what_it_cannot_tell(tmp_path, content):
    (tmp_path / "x.img").write_bytes(content)
    assert decoded_bytes(tmp_path / "x.img") is None
    assert decoded_bytes(tmp_path / "missing.jpg") is None


# --- the loader --------------------------------------------------------------------------------------


def test_read_within_reads_small_photos_ahead_and_leaves_large_ones_for_their_turn(tmp_path):
    small = write(tmp_path / "small.jpg", np.full((100, 100, 3), 80, np.uint8))
    large = write(tmp_path / "large.jpg", np.full((400, 400, 3), 80, np.uint8))
    load = read_within(100 * 100 * 3)
    image, ms = load(small)
    assert image.shape == (100, 100, 3) and ms > 0
    assert load(large) == (None, 0.0)  # 480 kB decoded: over the budget
    image, ms = read_in_turn(large, load(large))
    assert image.shape == (400, 400, 3) and ms > 0
    assert read_within(0)(small) == (None, 0.0)  # budget 0: nothing is read ahead


def test_a_bad_photo_fails_with_its_own_error_wherever_it_is_read(tmp_path):
    ok, jpg = cv2.imencode(".jpg", np.full((200, 200, 3), 90, np.uint8))
    (tmp_path / "cut.jpg").write_bytes(jpg.tobytes()[: jpg.size // 2])  # header intact, scan cut off
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(5))  # no frame header
    load = read_within(10**9)
    got = list(prefetch([tmp_path / "cut.jpg", tmp_path / "junk.jpg"], load))
    # cut.jpg: its size is known, so the worker reads it and its error travels with it
    assert got[0][1] is None and isinstance(got[0][2], ImageReadError) and "truncated JPEG" in str(got[0][2])
    # junk.jpg: size unknown, left for its turn, where read_image reports it
    assert got[1][1] == (None, 0.0) and got[1][2] is None
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_in_turn(tmp_path / "junk.jpg", got[1][1])


def test_read_within_rejects_a_negative_budget():
    with pytest.raises(ValueError, match="budget_bytes: expected 0 or more, found -1"):
        read_within(-1)


@pytest.mark.parametrize(
    "mb,on_cpu,expected",
    [
        (None, True, 0),  # case: default with the model on the CPU: a decode beside inference slows both
        (None, False, READ_AHEAD_MB * 2**20),  # case: default with the model on a GPU
        (0, False, 0),  # case: turned off
        (64, True, 64 * 2**20),  # case: asked for, even on the CPU
    ],
)
def test_read_ahead_budget(mb, on_cpu, expected):
    assert read_ahead_bytes(mb, on_cpu) == expected


def test_backends_say_where_inference_runs(tmp_path):
    from edgetile.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgetile.runtime.backends.tensorrt import TensorRTBackend
    from edgetile.runtime.detector import Detector
    from onnx_models import red_blob_model

    path = red_blob_model(tmp_path / "red.onnx")
    with OnnxRuntimeBackend(path) as be:
        assert be.infers_on_cpu  # CPU execution provider
    with Detector(path) as det:
        assert det.infers_on_cpu and read_ahead_bytes(None, det.infers_on_cpu) == 0
    assert TensorRTBackend.infers_on_cpu is False  # the GPU runs the engine; the CPU is free to decode
