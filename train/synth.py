"""Synthetic aerial scenes: terrain, vegetation, rocks, logs and small people with shadows.

No real drone photos can be downloaded where edgetile is developed, so tests, the demo and the demo
model are fed by these scenes. They imitate what makes search-and-rescue photos hard: people of
20–150 px in photos of several thousand pixels, in varied poses and clothing, among distractors of
similar size and colour (rocks, logs, bushes, bags, tents, animals), with shadows. Everything is NumPy
and OpenCV, and a scene is a pure function of its seed and config.

A detector trained on one way of drawing people learns that drawing, not people, so a person can be
drawn by several independent renderers (``SceneConfig.renderers``): "classic" (stick limbs of round
strokes), "limbs" (an articulated body of tapered polygons with textured clothing) and "blobs" (soft
shaded ellipses, supersampled). Validation can hold one renderer out of training and measure on it.
The defaults draw what the first version drew, seed for seed (the bundled sample depends on it);
``DIVERSE`` turns every kind of variety on: terrains, snow, straight-down views with long shadows,
people partly under trees, person-like distractors, motion and defocus blur, sensor noise, JPEG.

Annotations are written as Pascal VOC XML (the LADD layout), YOLO txt and COCO JSON.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.evaluation.annotations import voc_xml
from edgetile.runtime.geo import CameraPose  # NumPy and OpenCV only: pymap3d is imported by what needs it

CLASS_NAMES = ("person",)

# Ground colours (BGR) per season; each scene blends a few of them with low-frequency noise.
_SEASONS = {
    "summer": [(52, 110, 78), (40, 92, 62), (70, 120, 105), (60, 95, 110)],
    "spring": [(60, 110, 100), (70, 105, 120), (45, 90, 75), (90, 120, 130)],
    "autumn": [(40, 90, 120), (50, 100, 140), (45, 80, 95), (70, 95, 110)],
    "winter": [(225, 225, 220), (200, 200, 195), (170, 175, 172), (235, 235, 235)],
    # Fresh deep snow: bright, faintly blue, almost no ground showing.
    "snow": [(245, 242, 238), (235, 230, 225), (250, 248, 246), (228, 222, 214)],
}
_CLOTHING = [
    (30, 30, 200),
    (20, 120, 240),
    (200, 80, 30),
    (40, 40, 40),
    (60, 110, 60),
    (230, 230, 230),
    (30, 200, 230),
    (120, 120, 120),
    (20, 20, 20),
    (150, 60, 120),
    (90, 60, 40),
    (180, 150, 60),
]
_SKIN_HAIR = [(80, 120, 170), (60, 90, 130), (40, 60, 90), (30, 40, 50), (20, 20, 25), (110, 160, 200)]
_POSES = ("standing", "walking", "lying", "sitting", "arms_out")
_UPRIGHT = ("standing", "walking", "arms_out")

RENDERERS = ("classic", "limbs", "blobs")
Outfit = tuple[np.ndarray, np.ndarray]  # BGR float32 colours of the top and of the legs
TERRAINS = ("meadow", "field", "forest_edge", "rock", "water_edge")
VIEWS = ("oblique", "nadir")
DISTRACTORS = ("bag", "tent", "animal", "tarp")


@dataclass(frozen=True)
class SceneConfig:
    """What a synthetic scene contains.

    Attributes:
        width: Photo width in pixels.
        height: Photo height in pixels.
        people: Inclusive range of the number of people in a photo.
        person_px: Inclusive range of a person's length in pixels (head to feet when stretched).
        rocks: Range of the number of rocks.
        logs: Range of the number of fallen logs and branches.
        bushes: Range of the number of bushes and tree crowns.
        seasons: Seasons to draw from.
        empty_fraction: Probability that a photo has no people at all (negatives).
        renderers: Ways of drawing a person (RENDERERS), one chosen at random per person.
        terrains: Ground types (TERRAINS), one chosen per photo; "meadow" is the plain blend of
            season colours, the others add crop rows, a forest edge, bare rock or a shore.
        views: "oblique" draws upright people seen from the side of the photo; "nadir" draws them
            seen from straight above (mostly head and shoulders) with a shadow as long as the sun
            is low. One is chosen per person.
        distractors: Person-like objects (DISTRACTORS) added to the rocks, logs and bushes.
        objects: Range of the number of those distractors when any are named.
        occlusion: Probability that a tree crown covers part of a person (at most about half).
        blur: Probability that the photo is blurred by camera motion or defocus.
        noise: Range of the sensor noise's standard deviation in grey levels.
        jpeg_quality: Range of the JPEG quality the photo is compressed with in memory, or None.
    """

    width: int = 4000
    height: int = 3000
    people: tuple[int, int] = (2, 8)
    person_px: tuple[int, int] = (20, 150)
    rocks: tuple[int, int] = (20, 60)
    logs: tuple[int, int] = (10, 30)
    bushes: tuple[int, int] = (30, 120)
    seasons: tuple[str, ...] = ("summer", "spring", "autumn", "winter")
    empty_fraction: float = 0.0
    renderers: tuple[str, ...] = ("classic",)
    terrains: tuple[str, ...] = ("meadow",)
    views: tuple[str, ...] = ("oblique",)
    distractors: tuple[str, ...] = ()
    objects: tuple[int, int] = (6, 20)
    occlusion: float = 0.0
    blur: float = 0.0
    noise: tuple[float, float] = (2.0, 5.0)
    jpeg_quality: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError(f"width and height: expected at least 64 px, found {self.width}x{self.height}")
        for name in ("people", "person_px", "rocks", "logs", "bushes", "objects"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name}: expected a range (lo, hi) with 0 <= lo <= hi, found {(lo, hi)}")
        if self.person_px[0] < 8:
            raise ValueError(f"person_px: expected people of at least 8 px, found {self.person_px}")
        for name, known in (
            ("seasons", tuple(_SEASONS)),
            ("renderers", RENDERERS),
            ("terrains", TERRAINS),
            ("views", VIEWS),
        ):
            found = getattr(self, name)
            if not found or set(found) - set(known):
                raise ValueError(f"{name}: expected some of {list(known)}, found {list(found)}")
        if set(self.distractors) - set(DISTRACTORS):
            raise ValueError(
                f"distractors: expected some of {list(DISTRACTORS)}, found {list(self.distractors)}"
            )
        for name in ("empty_fraction", "occlusion", "blur"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], found {v}")
        if not 0.0 <= self.noise[0] <= self.noise[1]:
            raise ValueError(f"noise: expected a range (lo, hi) with 0 <= lo <= hi, found {self.noise}")
        q = self.jpeg_quality
        if q is not None and not 1 <= q[0] <= q[1] <= 100:
            raise ValueError(f"jpeg_quality: expected None or a range within 1..100, found {q}")


@dataclass
class Scene:
    """One synthetic photo and its ground truth.

    Attributes:
        image: (H, W, 3) uint8 BGR photo.
        boxes: (N, 4) float32 boxes x1, y1, x2, y2 in pixels, tight around each person.
        class_ids: (N,) int64 class indices into CLASS_NAMES.
        poses: One pose name per person.
        seed: The seed that made it.
        renderers: One renderer name per person.
        views: One view ("oblique" or "nadir") per person.
        occluded: Per person, whether a tree crown covers part of them.
        season: The photo's season.
        terrain: The photo's terrain type.
        objects: How many of each distractor (bush, rock, log and DISTRACTORS) were drawn.
    """

    image: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    poses: list[str] = field(default_factory=list)
    seed: int = 0
    renderers: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    occluded: list[bool] = field(default_factory=list)
    season: str = ""
    terrain: str = ""
    objects: dict[str, int] = field(default_factory=dict)


def _noise_field(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Smooth value noise in [0, 1] of shape (h, w), built by upsampling coarse random grids."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = cells * (2**o)
        gh, gw = max(2, int(round(n * h / max(h, w)))), max(2, int(round(n * w / max(h, w))))
        grid = rng.random((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _terrain(rng: np.random.Generator, h: int, w: int, season: str) -> np.ndarray:
    colors = np.array(_SEASONS[season], np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = colors[0]
    for c in colors[1:]:
        m = _noise_field(rng, h, w, cells=int(rng.integers(3, 9)))
        m = np.clip((m - rng.uniform(0.4, 0.7)) * 4.0, 0, 1)[..., None]
        img = img * (1 - m) + c * m
    # Fine texture: grass blades, gravel, snow crust.
    fine = rng.normal(0, 1, (h // 2 + 1, w // 2 + 1)).astype(np.float32)
    fine = cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR)[:h, :w]
    img += (fine * rng.uniform(6, 14))[..., None]
    return img


def _darken(img: np.ndarray, mask: np.ndarray, x: int, y: int, strength: float) -> None:
    """Multiply img under an alpha mask placed at (x, y) by (1 - strength * mask), clipped at edges."""
    h, w = mask.shape
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    m = mask[y0 - y : y1 - y, x0 - x : x1 - x, None]
    img[y0:y1, x0:x1] *= 1.0 - strength * m


def _paste(img: np.ndarray, patch: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    h, w = mask.shape
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    m = mask[y0 - y : y1 - y, x0 - x : x1 - x, None]
    p = patch[y0 - y : y1 - y, x0 - x : x1 - x]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - m) + p * m


def _shade(patch: np.ndarray, mask: np.ndarray, light: tuple[float, float], amount: float) -> np.ndarray:
    """Brighten the lit side of a blob and darken the other, so objects look round from above."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = ((xx - w / 2) * light[0] + (yy - h / 2) * light[1]) / max(h, w)
    return patch * (1.0 + amount * g[..., None])


