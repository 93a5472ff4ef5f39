"""The CUDA kernels' exact arithmetic in NumPy, and the tables the preprocessing kernel reads.

Preprocessing (``preprocess.cu``) does no floating-point arithmetic of its own. Everything that needs
it is computed here on the host, once per frame, the way OpenCV computes it:

* For each axis of each view, a table of source indices and 11-bit fixed-point weights
  (``INTER_RESIZE_COEF_BITS = 11``): ``f = (float)((d + 0.5) * scale - 0.5)`` in double precision then
  rounded to float, ``s = floor(f)``, weights ``round((1 - f) * 2048)`` and ``round(f * 2048)`` (half
  to even, like ``cvRound``). Along x a sample left of the first or right of the last source column is
  clamped with its fraction zeroed, as OpenCV does; along y the rows are clamped and the weights kept.
* Horizontal pass in integers: ``h = S[s0] * a0 + S[s1] * a1``.
* Vertical pass rounded exactly as OpenCV's SIMD path for 8-bit images rounds it
  (``VResizeLinearVec_32s8u``): ``((((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16) + 2) >> 2``,
  saturated to 0..255. OpenCV's scalar tail (the last few bytes of a row on some builds) rounds
  ``(h0 * b0 + h1 * b1 + 2**21) >> 22`` instead; the two differ by at most 1 in 255.
* The uint8 result goes through a 256-entry table built by the very NumPy call the CPU path uses
  (``np.multiply(u8, 1 / 255, out=float32 or float16)``), so the scale to [0, 1] is bit-identical.

An exact 2x downscale takes OpenCV's INTER_AREA shortcut; with weights 1024/1024 the formulas above give
the same ``(a + b + c + d + 2) >> 2``, so no special case is needed. A view whose window already has the
content size is copied by the CPU path; the tables are then identities and give the copy exactly.

On the OpenCV build tested here (opencv-python 5.0, x86-64) this arithmetic reproduces cv2.resize
bit-for-bit over random sizes (see tests/test_cuda_reference.py); on others it stays within 1/255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..preprocess import PAD_VALUE, Views

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS
VIEW_PARAMS = 8  # int32 per view: x0, y0, content_w, content_h, flip, xtab offset, ytab offset, unused
OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def axis_table(src: int, dst: int, horizontal: bool) -> np.ndarray:
    """Source indices and fixed-point weights of cv2.INTER_LINEAR along one axis.

    Args:
        src: Source length in pixels (the window's width or height).
        dst: Destination length in pixels (the content's width or height).
        horizontal: x axis (a sample outside the source is clamped with its fraction zeroed) or y axis
            (rows clamped, weights kept), as OpenCV does.

    Returns:
        (dst, 4) int32: first source index, second source index (both within [0, src)), their weights
        (summing to 2048, or within 1 of it where OpenCV's own float rounding leaves it so).
    """
    if int(src) < 1 or int(dst) < 1:
        raise ValueError(f"src, dst: expected positive lengths, found {src} and {dst}")
    src, dst = int(src), int(dst)
    scale = 1.0 / (dst / src)  # OpenCV: inv_scale = (double)dst / src, scale = 1. / inv_scale
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)  # exact in float
    s = s.astype(np.int64)
    if horizontal:
        low = s < 0
        f[low], s[low] = 0, 0
        high = s >= src - 1
        f[high], s[high] = 0, src - 1
    w0 = np.rint((np.float32(1) - f) * np.float32(COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(COEF_SCALE)).astype(np.int32)
    s0 = np.clip(s, 0, src - 1)
    s1 = np.clip(s + 1, 0, src - 1)
    return np.stack([s0, s1, w0, w1], axis=1).astype(np.int32)


@dataclass(frozen=True)
class ViewTables:
    """What the preprocessing kernel reads for a set of views (uploaded once per frame).

    Attributes:
        params: (N, 8) int32 per view: x0, y0, content width, content height, flip, offset of its
            x table, offset of its y table, 0.
        xtab: (Tx, 4) int32 x tables of all views back to back (views of the same geometry share one).
        ytab: (Ty, 4) int32 y tables, likewise.
    """

    params: np.ndarray
    xtab: np.ndarray
    ytab: np.ndarray


def check_views(views: Views, image_wh: tuple[int, int], input_hw: tuple[int, int]) -> None:
    """Raise ValueError unless every window lies inside the image and every content fits the input.

    The kernel trusts these numbers (a window outside the frame would read outside its buffer), so
    they are checked here, where a bad value can still be named.
    """
    W, H = (int(v) for v in image_wh)
    ih, iw = (int(v) for v in input_hw)
    w = np.asarray(views.windows, np.int64).reshape(-1, 4)
    c = np.asarray(views.content, np.int64).reshape(-1, 2)
    bad = (
        (w[:, 0] < 0)
        | (w[:, 1] < 0)
        | (w[:, 2] > W)
        | (w[:, 3] > H)
        | (w[:, 2] <= w[:, 0])
        | (w[:, 3] <= w[:, 1])
    )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"views: expected windows inside the {W}x{H} image with x0 < x1 and y0 < y1, "
            f"found window {i} = {w[i].tolist()}"
        )
    bad = (c[:, 0] < 1) | (c[:, 1] < 1) | (c[:, 0] > iw) | (c[:, 1] > ih)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"views: expected content sizes between 1x1 and the {iw}x{ih} input, "
            f"found {c[i].tolist()} for view {i}"
        )


def build_view_tables(views: Views, image_wh: tuple[int, int], input_hw: tuple[int, int]) -> ViewTables:
    """The kernel's per-view parameters and resize tables for views of one image.

    Args:
        views: Views of the image (windows, content sizes, flips).
        image_wh: Image width and height.
        input_hw: Model input height and width.
    """
    check_views(views, image_wh, input_hw)
    n = len(views)
    params = np.zeros((n, VIEW_PARAMS), np.int32)
    xparts: list[np.ndarray] = []
    yparts: list[np.ndarray] = []
    xoff: dict[tuple[int, int], int] = {}
    yoff: dict[tuple[int, int], int] = {}
    xlen = ylen = 0
    for i in range(n):
        x0, y0, x1, y1 = (int(v) for v in views.windows[i])
        cw, ch = (int(v) for v in views.content[i])
        kx, ky = (x1 - x0, cw), (y1 - y0, ch)
        if kx not in xoff:
            xoff[kx] = xlen
            xparts.append(axis_table(kx[0], cw, horizontal=True))
            xlen += cw
        if ky not in yoff:
            yoff[ky] = ylen
            yparts.append(axis_table(ky[0], ch, horizontal=False))
            ylen += ch
        params[i] = (x0, y0, cw, ch, int(bool(views.flipped[i])), xoff[kx], yoff[ky], 0)
    empty = np.zeros((0, 4), np.int32)
    return ViewTables(
        params, np.concatenate(xparts) if xparts else empty, np.concatenate(yparts) if yparts else empty
    )


def output_lut(dtype: npt.DTypeLike) -> np.ndarray:
    """(256,) value of each uint8 level in the model's input type, computed as the CPU path computes it."""
    dtype = np.dtype(dtype)
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype: expected float32 or float16, found {dtype}")
    lut = np.empty(256, dtype)
    np.multiply(np.arange(256, dtype=np.uint8), 1.0 / 255.0, out=lut, casting="unsafe")
    return lut


def vertical_round(h0: np.ndarray, h1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit vertical pass (SIMD rounding) on int64 inputs; returns uint8."""
    v = ((((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16) + 2) >> 2
    return np.clip(v, 0, 255).astype(np.uint8)


def resize_linear_u8(crop: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """cv2.resize(crop, size_wh, interpolation=cv2.INTER_LINEAR) for uint8 (H, W, C), by the kernel's arithmetic."""
    if crop.dtype != np.uint8 or crop.ndim != 3:
        raise ValueError(f"crop: expected an (H, W, C) uint8 array, found shape {crop.shape} of {crop.dtype}")
    dw, dh = (int(v) for v in size_wh)
    xt = axis_table(crop.shape[1], dw, horizontal=True).astype(np.int64)
    yt = axis_table(crop.shape[0], dh, horizontal=False).astype(np.int64)
    src = crop.astype(np.int64)
    rows = src[:, xt[:, 0]] * xt[None, :, 2, None] + src[:, xt[:, 1]] * xt[None, :, 3, None]  # (H, dw, C)
    return vertical_round(rows[yt[:, 0]], rows[yt[:, 1]], yt[:, 2, None, None], yt[:, 3, None, None])


def preprocess_reference(
    image: np.ndarray, views: Views, input_hw: tuple[int, int], dtype: npt.DTypeLike = np.float32
) -> np.ndarray:
    """What preprocess.cu writes for these views, computed in NumPy from the same tables.

    Args:
        image: (H, W, 3) uint8 BGR image.
        views: Views of the image.
        input_hw: Model input height and width.
        dtype: float32 or float16.

    Returns:
        (N, 3, H, W) RGB in [0, 1] of dtype, padded with 114/255 outside each view's content.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 BGR array, found shape "
            f"{getattr(image, 'shape', None)} of {getattr(image, 'dtype', type(image).__name__)}"
        )
    ih, iw = (int(v) for v in input_hw)
    tables = build_view_tables(views, (image.shape[1], image.shape[0]), input_hw)
    lut = output_lut(dtype)
    out = np.empty((len(views), 3, ih, iw), lut.dtype)
    for i, (x0, y0, cw, ch, flip, xo, yo, _) in enumerate(tables.params.tolist()):
        xt = tables.xtab[xo : xo + cw].astype(np.int64)
        yt = tables.ytab[yo : yo + ch].astype(np.int64)
        if flip:
            xt = xt[::-1]
        src = image[y0:, x0:].astype(np.int64)
        rows = src[:, xt[:, 0]] * xt[None, :, 2, None] + src[:, xt[:, 1]] * xt[None, :, 3, None]
        u8 = np.full((ih, iw, 3), PAD_VALUE, np.uint8)
        u8[:ch, :cw] = vertical_round(
            rows[yt[:, 0]], rows[yt[:, 1]], yt[:, 2, None, None], yt[:, 3, None, None]
        )
        out[i] = lut[u8[:, :, ::-1].transpose(2, 0, 1)]
    return out


def score_threshold(conf: float, dtype: npt.DTypeLike) -> float:
    """The float32 threshold t for which the filter kernel's ``score > t`` keeps exactly what the CPU keeps.

    The CPU decoder compares an array of the model's output type with a Python float (``scores > conf``),
    and NumPy decides the precision of that comparison. Every value of that type other than c, the value
    nearest to conf, is on the same side of conf and of c; for c itself NumPy is asked.
    """
    dtype = np.dtype(dtype)
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype: expected float32 or float16, found {dtype}")
    c = np.asarray(conf).astype(dtype)
    t = np.float32(c)
    if bool(np.array([c], dtype) > conf):
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


def filter_reference(output: np.ndarray, count: int, conf: float) -> tuple[np.ndarray, np.ndarray]:
    """What filter.cu keeps: the anchors whose best class score passes the threshold, in anchor order.

    Args:
        output: (B, 4 + nc, N) model output.
        count: Batch items that hold real views.
        conf: Confidence threshold.

    Returns:
        ((K,) int64 flat index b * N + a, (K, 4 + nc) the candidates' columns, in the output's dtype).
        The kernel returns the same set in the order its atomic counter handed out; the host sorts it.
    """
    out = np.asarray(output)[:count]
    b, rows, n = out.shape
    best = out[:, 4:, :].max(axis=1).astype(np.float32)  # NaN propagates and is never kept, as on the CPU
    keep = best > np.float32(score_threshold(conf, out.dtype))
    idx = np.flatnonzero(keep.reshape(-1))
    vals = out.transpose(0, 2, 1).reshape(-1, rows)[idx]
    return idx.astype(np.int64), vals


def dense_candidates(idx: np.ndarray, vals: np.ndarray, count: int, anchors: int) -> np.ndarray:
    """Candidates back into the model's output layout, one column per candidate, zero-padded.

    Args:
        idx: (K,) flat indices b * anchors + a, in any order.
        vals: (K, 4 + nc) their columns.
        count: Views in the batch.
        anchors: Anchors per view (N of the model output).

    Returns:
        (count, 4 + nc, M) with each view's candidates in anchor order, M the most any view has
        (at least 1); padding columns are all zero, so their scores never pass a threshold >= 0.
    """
    idx = np.asarray(idx, np.int64).reshape(-1)
    vals = np.asarray(vals)
    if vals.ndim != 2 or len(vals) != len(idx):
        raise ValueError(
            f"vals: expected ({len(idx)}, 4 + nc) columns, one per index, found shape {vals.shape}"
        )
    if len(idx) and (idx.min() < 0 or idx.max() >= count * anchors):
        raise ValueError(
            f"idx: expected flat indices in [0, {count * anchors}), found {idx.min()}..{idx.max()}"
        )
    order = np.argsort(idx, kind="stable")
    idx, vals = idx[order], vals[order]
    view = idx // anchors
    counts = np.bincount(view, minlength=count)
    m = max(int(counts.max(initial=0)), 1)
    rank = np.arange(len(idx)) - (np.cumsum(counts) - counts)[view]
    dense = np.zeros((count, vals.shape[1], m), vals.dtype)
    dense[view, :, rank] = vals
    return dense