def _blob(rng: np.random.Generator, size: int, lobes: int) -> np.ndarray:
    """An irregular round mask of about size x size px, soft-edged, float32 in [0, 1]."""
    s = size + 4
    m = np.zeros((s, s), np.uint8)
    for _ in range(lobes):
        r = int(size * rng.uniform(0.2, 0.4))
        cx, cy = (int(s / 2 + rng.uniform(-0.25, 0.25) * size) for _ in range(2))
        cv2.circle(m, (cx, cy), max(r, 1), 255, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(m, (3, 3), 0).astype(np.float32) / 255.0


def _draw_person(
    rng: np.random.Generator, length: int, pose: str, outfit: Outfit | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """The "classic" renderer: one person of round strokes, head at the top, on a transparent canvas.

    An outfit (top and legs colours) replaces the drawn colours, so that a group can dress alike.

    Returns:
        (patch (h, w, 3) float32 BGR, mask (h, w) float32 alpha, the neck's row).
    """
    L = float(length)
    w = int(L * 1.1) + 8
    h = int(L * 1.1) + 8
    canvas = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    top = np.array(_CLOTHING[rng.integers(len(_CLOTHING))], np.float32)
    legs = np.array(_CLOTHING[rng.integers(len(_CLOTHING))], np.float32) * rng.uniform(0.5, 1.0)
    head = np.array(_SKIN_HAIR[rng.integers(len(_SKIN_HAIR))], np.float32)
    if outfit is not None:
        top, legs = outfit
    cx = w / 2
    y0 = (h - L) / 2
    head_r = max(L * 0.075, 1.5)
    torso_w = max(L * 0.22, 2.0)
    limb = max(int(round(L * 0.08)), 1)

    def seg(m: np.ndarray, p: tuple[float, float], q: tuple[float, float], t: int, color: np.ndarray) -> None:
        pi, qi = (int(p[0] * 16), int(p[1] * 16)), (int(q[0] * 16), int(q[1] * 16))
        cv2.line(m, pi, qi, 255, t, cv2.LINE_AA, shift=4)
        layer = np.zeros_like(mask)
        cv2.line(layer, pi, qi, 255, t, cv2.LINE_AA, shift=4)
        a = layer.astype(np.float32)[..., None] / 255.0
        canvas[:] = canvas * (1 - a) + color * a

    neck = (cx, y0 + 2 * head_r)
    fold = 0.6 if pose == "sitting" else 1.0
    hip = (cx, y0 + 2 * head_r + L * 0.36 * fold)
    foot_y = y0 + L * (0.62 if pose == "sitting" else 1.0)
    spread = {"standing": 0.05, "walking": 0.16, "lying": 0.04, "sitting": 0.25, "arms_out": 0.1}[pose]
    # Legs, then torso, then arms, then head: later parts cover earlier ones.
    for side in (-1, 1):
        knee = (cx + side * L * spread * 0.6, (hip[1] + foot_y) / 2)
        foot = (cx + side * L * spread, foot_y - limb / 2)
        seg(mask, hip, knee, limb + 1, legs)
        seg(mask, knee, foot, limb, legs)
    seg(mask, neck, hip, int(torso_w), top)
    arm_len = L * 0.33
    for side in (-1, 1):
        sh = (cx + side * torso_w * 0.45, neck[1] + limb)
        if pose == "arms_out":
            ang = math.radians(rng.uniform(-40, 30))
            hand = (sh[0] + side * arm_len * math.cos(ang), sh[1] + arm_len * math.sin(ang))
        else:
            hand = (sh[0] + side * L * rng.uniform(0.03, 0.1), sh[1] + arm_len)
        seg(mask, sh, hand, max(limb - 1, 1), top)
    hc = (cx, y0 + head_r)
    cv2.circle(mask, (int(hc[0] * 16), int(hc[1] * 16)), int(head_r * 16), 255, -1, cv2.LINE_AA, shift=4)
    layer = np.zeros_like(mask)
    cv2.circle(layer, (int(hc[0] * 16), int(hc[1] * 16)), int(head_r * 16), 255, -1, cv2.LINE_AA, shift=4)
    a = layer.astype(np.float32)[..., None] / 255.0
    canvas[:] = canvas * (1 - a) + head * a
    # Fabric shading, so the figure is not a flat sticker.
    canvas *= rng.uniform(0.85, 1.1, 3).astype(np.float32)
    return canvas, mask.astype(np.float32) / 255.0, neck[1]


def _garment_colour(rng: np.random.Generator) -> np.ndarray:
    """A clothing colour (BGR) from the whole range people wear: vivid, dull, dark or pale."""
    kind = rng.random()
    if kind < 0.4:  # vivid jackets, the colours searchers hope for
        hsv = (rng.uniform(0, 180), rng.uniform(150, 255), rng.uniform(120, 255))
    elif kind < 0.75:  # earth tones and camouflage
        hsv = (rng.uniform(5, 80), rng.uniform(20, 140), rng.uniform(40, 150))
    elif kind < 0.9:  # black, navy, dark grey
        hsv = (rng.uniform(0, 180), rng.uniform(0, 120), rng.uniform(10, 60))
    else:  # white, beige, light grey
        hsv = (rng.uniform(0, 180), rng.uniform(0, 50), rng.uniform(170, 250))
    px = np.uint8([[[int(hsv[0]) % 180, int(hsv[1]), int(hsv[2])]]])
    return cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray, scale: float) -> np.ndarray:
    """A fabric of one colour over an (h, w) canvas: plain, stripes, check, camouflage or a gradient."""
    kind = ("plain", "stripes", "check", "camo", "gradient")[int(rng.integers(5))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = max(2.5, scale * rng.uniform(0.08, 0.2))
    if kind == "stripes":
        a = rng.uniform(0, math.pi)
        f = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0).astype(np.float32)
        f = 0.65 + 0.5 * f
    elif kind == "check":
        f = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
        f = 0.7 + 0.45 * f
    elif kind == "camo":
        f = 0.55 + 0.8 * (
            _noise_field(rng, h, w, cells=max(2, int(max(h, w) / max(period, 1.0))), octaves=2) > 0.5
        )
    elif kind == "gradient":
        f = 0.7 + 0.5 * yy / max(h - 1, 1)
    else:
        f = np.ones((h, w), np.float32)
    second = _garment_colour(rng) if kind in ("stripes", "check") and rng.random() < 0.5 else None
    out = colour * f[..., None]
    if second is not None:
        out = np.where(f[..., None] > 0.9, second, colour)
    return out.astype(np.float32)


def _skeleton(rng: np.random.Generator, L: float, pose: str, cx: float, y0: float) -> dict:
    """Joint positions of a body of length L standing at (cx, y0) head top, for the given pose."""
    head_r = max(L * rng.uniform(0.065, 0.09), 1.5)
    shoulder = L * rng.uniform(0.19, 0.27)
    hip_w = shoulder * rng.uniform(0.65, 0.9)
    neck = np.array((cx, y0 + 2 * head_r))
    torso = L * rng.uniform(0.28, 0.33)
    thigh, shin = L * 0.24, L * 0.23
    upper_arm, fore_arm = L * 0.16, L * 0.15
    if pose == "sitting":
        # Thighs point at the camera (foreshortened), shins hang or stretch out.
        thigh, torso = thigh * rng.uniform(0.3, 0.5), torso * 0.9
    hip = neck + (0.0, torso)
    legs = {
        "standing": (rng.uniform(2, 7), rng.uniform(2, 7), 0.0, 0.0),
        "lying": (rng.uniform(0, 15), rng.uniform(0, 15), rng.uniform(0, 20), rng.uniform(0, 20)),
        "arms_out": (rng.uniform(3, 12), rng.uniform(3, 12), 0.0, 0.0),
        "walking": (rng.uniform(12, 28), -rng.uniform(12, 28), rng.uniform(0, 10), -rng.uniform(10, 35)),
        "sitting": (rng.uniform(10, 35), rng.uniform(10, 35), rng.uniform(-20, 20), rng.uniform(-20, 20)),
    }[pose]
    if pose == "arms_out":
        arms = (rng.uniform(60, 120), rng.uniform(60, 120), rng.uniform(-30, 30), rng.uniform(-30, 30))
    elif pose == "walking":
        arms = (-legs[1] * 0.8, -legs[0] * 0.8, rng.uniform(5, 30), rng.uniform(5, 30))
    elif pose == "lying":
        arms = (rng.uniform(5, 150), rng.uniform(5, 150), rng.uniform(0, 60), rng.uniform(0, 60))
    else:
        arms = (rng.uniform(5, 20), rng.uniform(5, 20), rng.uniform(0, 25), rng.uniform(0, 25))

    def step(p: np.ndarray, deg: float, n: float, side: int) -> np.ndarray:
        a = math.radians(deg)
        return p + (side * n * math.sin(a), n * math.cos(a))

    j: dict = {"head": neck - (0.0, head_r), "head_r": head_r, "neck": neck, "hip": hip}
    j["shoulder_w"], j["hip_w"], j["limb"] = shoulder, hip_w, max(L * rng.uniform(0.06, 0.09), 1.0)
    for k, side in ((0, -1), (1, 1)):
        sh = neck + (side * shoulder * 0.5, L * 0.02)
        el = step(sh, arms[k], upper_arm, side)
        j[f"arm{k}"] = (sh, el, step(el, arms[k] + arms[2 + k], fore_arm, side))
        hp = hip + (side * hip_w * 0.35, 0.0)
        kn = step(hp, legs[k], thigh, side)
        j[f"leg{k}"] = (hp, kn, step(kn, legs[k] + legs[2 + k], shin, side))
    return j


def _draw_limbs(
    rng: np.random.Generator, length: int, pose: str, outfit: Outfit | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """The "limbs" renderer: an articulated body of tapered polygons, textured clothes, a head disc.

    An outfit (top and legs colours) replaces the drawn garment colours; the fabric's pattern stays drawn.

    Returns:
        (patch (h, w, 3) float32 BGR, mask (h, w) float32 alpha, the neck's row).
    """
    L = float(length)
    s = int(L * 1.5) + 8
    j = _skeleton(rng, L, pose, s / 2, (s - L) / 2)
    top_colour = _garment_colour(rng) if outfit is None else outfit[0]
    top = _texture(rng, s, s, top_colour, L)
    legs = _texture(rng, s, s, _garment_colour(rng) if outfit is None else outfit[1], L)
    skin = np.array(_SKIN_HAIR[int(rng.integers(len(_SKIN_HAIR)))], np.float32)
    hair = np.array(_SKIN_HAIR[int(rng.integers(3, len(_SKIN_HAIR)))], np.float32)
    canvas = np.zeros((s, s, 3), np.float32)
    alpha = np.zeros((s, s), np.float32)

    def put(layer: np.ndarray, colour: np.ndarray) -> None:
        a = layer.astype(np.float32)[..., None] / 255.0
        canvas[:] = canvas * (1 - a) + colour * a
        np.maximum(alpha, a[..., 0], out=alpha)

    def limb(p: np.ndarray, q: np.ndarray, w0: float, w1: float) -> np.ndarray:
        layer = np.zeros((s, s), np.uint8)
        d = q - p
        n = np.array((-d[1], d[0])) / max(float(np.hypot(*d)), 1e-6)
        poly = np.array([p + n * w0 / 2, q + n * w1 / 2, q - n * w1 / 2, p - n * w0 / 2])
        cv2.fillConvexPoly(layer, np.round(poly * 16).astype(np.int32), 255, cv2.LINE_AA, shift=4)
        for c, r in ((p, w0 / 2), (q, w1 / 2)):
            cv2.circle(
                layer, (int(c[0] * 16), int(c[1] * 16)), int(max(r, 0.5) * 16), 255, -1, cv2.LINE_AA, 4
            )
        return layer

    w = j["limb"]
    for k in (0, 1):
        hp, kn, ft = j[f"leg{k}"]
        put(limb(hp, kn, w * 1.5, w * 1.1), legs)
        put(limb(kn, ft, w * 1.1, w * 0.8), legs)
        shoe = np.zeros((s, s), np.uint8)
        cv2.circle(
            shoe, (int(ft[0] * 16), int(ft[1] * 16)), int(max(w * 0.55, 0.6) * 16), 255, -1, cv2.LINE_AA, 4
        )
        put(shoe, np.full(3, rng.uniform(15, 70), np.float32))
    neck, hip = j["neck"], j["hip"]
    sw, hw = j["shoulder_w"], j["hip_w"]
    torso = np.zeros((s, s), np.uint8)
    poly = np.array([neck + (-sw / 2, 0), neck + (sw / 2, 0), hip + (hw / 2, 0), hip + (-hw / 2, 0)])
    cv2.fillConvexPoly(torso, np.round(poly * 16).astype(np.int32), 255, cv2.LINE_AA, shift=4)
    put(torso, top)
    if rng.random() < 0.35:  # a backpack: a darker block on the back, seen from above
        pack = np.zeros((s, s), np.uint8)
        c = neck + (0.0, (hip[1] - neck[1]) * 0.45)
        half = np.array((sw * 0.35, (hip[1] - neck[1]) * 0.35))
        cv2.rectangle(
            pack,
            tuple(np.round((c - half) * 16).astype(int)),
            tuple(np.round((c + half) * 16).astype(int)),
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        put(pack, _garment_colour(rng) * 0.8)
    for k in (0, 1):
        sh, el, hd = j[f"arm{k}"]
        put(limb(sh, el, w * 1.1, w * 0.9), top)
        put(limb(el, hd, w * 0.9, w * 0.7), top * 0.9)
        hand = np.zeros((s, s), np.uint8)
        cv2.circle(
            hand, (int(hd[0] * 16), int(hd[1] * 16)), int(max(w * 0.4, 0.5) * 16), 255, -1, cv2.LINE_AA, 4
        )
        put(hand, skin)
    hc, hr = j["head"], j["head_r"]
    head = np.zeros((s, s), np.uint8)
    cv2.circle(head, (int(hc[0] * 16), int(hc[1] * 16)), int(hr * 16), 255, -1, cv2.LINE_AA, shift=4)
    put(head, skin)
    cap = np.zeros((s, s), np.uint8)
    if rng.random() < 0.3:  # a hat or hood in a garment colour
        cv2.ellipse(
            cap,
            (int(hc[0] * 16), int(hc[1] * 16)),
            (int(hr * 1.25 * 16), int(hr * 1.1 * 16)),
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        put(cap, _garment_colour(rng))
    else:  # hair on the crown
        cv2.ellipse(
            cap,
            (int(hc[0] * 16), int((hc[1] - hr * 0.3) * 16)),
            (int(hr * 16), int(hr * 0.75 * 16)),
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        put(cap, hair)
    a = rng.uniform(0, 2 * math.pi)
    canvas = _shade(canvas, alpha, (math.cos(a), math.sin(a)), 0.5)
    return canvas, alpha, float(neck[1])


def _draw_blobs(
    rng: np.random.Generator, length: int, pose: str, outfit: Outfit | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """The "blobs" renderer: soft shaded ellipses for head, torso and limbs, drawn at twice the size.

    An outfit (top and legs colours) replaces the drawn colours.

    Returns:
        (patch (h, w, 3) float32 BGR, mask (h, w) float32 alpha, the neck's row).
    """
    k = 2  # supersampling: drawn at k times the size, then shrunk, so edges are soft as in a photo
    L = float(length) * k
    s = int(L * 1.5) + 8 * k
    j = _skeleton(rng, L, pose, s / 2, (s - L) / 2)
    top, legs = (_garment_colour(rng), _garment_colour(rng)) if outfit is None else outfit
    skin = np.array(_SKIN_HAIR[int(rng.integers(len(_SKIN_HAIR)))], np.float32) * rng.uniform(0.8, 1.2)
    canvas = np.zeros((s, s, 3), np.float32)
    alpha = np.zeros((s, s), np.float32)
    light = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(light), math.sin(light)

    def ellipse(c: np.ndarray, axes: tuple[float, float], angle: float, colour: np.ndarray) -> None:
        layer = np.zeros((s, s), np.uint8)
        cv2.ellipse(
            layer,
            (int(c[0] * 16), int(c[1] * 16)),
            (int(max(axes[0], 1.0) * 16), int(max(axes[1], 1.0) * 16)),
            angle,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        a = layer.astype(np.float32) / 255.0
        # Each part lit from one side: brighter towards the light, darker away from it.
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        g = ((xx - c[0]) * lx + (yy - c[1]) * ly) / max(axes[0], axes[1], 1.0)
        part = colour * (1.0 + 0.35 * np.clip(g, -1, 1))[..., None]
        canvas[:] = canvas * (1 - a[..., None]) + part * a[..., None]
        np.maximum(alpha, a, out=alpha)

    def segment(p: np.ndarray, q: np.ndarray, width: float, colour: np.ndarray) -> None:
        d = q - p
        ellipse(
            (p + q) / 2,
            (float(np.hypot(*d)) / 2 + width * 0.3, width / 2),
            math.degrees(math.atan2(d[1], d[0])),
            colour,
        )

    w = j["limb"] * rng.uniform(1.1, 1.5)
    for i in (0, 1):
        hp, kn, ft = j[f"leg{i}"]
        segment(hp, kn, w * 1.3, legs)
        segment(kn, ft, w, legs * 0.9)
    neck, hip = j["neck"], j["hip"]
    ellipse(
        (neck + hip) / 2,
        (j["shoulder_w"] / 2 * rng.uniform(0.95, 1.15), (hip[1] - neck[1]) / 2 * 1.1),
        0,
        top,
    )
    for i in (0, 1):
        sh, el, hd = j[f"arm{i}"]
        segment(sh, el, w, top)
        segment(el, hd, w * 0.85, top * 0.9)
    hc, hr = j["head"], j["head_r"]
    if rng.random() < 0.4:  # a hood behind the head
        ellipse(hc + (0.0, hr * 0.2), (hr * 1.35, hr * 1.3), 0, top * 0.85)
    ellipse(hc, (hr, hr * rng.uniform(1.0, 1.15)), 0, skin)
    canvas += rng.normal(0, 6, canvas.shape).astype(np.float32) * (alpha[..., None] > 0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6 * k)
    out = (s // k, s // k)
    return (
        cv2.resize(canvas, out, interpolation=cv2.INTER_AREA),
        cv2.resize(alpha, out, interpolation=cv2.INTER_AREA),
        float(neck[1]) / k,
    )


def _foreshorten(patch: np.ndarray, mask: np.ndarray, neck: float, f: float) -> tuple[np.ndarray, np.ndarray]:
    """An upright person seen from straight above: the head stays, the body below it shrinks to f."""
    n = int(round(neck))
    h = mask.shape[0]
    rows = max(1, int(round((h - n) * f)))
    w = mask.shape[1]
    body_p = cv2.resize(patch[n:], (w, rows), interpolation=cv2.INTER_AREA)
    body_m = cv2.resize(mask[n:], (w, rows), interpolation=cv2.INTER_AREA)
    return np.concatenate([patch[:n], body_p]), np.concatenate([mask[:n], body_m])


def _cast_shadow(
    img: np.ndarray, full: np.ndarray, foot: tuple[float, float], direction: tuple[float, float], k: float
) -> None:
    """Darken the long shadow of an upright body: its silhouette stretched k times along the sun's way."""
    h, w = full.shape
    stretched = cv2.resize(full, (w, max(1, int(round(h * k)))), interpolation=cv2.INTER_LINEAR)
    angle = math.degrees(math.atan2(-direction[0], -direction[1]))
    sh, sw = stretched.shape
    diag = int(math.ceil(math.hypot(sh, sw))) + 2
    M = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, 1.0)
    M[0, 2] += (diag - sw) / 2
    M[1, 2] += (diag - sh) / 2
    rot = cv2.warpAffine(stretched, M, (diag, diag), flags=cv2.INTER_LINEAR)
    fx, fy = M @ np.array((sw / 2, sh - 1.0, 1.0))  # where the feet went
    rot = cv2.GaussianBlur(rot, (0, 0), max(h / 60, 0.7))
    _darken(img, rot, int(foot[0] - fx), int(foot[1] - fy), 0.5)


def _region(rng: np.random.Generator, h: int, w: int, share: tuple[float, float]) -> np.ndarray:
    """A soft mask in [0, 1] covering about `share` of the photo on one side of a ragged edge."""
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx - w / 2) * math.cos(a) + (yy - h / 2) * math.sin(a)) / max(h, w)
    lo, hi = float(ramp.min()), float(ramp.max())
    ramp = (ramp - lo) / max(hi - lo, 1e-6)
    ragged = ramp + 0.25 * (_noise_field(rng, h, w, cells=int(rng.integers(4, 10))) - 0.5)
    cut = float(np.quantile(ragged[:: max(1, h // 64), :: max(1, w // 64)], 1 - rng.uniform(*share)))
    return np.clip((ragged - cut) * 40.0, 0, 1)


def _terrain_type(
    rng: np.random.Generator, img: np.ndarray, terrain: str, snowy: bool, light: tuple[float, float]
) -> None:
    """Turn the season's meadow into another ground type, in place."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if terrain == "field":
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 18)
        rows = np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period)
        m = _region(rng, h, w, (0.4, 0.9))[..., None]
        crop = np.array(
            [(90, 170, 200), (60, 85, 115), (60, 130, 90), (110, 180, 190)][int(rng.integers(4))], np.float32
        )
        if snowy:
            crop = np.array((230, 228, 225), np.float32)
        field_img = crop * (1 + 0.12 * rows[..., None]) + rng.normal(0, 5, (h, w, 1)).astype(np.float32)
        img[:] = img * (1 - m) + field_img * m
    elif terrain == "forest_edge":
        m = _region(rng, h, w, (0.2, 0.45))
        crowns = _noise_field(rng, h, w, cells=max(8, int(max(h, w) / rng.uniform(25, 60))), octaves=2)
        base = np.array((30, 65, 40) if not snowy else (60, 75, 65), np.float32) * rng.uniform(0.7, 1.2)
        canopy = base * (0.45 + 0.9 * crowns[..., None])
        if snowy:
            canopy = np.where(crowns[..., None] > 0.7, np.float32(215), canopy)
        img[:] = img * (1 - m[..., None]) + canopy * m[..., None]
        # The edge's shadow falls on the open ground on the far side from the sun.
        edge = cv2.GaussianBlur(m, (0, 0), 6)
        sh = np.roll(edge, (int(-light[1] * 20), int(-light[0] * 20)), axis=(0, 1))
        img *= (1 - 0.35 * np.clip(sh - m, 0, 1))[..., None]
    elif terrain == "rock":
        m = _region(rng, h, w, (0.5, 1.0))[..., None]
        g = rng.uniform(100, 165)
        tint = np.array((g, g * rng.uniform(0.95, 1.05), g * rng.uniform(1.0, 1.15)), np.float32)
        slabs = _noise_field(rng, h, w, cells=int(rng.integers(10, 30)), octaves=3)
        rock = tint * (0.6 + 0.7 * slabs[..., None]) + rng.normal(0, 7, (h, w, 1)).astype(np.float32)
        if snowy:
            rock = np.where(slabs[..., None] < 0.45, np.float32(225), rock)
        cracks = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(10, 40))):
            p = rng.uniform((0, 0), (w, h))
            pts = [p]
            for _ in range(int(rng.integers(3, 9))):
                pts.append(pts[-1] + rng.normal(0, 40, 2))
            cv2.polylines(cracks, [np.array(pts, np.int32)], False, 255, int(rng.integers(1, 4)), cv2.LINE_AA)
        rock *= (1 - 0.45 * cracks.astype(np.float32) / 255.0)[..., None]
        img[:] = img * (1 - m) + rock * m
    elif terrain == "water_edge":
        m = _region(rng, h, w, (0.2, 0.45))
        shore = np.clip(1 - np.abs(cv2.GaussianBlur(m, (0, 0), 3) - 0.5) * 2.2, 0, 1)[..., None]
        sand = np.array((140, 175, 190) if not snowy else (200, 200, 195), np.float32) * rng.uniform(
            0.85, 1.1
        )
        band = cv2.dilate(m, np.ones((int(rng.integers(15, 60)),) * 2, np.uint8))[..., None]
        img[:] = img * (1 - band) + (sand + rng.normal(0, 6, (h, w, 1)).astype(np.float32)) * band
        a = rng.uniform(0, math.pi)
        ripples = np.sin((xx * math.cos(a) + yy * math.sin(a)) / rng.uniform(3, 8))
        if snowy:  # ice
            water = np.array((205, 200, 185), np.float32) * (1 + 0.03 * ripples[..., None])
        else:
            water = (
                np.array((95, 75, 40), np.float32) * rng.uniform(0.7, 1.3) * (1 + 0.06 * ripples[..., None])
            )
        img[:] = img * (1 - m[..., None]) + water * m[..., None]
        img += (shore * 12).astype(np.float32)


def _distractor(
    rng: np.random.Generator, kind: str, light: tuple[float, float], snowy: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One person-like object (bag, tent, animal, tarp): (patch (h, w, 3) float32, mask (h, w) float32)."""
    if kind == "bag":
        size = rng.uniform(10, 40)
        s = int(size * 1.4) + 6
        m = np.zeros((s, s), np.uint8)
        bw, bh = size / 2, size * rng.uniform(0.3, 0.45)
        c = (s / 2, s / 2)
        cv2.ellipse(
            m,
            (int(c[0] * 16), int(c[1] * 16)),
            (int(bw * 16), int(bh * 16)),
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        cv2.rectangle(
            m,
            (int((c[0] - bw * 0.8) * 16), int((c[1] - bh) * 16)),
            (int((c[0] + bw * 0.8) * 16), int((c[1] + bh) * 16)),
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        colour = _garment_colour(rng)
    elif kind == "tent":
        size = rng.uniform(35, 140)
        s = int(size * 1.1) + 6
        m = np.zeros((s, s), np.uint8)
        half = np.array((size / 2, size * rng.uniform(0.3, 0.45)))
        c = np.array((s / 2, s / 2))
        if rng.random() < 0.5:  # dome
            cv2.ellipse(
                m,
                (int(c[0] * 16), int(c[1] * 16)),
                (int(half[0] * 16), int(half[1] * 1.3 * 16)),
                0,
                0,
                360,
                255,
                -1,
                cv2.LINE_AA,
                4,
            )
        else:  # ridge tent
            cv2.rectangle(
                m,
                tuple(((c - half) * 16).astype(int)),
                tuple(((c + half) * 16).astype(int)),
                255,
                -1,
                cv2.LINE_AA,
                4,
            )
        colour = _garment_colour(rng)
        patch = np.broadcast_to(colour, (s, s, 3)).astype(np.float32).copy()
        patch[: s // 2] *= 1.15  # two faces of the roof, one in the sun
        patch[s // 2 :] *= 0.8
        cv2.line(
            patch,
            (int(c[0] - half[0]), s // 2),
            (int(c[0] + half[0]), s // 2),
            (30, 30, 30),
            max(1, int(size / 40)),
        )
        mf = m.astype(np.float32) / 255.0
        return patch, mf
    elif kind == "animal":
        size = rng.uniform(20, 150)
        s = int(size * 1.3) + 6
        m = np.zeros((s, s), np.uint8)
        c = np.array((s / 2, s / 2))
        body = (size * 0.33, size * rng.uniform(0.12, 0.18))
        cv2.ellipse(
            m,
            (int(c[0] * 16), int(c[1] * 16)),
            (int(body[0] * 16), int(body[1] * 16)),
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        head = c + (body[0] * 1.25, -body[1] * 0.3)
        cv2.line(
            m,
            (int((c[0] + body[0] * 0.7) * 16), int(c[1] * 16)),
            (int(head[0] * 16), int(head[1] * 16)),
            255,
            max(1, int(body[1] * 0.9)),
            cv2.LINE_AA,
            4,
        )
        cv2.ellipse(
            m,
            (int(head[0] * 16), int(head[1] * 16)),
            (int(body[1] * 0.7 * 16), int(body[1] * 0.5 * 16)),
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
        for dx in (-0.6, 0.6):  # legs, seen obliquely below the body
            x = c[0] + dx * body[0]
            cv2.line(
                m,
                (int(x * 16), int(c[1] * 16)),
                (int(x * 16), int((c[1] + body[1] * 1.8) * 16)),
                255,
                max(1, int(body[1] * 0.3)),
                cv2.LINE_AA,
                4,
            )
        cv2.line(
            m,
            (int((c[0] - body[0]) * 16), int(c[1] * 16)),
            (int((c[0] - body[0] * 1.4) * 16), int((c[1] + body[1]) * 16)),
            255,
            max(1, int(body[1] * 0.2)),
            cv2.LINE_AA,
            4,
        )
        colour = np.array(
            [(40, 60, 100), (20, 25, 30), (200, 205, 210), (70, 110, 150), (120, 125, 130)][
                int(rng.integers(5))
            ],
            np.float32,
        )
        colour = colour * rng.uniform(0.8, 1.2)
    else:  # tarp, blanket or clothes left on the ground
        size = rng.uniform(15, 80)
        s = int(size * 1.2) + 6
        m = np.zeros((s, s), np.uint8)
        pts = np.array(
            [
                (
                    s / 2 + math.cos(t) * size / 2 * rng.uniform(0.5, 1.0),
                    s / 2 + math.sin(t) * size / 2 * rng.uniform(0.5, 1.0),
                )
                for t in np.sort(rng.uniform(0, 2 * math.pi, 5))
            ]
        )
        cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        colour = _garment_colour(rng)
    mf = m.astype(np.float32) / 255.0
    patch = _shade(np.broadcast_to(colour, (*mf.shape, 3)).astype(np.float32), mf, light, 0.5)
    patch += rng.normal(0, 5, patch.shape).astype(np.float32)
    return patch, mf


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Motion blur (a short line kernel at any angle) or defocus blur (a disc kernel)."""
    if rng.random() < 0.5:
        n = int(rng.integers(3, 10))
        k = np.zeros((n, n), np.float32)
        a = rng.uniform(0, math.pi)
        c = (n - 1) / 2
        cv2.line(
            k,
            (int(round(c - math.cos(a) * c)), int(round(c - math.sin(a) * c))),
            (int(round(c + math.cos(a) * c)), int(round(c + math.sin(a) * c))),
            1.0,
            1,
            cv2.LINE_AA,
        )
    else:
        r = rng.uniform(1.0, 2.5)
        n = int(math.ceil(r)) * 2 + 1
        k = np.zeros((n, n), np.float32)
        cv2.circle(k, (n // 2, n // 2), int(round(r)), 1.0, -1, cv2.LINE_AA)
    return cv2.filter2D(img, -1, k / max(float(k.sum()), 1e-6))


_RENDER = {"limbs": _draw_limbs, "blobs": _draw_blobs}


def _rotate(patch: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    diag = int(math.ceil(math.hypot(h, w))) + 2
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    M[0, 2] += (diag - w) / 2
    M[1, 2] += (diag - h) / 2
    p = cv2.warpAffine(patch, M, (diag, diag), flags=cv2.INTER_LINEAR)
    m = cv2.warpAffine(mask, M, (diag, diag), flags=cv2.INTER_LINEAR)
    return p, m


@dataclass
class _Ground:
    """The ground of a photo (or of a flight's whole strip) before any person is drawn."""

    image: np.ndarray  # (H, W, 3) float32 BGR
    season: str
    terrain: str
    light: tuple[float, float]
    shadow_dir: tuple[float, float]
    shadow_k: float
    winter: bool
    objects: dict[str, int]


def _ground(  # noqa: C901 - the ground's layers in drawing order, each switched by its option
    rng: np.random.Generator, xr: np.random.Generator, cfg: SceneConfig, H: int, W: int
) -> _Ground:
    """Terrain, bushes, rocks, logs and distractors with their shadows, drawn from the scene's two streams."""

    def pick(options: tuple[str, ...]) -> str:
        return options[int(xr.integers(len(options)))] if len(options) > 1 else options[0]

    season = cfg.seasons[int(rng.integers(len(cfg.seasons)))]
    terrain = pick(cfg.terrains)
    img = _terrain(rng, H, W, season)
    sun = rng.uniform(0, 2 * math.pi)
    light = (math.cos(sun), math.sin(sun))
    shadow_dir = (-light[0], -light[1])
    winter = season in ("winter", "snow")
    if terrain != "meadow":
        _terrain_type(xr, img, terrain, winter, light)
    # A low sun casts long shadows: shadow length over height = 1 / tan(elevation).
    shadow_k = 1.0 / math.tan(math.radians(xr.uniform(20, 70)))

    def place(n_range: tuple[int, int]) -> int:
        return int(rng.integers(n_range[0], n_range[1] + 1))

    objects = {"bush": place(cfg.bushes)}
    # Bushes and tree crowns (with shadows), then rocks, then logs: distractors of people's size.
    for _ in range(objects["bush"]):
        size = int(rng.uniform(20, 220))
        m = _blob(rng, size, int(rng.integers(3, 8)))
        x, y = int(rng.uniform(-size / 2, W)), int(rng.uniform(-size / 2, H))
        _darken(img, m, x + int(shadow_dir[0] * size * 0.35), y + int(shadow_dir[1] * size * 0.35), 0.45)
        base = np.array((25, 70, 35) if not winter else (40, 60, 45), np.float32) * rng.uniform(0.7, 1.3)
        patch = _shade(np.broadcast_to(base, (*m.shape, 3)).astype(np.float32), m, light, 0.6)
        patch += rng.normal(0, 8, patch.shape).astype(np.float32)
        _paste(img, patch, m, x, y)
    objects["rock"] = place(cfg.rocks)
    for _ in range(objects["rock"]):
        size = int(rng.uniform(10, 90))
        m = _blob(rng, size, 2)
        x, y = int(rng.uniform(0, W)), int(rng.uniform(0, H))
        _darken(img, m, x + int(shadow_dir[0] * size * 0.2), y + int(shadow_dir[1] * size * 0.2), 0.4)
        g = rng.uniform(90, 190)
        base = np.array((g, g * rng.uniform(0.95, 1.05), g * rng.uniform(0.9, 1.1)), np.float32)
        _paste(img, _shade(np.broadcast_to(base, (*m.shape, 3)).astype(np.float32), m, light, 0.8), m, x, y)
    objects["log"] = place(cfg.logs)
    for _ in range(objects["log"]):
        length = rng.uniform(30, 260)
        thick = max(2, int(length * rng.uniform(0.04, 0.12)))
        s = int(length) + 8
        m = np.zeros((s, s), np.uint8)
        a = rng.uniform(0, math.pi)
        c = s / 2
        p = (int(c - math.cos(a) * length / 2), int(c - math.sin(a) * length / 2))
        q = (int(c + math.cos(a) * length / 2), int(c + math.sin(a) * length / 2))
        cv2.line(m, p, q, 255, thick, cv2.LINE_AA)
        mf = m.astype(np.float32) / 255.0
        x, y = int(rng.uniform(0, W)), int(rng.uniform(0, H))
        _darken(img, mf, x + int(shadow_dir[0] * thick), y + int(shadow_dir[1] * thick), 0.4)
        base = np.array((40, 70, 100), np.float32) * rng.uniform(0.6, 1.4)
        _paste(img, np.broadcast_to(base, (s, s, 3)).astype(np.float32), mf, x, y)
    for kind in cfg.distractors:
        objects[kind] = 0
    for _ in range(int(xr.integers(cfg.objects[0], cfg.objects[1] + 1)) if cfg.distractors else 0):
        kind = pick(cfg.distractors)
        objects[kind] += 1
        patch, m = _distractor(xr, kind, light, winter)
        patch, m = _rotate(patch, m, xr.uniform(0, 360))
        x, y = int(xr.uniform(0, W)), int(xr.uniform(0, H))
        off = m.shape[0] * 0.15 * min(shadow_k, 1.5)
        _darken(
            img,
            cv2.GaussianBlur(m, (0, 0), 1.0),
            x + int(shadow_dir[0] * off),
            y + int(shadow_dir[1] * off),
            0.45,
        )
        _paste(img, patch, m, x, y)

    return _Ground(img, season, terrain, light, shadow_dir, shadow_k, winter, objects)


def make_scene(seed: int, config: SceneConfig | None = None) -> Scene:  # noqa: C901 - one scene's layers in drawing order, each switched by its option
    """Make one synthetic aerial photo with its ground truth.

    Args:
        seed: The scene is a pure function of this seed and the config.
        config: What to draw; defaults to a 4000x3000 photo with 2-8 people of 20-150 px.

    Returns:
        The Scene, boxes tight around every visible person.
    """
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    # Every kind of variety added after the first version draws from its own stream, so the first
    # version's scenes (and the bundled sample) stay the same seed for seed under the defaults.
    xr = np.random.default_rng([seed, 1])

    def pick(options: tuple[str, ...]) -> str:
        return options[int(xr.integers(len(options)))] if len(options) > 1 else options[0]

    H, W = cfg.height, cfg.width
    g = _ground(rng, xr, cfg, H, W)
    img, season, terrain, light, shadow_dir, shadow_k, winter = (
        g.image,
        g.season,
        g.terrain,
        g.light,
        g.shadow_dir,
        g.shadow_k,
        g.winter,
    )
    objects = g.objects

    def place(n_range: tuple[int, int]) -> int:
        return int(rng.integers(n_range[0], n_range[1] + 1))

    boxes: list[list[float]] = []
    poses: list[str] = []
    renderers: list[str] = []
    views: list[str] = []
    occluded: list[bool] = []
    n_people = 0 if rng.random() < cfg.empty_fraction else place(cfg.people)
    centres: list[tuple[float, float, float]] = []
    for _ in range(n_people):
        length = int(rng.integers(cfg.person_px[0], cfg.person_px[1] + 1))
        pose = _POSES[int(rng.integers(len(_POSES)))]
        renderer, view = pick(cfg.renderers), pick(cfg.views)
        if renderer == "classic":
            patch, m, neck = _draw_person(rng, length, pose)
        else:
            patch, m, neck = _RENDER[renderer](xr, length, pose)
        nadir = view == "nadir" and pose in _UPRIGHT
        full = m
        # Oblique photos show standing people roughly upright; lying people lie any way.
        angle = rng.uniform(0, 360) if pose == "lying" else rng.normal(0, 25)
        if nadir:
            # From straight above a standing person is head, shoulders and a long shadow.
            patch, m = _foreshorten(patch, m, neck, xr.uniform(0.15, 0.45))
            angle = xr.uniform(0, 360)
        patch, m = _rotate(patch, m, angle)
        ys, xs = np.nonzero(m > 0.25)
        if len(xs) == 0:
            continue
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        # Keep people fully inside the photo and apart from each other, by rejection sampling.
        for _attempt in range(50):
            x = int(rng.uniform(-bx0 + 2, W - bx1 - 2))
            y = int(rng.uniform(-by0 + 2, H - by1 - 2))
            cxp, cyp = x + (bx0 + bx1) / 2, y + (by0 + by1) / 2
            r = max(bx1 - bx0, by1 - by0)
            if all(math.hypot(cxp - a, cyp - b) > (r + rr) * 0.75 for a, b, rr in centres):
                break
        else:
            continue
        centres.append((cxp, cyp, r))
        if nadir:
            _cast_shadow(img, full, (cxp, cyp), shadow_dir, shadow_k)
        else:
            sh = cv2.GaussianBlur(m, (0, 0), max(length / 40, 0.8))
            off = length * rng.uniform(0.15, 0.4)
            _darken(img, sh, x + int(shadow_dir[0] * off), y + int(shadow_dir[1] * off), 0.5)
        _paste(img, patch, m, x, y)
        covered = (
            cfg.occlusion > 0 and xr.random() < cfg.occlusion and _occlude(xr, img, m, x, y, light, winter)
        )
        boxes.append([x + bx0, y + by0, x + bx1, y + by1])
        poses.append(pose)
        renderers.append(renderer)
        views.append("nadir" if nadir else "oblique")
        occluded.append(bool(covered))

    # Camera: slight blur and sensor noise, then motion or defocus blur and JPEG when asked.
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.9))
    if cfg.blur > 0 and xr.random() < cfg.blur:
        img = _camera(xr, img)
    img += rng.normal(0, rng.uniform(*cfg.noise), (H, W, 1)).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if cfg.jpeg_quality is not None:
        q = int(xr.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        out = cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Scene(
        out,
        b,
        np.zeros(len(b), np.int64),
        poses,
        seed,
        renderers=renderers,
        views=views,
        occluded=occluded,
        season=season,
        terrain=terrain,
        objects=objects,
    )


def _occlude(
    rng: np.random.Generator,
    img: np.ndarray,
    person: np.ndarray,
    x: int,
    y: int,
    light: tuple[float, float],
    snowy: bool,
) -> bool:
    """Put a tree crown over part of a person pasted at (x, y); False when no crown left enough showing."""
    ys, xs = np.nonzero(person > 0.25)
    r = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    area = float((person > 0.25).sum())
    for _attempt in range(6):
        size = int(r * rng.uniform(0.7, 1.4)) + 4
        crown = _blob(rng, size, int(rng.integers(3, 7)))
        a = rng.uniform(0, 2 * math.pi)
        d = r * rng.uniform(0.45, 0.8)
        cx = x + (xs.min() + xs.max()) / 2 + math.cos(a) * d - crown.shape[1] / 2
        cy = y + (ys.min() + ys.max()) / 2 + math.sin(a) * d - crown.shape[0] / 2
        cxi, cyi = int(cx), int(cy)
        # Share of the person under the crown, in photo coordinates.
        canvas = np.zeros((person.shape[0], person.shape[1]), np.float32)
        _paste(canvas[..., None], np.ones((*crown.shape, 1), np.float32), crown, cxi - x, cyi - y)
        hidden = float(((person > 0.25) & (canvas > 0.5)).sum()) / max(area, 1.0)
        if 0.1 <= hidden <= 0.5:
            base = np.array((30, 75, 40) if not snowy else (45, 65, 50), np.float32) * rng.uniform(0.7, 1.3)
            patch = _shade(np.broadcast_to(base, (*crown.shape, 3)).astype(np.float32), crown, light, 0.6)
            patch += rng.normal(0, 8, patch.shape).astype(np.float32)
            _paste(img, patch, crown, cxi, cyi)
            return True
    return False


DIVERSE = SceneConfig(
    people=(3, 9),
    person_px=(15, 150),
    seasons=tuple(_SEASONS),
    renderers=RENDERERS,
    terrains=TERRAINS,
    views=VIEWS,
    distractors=DISTRACTORS,
    objects=(8, 30),
    occlusion=0.2,
    blur=0.3,
    noise=(1.5, 9.0),
    jpeg_quality=(60, 95),
)
"""Every kind of variety at once: the demo model's training and held-out scenes start from this."""


def write_dataset(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    config: SceneConfig | None = None,
    jpeg_quality: int = 92,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write `count` scenes with VOC XML, YOLO txt and COCO JSON annotations.

    Layout (LADD's, plus YOLO and COCO beside it)::

        out_dir/JPEGImages/scene_00000.jpg
        out_dir/Annotations/scene_00000.xml      Pascal VOC
        out_dir/ImageSets/Main/all.txt
        out_dir/labels/scene_00000.txt           YOLO: class cx cy w h, normalized
        out_dir/classes.txt
        out_dir/annotations.json                 COCO

    Args:
        out_dir: Folder to write into (created).
        count: Number of photos.
        seed: Scene i uses seed + i.
        config: Scene contents.
        jpeg_quality: JPEG quality of the photos.
        progress: Show a progress bar on stderr.
        workers: Processes drawing scenes at once (the files are the same for any number).

    Returns:
        The output folder.
    """
    if count < 0:
        raise ValueError(f"count: expected a non-negative number of scenes, found {count}")
    if workers < 1:
        raise ValueError(f"workers: expected at least 1 process, found {workers}")
    cfg = config or SceneConfig()
    out = Path(out_dir)
    coco = _start_dataset(out)
    stems: list[str] = []
    with scenes_in_order(range(seed, seed + count), cfg, workers) as scenes:
        it = scenes
        if progress:
            from tqdm import tqdm

            it = tqdm(scenes, desc="scenes", unit="photo", total=count)
        for sc in it:
            _write_scene(out, sc, jpeg_quality, coco, stems)
    _finish_dataset(out, coco, stems)
    return out


def _start_dataset(out: Path) -> dict:
    """The folders and class list of a VOC + YOLO + COCO dataset; returns its empty COCO dict."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)],
    }


def _finish_dataset(out: Path, coco: dict, stems: list[str]) -> None:
    """The photo list and the COCO file of a dataset written by _write_scene."""
    (out / "ImageSets" / "Main" / "all.txt").write_text("\n".join(stems) + ("\n" if stems else ""))
    (out / "annotations.json").write_text(json.dumps(coco))


@contextlib.contextmanager
def scenes_in_order(seeds: Iterable[int], config: SceneConfig, workers: int = 1) -> Iterator[Iterator[Scene]]:
    """Scenes of the given seeds, in order, drawn by `workers` processes (1: in this process)."""
    with _in_order(make_scene, seeds, config, workers) as scenes:
        yield scenes


def _write_scene(
    out: Path,
    sc: Scene,
    jpeg_quality: int,
    coco: dict,
    stems: list[str],
    stem: str | None = None,
    image_written: bool = False,
) -> None:
    """Write one scene's photo and annotations; add it to the COCO dict and the list of stems."""
    stem = stem or f"scene_{sc.seed:05d}"
    stems.append(stem)
    name = stem + ".jpg"
    h, w = sc.image.shape[:2]
    if not image_written and not cv2.imwrite(
        str(out / "JPEGImages" / name), sc.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    ):
        raise OSError(f"could not write {out / 'JPEGImages' / name}")
    names = [CLASS_NAMES[int(c)] for c in sc.class_ids]
    (out / "Annotations" / f"{stem}.xml").write_text(voc_xml(name, w, h, sc.boxes, names, decimals=0))
    lines = [
        f"{int(c)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
        f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
        for b, c in zip(sc.boxes, sc.class_ids)
    ]
    (out / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    img_id = len(coco["images"]) + 1
    coco["images"].append({"id": img_id, "file_name": name, "width": w, "height": h})
    for b, c in zip(sc.boxes, sc.class_ids):
        bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
        coco["annotations"].append(
            {
                "id": len(coco["annotations"]) + 1,
                "image_id": img_id,
                "category_id": int(c) + 1,
                "bbox": [float(b[0]), float(b[1]), bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
            }
        )


# --------------------------------------------------------------------------------------------------- flights

FLIGHT_SCENE = SceneConfig(
    width=2000,
    height=1500,
    seasons=DIVERSE.seasons,
    renderers=DIVERSE.renderers,
    terrains=DIVERSE.terrains,
    views=DIVERSE.views,
    distractors=DIVERSE.distractors,
    objects=DIVERSE.objects,
    occlusion=0.1,
    blur=DIVERSE.blur,
    noise=DIVERSE.noise,
    jpeg_quality=DIVERSE.jpeg_quality,
)
"""The photos of a flight: DIVERSE's variety at 2000x1500 (the people come from the FlightConfig)."""


@dataclass(frozen=True)
class FlightConfig:
    """A drone flying one straight line over a synthetic ground, photographing it with overlap.

    The ground is drawn once for the whole line (terrain, bushes, rocks, logs, person-like
    distractors), people stand on it at positions in metres, and every photo is a view of it: the same
    person keeps their clothes, body and renderer in every photo that sees them, so identities can
    be followed across photos. Each photo has its true pose (used to draw it) and the pose a drone
    would record, off by GNSS, attitude and altimeter errors (written into the photo's XMP).

    Attributes:
        photos: Number of photos along the line.
        altitude_m: Height above the (flat) ground, metres.
        overlap: Forward overlap: the share of a photo's length along the line that the next one shows too.
        focal_px: Focal length in pixels; the ground sampling distance is altitude_m / focal_px.
        heading_deg: Direction of flight in degrees from north (the photos' top points there);
            None draws one per flight.
        lat: Latitude of the first photo's centre, degrees.
        lon: Longitude of the first photo's centre, degrees.
        ground_alt_m: The ground's altitude above sea level, metres (AbsoluteAltitude = this + height).
        people: Range of the number of people on their own.
        groups: Range of the number of groups of similarly dressed people standing close together.
        group_size: Range of the number of people in a group.
        group_spacing_m: Range of the distance between a group member and the one they stand next to.
        walkers: Probability that a person (or a whole group) walks slowly between photos.
        speed_m: Range of a walker's displacement between consecutive photos, metres.
        body_m: Range of a person's length, metres (head to feet when stretched).
        jitter_m: One sigma of the true camera position's deviation from the line, metres.
        gps_sigma_m: One sigma of the recorded position's error, metres (per photo, independent).
        angle_sigma_deg: One sigma of the recorded yaw, pitch and roll's errors, degrees.
        alt_sigma_m: One sigma of the recorded height's error, metres.
        scene: The photos' size and the ground's variety (terrains, seasons, distractors, renderers,
            views, occlusion, blur, noise, JPEG); its people, person_px and empty_fraction are unused.
    """

    photos: int = 8
    altitude_m: float = 50.0
    overlap: float = 0.6
    focal_px: float = 1500.0
    heading_deg: float | None = None
    lat: float = 55.75
    lon: float = 37.62
    ground_alt_m: float = 150.0
    people: tuple[int, int] = (3, 8)
    groups: tuple[int, int] = (1, 3)
    group_size: tuple[int, int] = (2, 4)
    group_spacing_m: tuple[float, float] = (1.0, 2.5)
    walkers: float = 0.3
    speed_m: tuple[float, float] = (0.3, 1.5)
    body_m: tuple[float, float] = (1.5, 1.9)
    jitter_m: float = 1.0
    gps_sigma_m: float = 1.5
    angle_sigma_deg: float = 0.5
    alt_sigma_m: float = 1.0
    scene: SceneConfig = FLIGHT_SCENE

    def __post_init__(self) -> None:
        if self.photos < 1:
            raise ValueError(f"photos: expected at least 1, found {self.photos}")
        for name in ("altitude_m", "focal_px"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a positive number, found {v}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap: expected a fraction in [0, 1), found {self.overlap}")
        for name in ("people", "groups", "group_size"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name}: expected a range (lo, hi) with 0 <= lo <= hi, found {(lo, hi)}")
        if self.group_size[0] < 2:
            raise ValueError(f"group_size: expected groups of at least 2 people, found {self.group_size}")
        for name in ("group_spacing_m", "speed_m", "body_m"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi and math.isfinite(hi)):
                raise ValueError(f"{name}: expected a range (lo, hi) with 0 <= lo <= hi, found {(lo, hi)}")
        if self.body_m[0] <= 0:
            raise ValueError(f"body_m: expected people longer than 0 m, found {self.body_m}")
        if not 0.0 <= self.walkers <= 1.0:
            raise ValueError(f"walkers: expected a probability in [0, 1], found {self.walkers}")
        for name in ("jitter_m", "gps_sigma_m", "angle_sigma_deg", "alt_sigma_m"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a non-negative number, found {v}")
        if self.alt_sigma_m * 4 >= self.altitude_m:
            raise ValueError(
                f"alt_sigma_m: expected well under the altitude ({self.altitude_m} m), found {self.alt_sigma_m}"
            )

    @property
    def gsd_m(self) -> float:
        """Metres per pixel straight below the camera at the nominal altitude."""
        return self.altitude_m / self.focal_px


@dataclass
class FlightPerson:
    """One individual of a flight.

    Attributes:
        identity: The person's index in the flight (0-based).
        group: The index of their group, or None for a person on their own.
        renderer: How they are drawn (RENDERERS), the same in every photo.
        pose: Their pose (walkers walk).
        view: "oblique" or "nadir".
        body_m: Their length in metres.
        outfit: (top, legs) BGR colours when dressed like their group, else None (the renderer's own).
        north_m: (photos,) their position north of the line's start at each photo, metres.
        east_m: (photos,) east of the line's start, metres.
        lat: (photos,) their latitude at each photo, degrees.
        lon: (photos,) their longitude at each photo.
    """

    identity: int
    group: int | None
    renderer: str
    pose: str
    view: str
    body_m: float
    outfit: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    north_m: np.ndarray
    east_m: np.ndarray
    lat: np.ndarray
    lon: np.ndarray

    @property
    def walking(self) -> bool:
        """Whether they move between photos."""
        return bool(np.ptp(self.north_m) > 0 or np.ptp(self.east_m) > 0)


@dataclass
class FlightPhoto:
    """One photo of a flight with its ground truth.

    Attributes:
        index: Its place along the line (0-based).
        image: (H, W, 3) uint8 BGR photo.
        boxes: (N, 4) float32 boxes x1, y1, x2, y2 around each person at least half inside the photo
            (cut at its edges).
        identities: (N,) int64 FlightPerson.identity of each box.
        pose: The camera's true pose (the photo is drawn from it).
        recorded: The pose the drone records (what the photo's XMP says), with its errors.
        recorded_ypr: The recorded yaw, pitch, roll in degrees, as written into the XMP.
    """

    index: int
    image: np.ndarray
    boxes: np.ndarray
    identities: np.ndarray
    pose: CameraPose
    recorded: CameraPose
    recorded_ypr: tuple[float, float, float]


@dataclass
class Flight:
    """A flight line's photos, its people and the ground truth that ties them.

    Attributes:
        seed: The flight is a pure function of this seed and its config.
        config: What was asked.
        heading_deg: Its direction of flight.
        photos: The photos in the order they were taken.
        people: Everyone standing on the ground, seen or not.
        season: The ground's season.
        terrain: The ground's terrain type.
        objects: How many of each distractor (bush, rock, log and DISTRACTORS) lie on the ground.
    """

    seed: int
    config: FlightConfig
    heading_deg: float
    photos: list[FlightPhoto]
    people: list[FlightPerson]
    season: str = ""
    terrain: str = ""
    objects: dict[str, int] = field(default_factory=dict)

    def identity_name(self, identity: int) -> str:
        """The person's name across flights: ``f{seed}_p{identity}`` (folder names of identity crops)."""
        return f"f{self.seed}_p{identity:03d}"

    def photo_stem(self, index: int) -> str:
        """The file name (without extension) of photo `index`."""
        return f"flight{self.seed:05d}_{index:03d}"


def _place_people(
    rng: np.random.Generator, cfg: FlightConfig, along: tuple[float, float], half_cross: float
) -> list[tuple[float, float, int | None]]:
    """Positions (along, cross) in metres and group of everyone: singles first, then groups.

    Singles and groups keep 3 m from each other; group members stand group_spacing_m from a neighbour.
    """
    placed: list[tuple[float, float, int | None]] = []

    def free(a: float, c: float, clearance: float) -> bool:
        return all(math.hypot(a - pa, c - pc) >= clearance for pa, pc, _ in placed)

    def spot() -> tuple[float, float]:
        return rng.uniform(*along), rng.uniform(-half_cross, half_cross)

    for _ in range(int(rng.integers(cfg.people[0], cfg.people[1] + 1))):
        for _attempt in range(50):
            a, c = spot()
            if free(a, c, 3.0):
                placed.append((a, c, None))
                break
    n_groups = int(rng.integers(cfg.groups[0], cfg.groups[1] + 1))
    for g in range(n_groups):
        size = int(rng.integers(cfg.group_size[0], cfg.group_size[1] + 1))
        reach = size * cfg.group_spacing_m[1]
        for _attempt in range(50):
            a0, c0 = spot()
            if free(a0, c0, 3.0 + reach):
                break
        else:
            continue
        members = [(a0, c0)]
        for _ in range(size - 1):
            for _attempt in range(50):
                ba, bc = members[int(rng.integers(len(members)))]
                d, t = rng.uniform(*cfg.group_spacing_m), rng.uniform(0, 2 * math.pi)
                a, c = ba + d * math.cos(t), bc + d * math.sin(t)
                if all(math.hypot(a - ma, c - mc) >= 0.9 * cfg.group_spacing_m[0] for ma, mc in members):
                    members.append((a, c))
                    break
        placed += [(a, c, g) for a, c in members]
    return placed


def render_flight(seed: int, config: FlightConfig | None = None) -> Flight:  # noqa: C901 - a flight's people, then each photo's layers in drawing order
    """Draw a flight line: the same people, with their identities, in consecutive overlapping photos.

    Needs the geo extra (pymap3d): every pixel-to-ground relation is the runtime's own
    (:func:`edgetile.runtime.geo.ground_to_pixel` and ``locate_pixels``), so a person's box,
    georeferenced with the photo's true pose, lands on their ground position.

    Args:
        seed: The flight is a pure function of this seed and the config.
        config: The line, the people and the photos; defaults to FlightConfig().

    Returns:
        The Flight: photos with boxes and identities, true and recorded poses, and the people.
    """
    import pymap3d

    from edgetile.runtime.geo import ErrorModel, ground_to_pixel, locate_pixels

    cfg = config or FlightConfig()
    sc = cfg.scene
    W, H = sc.width, sc.height
    rng = np.random.default_rng([seed, 2])
    heading = float(rng.uniform(0, 360)) if cfg.heading_deg is None else float(cfg.heading_deg)
    gsd = cfg.gsd_m
    width_m, length_m = W * gsd, H * gsd
    step = (1.0 - cfg.overlap) * length_m
    margin = 0.15 * max(width_m, length_m) + 4 * cfg.jitter_m + 2.0
    a_lo, a_hi = -length_m / 2 - margin, (cfg.photos - 1) * step + length_m / 2 + margin
    c_lo, c_hi = -width_m / 2 - margin, width_m / 2 + margin
    hr = math.radians(heading)

    def to_ne(a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a * math.cos(hr) - c * math.sin(hr), a * math.sin(hr) + c * math.cos(hr)

    def to_ac(n: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return n * math.cos(hr) + e * math.sin(hr), -n * math.sin(hr) + e * math.cos(hr)

    def to_latlon(n: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lat, lon, _ = pymap3d.ned2geodetic(n, e, 0.0, cfg.lat, cfg.lon, cfg.ground_alt_m, deg=True)
        return np.atleast_1d(np.asarray(lat, np.float64)), np.atleast_1d(np.asarray(lon, np.float64))

    # The whole strip's ground, drawn once at the nominal ground sampling distance, top = ahead.
    mw, mh = int(math.ceil((c_hi - c_lo) / gsd)), int(math.ceil((a_hi - a_lo) / gsd))
    area = (mw * mh) / (4000.0 * 3000.0)  # as many per pixel as in a default 4000x3000 scene
    strip = replace(
        sc,
        width=mw,
        height=mh,
        **{
            k: tuple(int(round(v * area)) for v in getattr(sc, k))
            for k in ("rocks", "logs", "bushes", "objects")
        },
    )
    g = _ground(np.random.default_rng([seed, 3]), np.random.default_rng([seed, 4]), strip, mh, mw)
    mosaic = g.image

    # Everyone on the ground, each drawn once: the same clothes, body and renderer in every photo.
    spots = _place_people(
        rng, cfg, (-length_m / 2, (cfg.photos - 1) * step + length_m / 2), width_m / 2 * 0.95
    )
    group_look: dict[int, tuple[str, Outfit]] = {}
    group_walk: dict[int, tuple[float, float] | None] = {}
    people: list[FlightPerson] = []
    drawn: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = []
    for pid, (a0, c0, grp) in enumerate(spots):
        pr = np.random.default_rng([seed, 5, pid])
        if grp is not None and grp not in group_look:
            gr = np.random.default_rng([seed, 6, grp])
            group_look[grp] = (
                sc.renderers[int(gr.integers(len(sc.renderers)))],
                (_garment_colour(gr), _garment_colour(gr)),
            )
            group_walk[grp] = None
            if gr.random() < cfg.walkers:
                t = gr.uniform(0, 2 * math.pi)
                v = gr.uniform(*cfg.speed_m)
                group_walk[grp] = (v * math.cos(t), v * math.sin(t))
        if grp is None:
            renderer, outfit = sc.renderers[int(pr.integers(len(sc.renderers)))], None
            walk = None
            if pr.random() < cfg.walkers:
                t, v = pr.uniform(0, 2 * math.pi), pr.uniform(*cfg.speed_m)
                walk = (v * math.cos(t), v * math.sin(t))
        else:
            renderer, base = group_look[grp]
            # alike, not identical: the same garments in slightly different shades
            outfit = tuple(
                np.clip(c * pr.uniform(0.9, 1.1) + pr.normal(0, 6, 3), 0, 255).astype(np.float32)
                for c in base
            )
            walk = group_walk[grp]
        pose = "walking" if walk is not None else _POSES[int(pr.integers(len(_POSES)))]
        view = sc.views[int(pr.integers(len(sc.views)))]
        body = float(pr.uniform(*cfg.body_m))
        length = max(8, int(round(body / gsd)))
        if renderer == "classic":
            patch, m, neck = _draw_person(pr, length, pose, outfit)
        else:
            patch, m, neck = _RENDER[renderer](pr, length, pose, outfit=outfit)
        nadir = view == "nadir" and pose in _UPRIGHT
        full = m
        angle = pr.uniform(0, 360) if pose == "lying" else pr.normal(0, 25)
        if nadir:
            patch, m = _foreshorten(patch, m, neck, pr.uniform(0.15, 0.45))
            angle = pr.uniform(0, 360)
        drawn.append((patch, m, full, angle, float(pr.uniform(0.15, 0.4))))
        k = np.arange(cfg.photos, dtype=np.float64)
        da, dc = walk if walk is not None else (0.0, 0.0)
        n, e = to_ne(a0 + da * k, c0 + dc * k)
        lat, lon = to_latlon(n, e)
        people.append(
            FlightPerson(
                pid,
                grp,
                renderer,
                pose,
                "nadir" if nadir else "oblique",
                body,
                None if outfit is None else tuple(tuple(float(x) for x in c) for c in outfit),
                n,
                e,
                lat,
                lon,
            )
        )

    photos: list[FlightPhoto] = []
    corners = np.array([[0, 0], [W, 0], [W, H], [0, H]], np.float64)
    for i in range(cfg.photos):
        r = np.random.default_rng([seed, 7, i])
        a_c, c_c = i * step + r.normal(0, cfg.jitter_m * 0.3), r.normal(0, cfg.jitter_m)
        yaw = heading + r.normal(0, 1.0)
        pitch = -90.0 + abs(r.normal(0, 0.7))
        agl = cfg.altitude_m + r.normal(0, 0.5)
        n_c, e_c = to_ne(np.array([a_c]), np.array([c_c]))
        lat_c, lon_c = to_latlon(n_c, e_c)
        true_pose = CameraPose.from_angles(
            float(lat_c[0]),
            float(lon_c[0]),
            agl,
            yaw,
            pitch,
            0.0,
            cfg.focal_px,
            W,
            H,
            abs_alt_m=cfg.ground_alt_m + agl,
            sources={"position": "synthetic truth"},
        )
        # What the drone records: the truth off by its sensors' errors, rounded as DJI writes them.
        en, ee = r.normal(0, cfg.gps_sigma_m, 2)
        rec_lat, rec_lon = to_latlon(n_c + en, e_c + ee)
        rec_ypr = tuple(
            round(float(v + r.normal(0, cfg.angle_sigma_deg)), 2)
            for v in ((yaw + 180) % 360 - 180, pitch, 0.0)
        )
        rec_agl = round(float(agl + r.normal(0, cfg.alt_sigma_m)), 2)
        recorded = CameraPose.from_angles(
            round(float(rec_lat[0]), 8),
            round(float(rec_lon[0]), 8),
            rec_agl,
            *rec_ypr,
            round(cfg.focal_px, 3),
            W,
            H,
            abs_alt_m=round(cfg.ground_alt_m + rec_agl, 2),
            sources={"position": "synthetic, recorded"},
        )
        # The photo is the strip's ground seen through the true pose: a plane, so one homography.
        fixes = locate_pixels(true_pose, corners, ErrorModel(0.0, 0.0, 0.0))
        if any(f is None for f in fixes):
            raise ValueError(f"photo {i}: its corners do not reach the ground (pitch {pitch:.1f})")
        n_k, e_k, _ = pymap3d.geodetic2ned(
            np.array([f.lat for f in fixes]),
            np.array([f.lon for f in fixes]),
            cfg.ground_alt_m,
            cfg.lat,
            cfg.lon,
            cfg.ground_alt_m,
            deg=True,
        )
        a_k, c_k = to_ac(np.asarray(n_k), np.asarray(e_k))
        src = np.stack([(c_k - c_lo) / gsd, (a_hi - a_k) / gsd], axis=1).astype(np.float32)
        hom = cv2.getPerspectiveTransform(corners.astype(np.float32), src)
        img = cv2.warpPerspective(
            mosaic, hom, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
        img *= np.float32(r.uniform(0.93, 1.07))  # the camera's exposure differs from photo to photo
        scale = cfg.altitude_m / agl
        boxes: list[list[float]] = []
        ids: list[int] = []
        feet = ground_to_pixel(true_pose, [p.lat[i] for p in people], [p.lon[i] for p in people])
        for p, (patch, m, full, angle, shadow_off), (u, v) in zip(people, drawn, feet):
            if not (np.isfinite(u) and np.isfinite(v)) or not (-W < u < 2 * W and -H < v < 2 * H):
                continue
            ps, ms, fs = patch, m, full
            if abs(scale - 1.0) > 1e-3:
                size = (max(1, round(m.shape[1] * scale)), max(1, round(m.shape[0] * scale)))
                ps = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR)
                ms = cv2.resize(m, size, interpolation=cv2.INTER_LINEAR)
                fs = cv2.resize(
                    full, (max(1, round(full.shape[1] * scale)), max(1, round(full.shape[0] * scale)))
                )
            ps, ms = _rotate(ps, ms, angle + (yaw - heading) + r.normal(0, 2.0))
            ys, xs = np.nonzero(ms > 0.25)
            if len(xs) == 0:
                continue
            bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            # the box's bottom centre, which the runtime georeferences, stands on the person's spot
            x, y = int(round(u - (bx0 + bx1) / 2)), int(round(v - by1))
            box = np.array([x + bx0, y + by0, x + bx1, y + by1], np.float64)
            cut = np.array([max(box[0], 0), max(box[1], 0), min(box[2], W), min(box[3], H)])
            inside = max(cut[2] - cut[0], 0) * max(cut[3] - cut[1], 0)
            if inside < 0.5 * (box[2] - box[0]) * (box[3] - box[1]):
                continue  # mostly outside: not drawn, so nothing unlabelled shows at the edges
            length = max(ms.shape) / 1.5
            if p.view == "nadir":
                _cast_shadow(img, fs, (x + (bx0 + bx1) / 2, y + (by0 + by1) / 2), g.shadow_dir, g.shadow_k)
            else:
                sh = cv2.GaussianBlur(ms, (0, 0), max(length / 40, 0.8))
                off = length * shadow_off
                _darken(img, sh, x + int(g.shadow_dir[0] * off), y + int(g.shadow_dir[1] * off), 0.5)
            _paste(img, ps, ms, x, y)
            if sc.occlusion > 0 and r.random() < sc.occlusion:
                _occlude(r, img, ms, x, y, g.light, g.winter)
            boxes.append(cut.tolist())
            ids.append(p.identity)
        img = cv2.GaussianBlur(img, (0, 0), r.uniform(0.5, 0.9))
        if sc.blur > 0 and r.random() < sc.blur:
            img = _camera(r, img)
        img += r.normal(0, r.uniform(*sc.noise), (H, W, 1)).astype(np.float32)
        out = np.clip(img, 0, 255).astype(np.uint8)
        if sc.jpeg_quality is not None:
            q = int(r.integers(sc.jpeg_quality[0], sc.jpeg_quality[1] + 1))
            out = cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
        photos.append(
            FlightPhoto(
                i,
                out,
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(ids, np.int64),
                true_pose,
                recorded,
                rec_ypr,
            )
        )
    return Flight(seed, cfg, heading, photos, people, g.season, g.terrain, g.objects)


def _dji_xmp(photo: FlightPhoto) -> bytes:
    """The photo's recorded pose as a DJI drone writes it: drone-dji attributes in an XMP packet."""
    pose = photo.recorded
    yaw, pitch, roll = photo.recorded_ypr
    values = {
        "GpsLatitude": f"{pose.lat:.8f}",
        "GpsLongitude": f"{pose.lon:.8f}",
        "AbsoluteAltitude": f"{pose.abs_alt_m:+.2f}",
        "RelativeAltitude": f"{pose.agl_m:+.2f}",
        "GimbalRollDegree": f"{roll:+.2f}",
        "GimbalYawDegree": f"{yaw:+.2f}",
        "GimbalPitchDegree": f"{pitch:+.2f}",
        "FlightYawDegree": f"{yaw:+.2f}",
        "CalibratedFocalLength": f"{pose.focal_px:.3f}",
        "CalibratedOpticalCenterX": f"{pose.cx:.3f}",
        "CalibratedOpticalCenterY": f"{pose.cy:.3f}",
    }
    attrs = "\n   ".join(f'drone-dji:{k}="{v}"' for k, v in values.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="DJI Meta Data" xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"\n'
        f'   {attrs}/>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode()


def flight_jpeg(photo: FlightPhoto, quality: int = 92) -> bytes:
    """The photo as a JPEG with its recorded pose in an APP1 XMP segment, as DJI cameras write it."""
    ok, buf = cv2.imencode(".jpg", photo.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"could not encode photo {photo.index} as JPEG")
    data = buf.tobytes()
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + _dji_xmp(photo)
    pos = 2  # after SOI and any APP0 (JFIF) segment, as cameras order them
    while data[pos] == 0xFF and data[pos + 1] in (0xE0, 0xE1):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return data[:pos] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[pos:]


# The appearance embedder's default crop (edgetile.runtime.embedder.DEFAULT_CROP): the person and a
# margin for a detector's loose box, less ground than the verifier's context of 2.
CROP_CONTEXT = 1.25
CROP_MIN_SIDE = 16


def write_identity_crops(
    flight: Flight,
    out_dir: str | Path,
    context: float = CROP_CONTEXT,
    min_side: int = CROP_MIN_SIDE,
    photos: list | None = None,
) -> dict[str, int]:
    """Write every sighting of every person as ``OUT/IDENTITY/PHOTO.png``, for training an embedding.

    The crops are the windows the runtime cuts around a detection (``runtime.verifier.crop_windows``:
    a square of ``context`` times the box's longer side, at least ``min_side`` px, moved inside the
    photo), at the photo's own resolution. The defaults are the appearance embedder's crop (the
    person and a margin for a loose box); pass the geometry your embedder is trained and run with.

    Args:
        flight: The flight.
        out_dir: Folder of identity folders (created); IDENTITY is ``flight.identity_name``.
        context: Crop side over the box's longer side.
        min_side: Smallest crop side in pixels.
        photos: The images to cut from, one per flight photo (e.g. the JPEGs as written and read back);
            default the flight's own images.

    Returns:
        Crops written per identity name.
    """
    from edgetile.runtime.verifier import CropConfig, crop_windows

    crop = CropConfig(context, min_side)
    out = Path(out_dir)
    counts: dict[str, int] = {}
    for k, ph in enumerate(flight.photos):
        img = ph.image if photos is None else photos[k]
        h, w = img.shape[:2]
        for (x0, y0, x1, y1), ident in zip(crop_windows(ph.boxes, (w, h), crop), ph.identities):
            name = flight.identity_name(int(ident))
            (out / name).mkdir(parents=True, exist_ok=True)
            path = out / name / f"{flight.photo_stem(ph.index)}.png"
            if not cv2.imwrite(str(path), img[y0:y1, x0:x1]):
                raise OSError(f"could not write {path}")
            counts[name] = counts.get(name, 0) + 1
    return counts


def _flight_record(f: Flight) -> dict:
    """The flight's ground truth, JSON-ready (flights.json)."""
    return {
        "seed": f.seed,
        "heading_deg": round(f.heading_deg, 3),
        "season": f.season,
        "terrain": f.terrain,
        "objects": f.objects,
        "people": [
            {
                "identity": f.identity_name(p.identity),
                "group": None if p.group is None else f"f{f.seed}_g{p.group}",
                "renderer": p.renderer,
                "pose": p.pose,
                "view": p.view,
                "body_m": round(p.body_m, 3),
                "walking": p.walking,
                "lat": [round(float(v), 9) for v in p.lat],
                "lon": [round(float(v), 9) for v in p.lon],
            }
            for p in f.people
        ],
        "photos": [
            {
                "file": f"JPEGImages/{f.photo_stem(ph.index)}.jpg",
                "pose": ph.pose.to_dict(),
                "recorded": ph.recorded.to_dict(),
                "boxes": [[round(float(v), 1) for v in b] for b in ph.boxes],
                "identities": [f.identity_name(int(i)) for i in ph.identities],
            }
            for ph in f.photos
        ],
    }


def write_flights(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    config: FlightConfig | None = None,
    jpeg_quality: int = 92,
    crops: str | Path | None = None,
    crop_context: float = CROP_CONTEXT,
    crop_min_side: int = CROP_MIN_SIDE,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write `count` flights: photos with their recorded pose in XMP, annotations with identities.

    Layout (write_dataset's, so every tool that reads a synthetic dataset reads it, plus the truth)::

        out_dir/JPEGImages/flight00000_000.jpg   drone-dji XMP: GpsLatitude, RelativeAltitude, Gimbal*, ...
        out_dir/Annotations/, labels/, classes.txt, ImageSets/Main/all.txt
        out_dir/annotations.json                 COCO, each annotation with "identity" (and "group")
        out_dir/flights.json                     per flight: people, true and recorded poses, boxes

    Args:
        out_dir: Folder to write into (created).
        count: Number of flights; flight k uses seed + k.
        seed: The first flight's seed.
        config: The flights' line, people and photos.
        jpeg_quality: JPEG quality of the photos.
        crops: Also write identity crops (write_identity_crops) of the JPEGs as written into this folder.
        crop_context: Their side over the box's longer side.
        crop_min_side: Their smallest side in pixels.
        workers: Processes drawing flights at once (the files are the same for any number).
        progress: Show a progress bar on stderr.

    Returns:
        The output folder.
    """
    if count < 0:
        raise ValueError(f"count: expected a non-negative number of flights, found {count}")
    if workers < 1:
        raise ValueError(f"workers: expected at least 1 process, found {workers}")
    cfg = config or FlightConfig()
    out = Path(out_dir)
    coco = _start_dataset(out)
    stems: list[str] = []
    records = []
    with _in_order(render_flight, range(seed, seed + count), cfg, workers) as flights:
        it = flights
        if progress:
            from tqdm import tqdm

            it = tqdm(flights, desc="flights", unit="flight", total=count)
        for f in it:
            written = []
            for ph in f.photos:
                stem = f.photo_stem(ph.index)
                data = flight_jpeg(ph, jpeg_quality)
                (out / "JPEGImages" / f"{stem}.jpg").write_bytes(data)
                written.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
                sc = Scene(ph.image, ph.boxes, np.zeros(len(ph.boxes), np.int64))
                first = len(coco["annotations"])
                _write_scene(out, sc, jpeg_quality, coco, stems, stem=stem, image_written=True)
                for ann, ident in zip(coco["annotations"][first:], ph.identities):
                    p = f.people[int(ident)]
                    ann["identity"] = f.identity_name(p.identity)
                    ann["group"] = None if p.group is None else f"f{f.seed}_g{p.group}"
            if crops is not None:
                write_identity_crops(f, crops, crop_context, crop_min_side, photos=written)
            records.append(_flight_record(f))
    _finish_dataset(out, coco, stems)
    (out / "flights.json").write_text(json.dumps({"flights": records}, indent=1))
    return out


@contextlib.contextmanager
def _in_order(draw, seeds: Iterable[int], config: object, workers: int) -> Iterator[Iterator]:
    """draw(seed, config) for each seed, in order, by `workers` processes (1: in this process)."""
    seeds = list(seeds)
    if workers <= 1 or len(seeds) <= 1:
        yield (draw(s, config) for s in seeds)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may already hold threads (OpenCV's, a training framework's).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool.map(functools.partial(draw, config=config), seeds, chunksize=1)
