"""Synthetic aerial scenes: terrain, vegetation, rocks, logs and small people with shadows.

No real drone photos can be downloaded where edgetile is developed, so tests, the demo and the demo
model are fed by these scenes. They imitate what makes search-and-rescue photos hard: people of
20–150 px in photos of several thousand pixels, in varied poses and clothing, among distractors of
similar size and colour (rocks, logs, bushes), with shadows. Everything is NumPy and OpenCV, and a
scene is a pure function of its seed.

Annotations are written as Pascal VOC XML (the LADD layout), YOLO txt and COCO JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.evaluation.annotations import voc_xml

CLASS_NAMES = ("person",)

# Ground colours (BGR) per season; each scene blends a few of them with low-frequency noise.
_SEASONS = {
    "summer": [(52, 110, 78), (40, 92, 62), (70, 120, 105), (60, 95, 110)],
    "spring": [(60, 110, 100), (70, 105, 120), (45, 90, 75), (90, 120, 130)],
    "autumn": [(40, 90, 120), (50, 100, 140), (45, 80, 95), (70, 95, 110)],
    "winter": [(225, 225, 220), (200, 200, 195), (170, 175, 172), (235, 235, 235)],
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

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError(f"width and height: expected at least 64 px, found {self.width}x{self.height}")
        for name in ("people", "person_px", "rocks", "logs", "bushes"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name}: expected a range (lo, hi) with 0 <= lo <= hi, found {(lo, hi)}")
        if self.person_px[0] < 8:
            raise ValueError(f"person_px: expected people of at least 8 px, found {self.person_px}")
        unknown = set(self.seasons) - set(_SEASONS)
        if unknown or not self.seasons:
            raise ValueError(f"seasons: expected some of {sorted(_SEASONS)}, found {list(self.seasons)}")


@dataclass
class Scene:
    """One synthetic photo and its ground truth.

    Attributes:
        image: (H, W, 3) uint8 BGR photo.
        boxes: (N, 4) float32 boxes x1, y1, x2, y2 in pixels, tight around each person.
        class_ids: (N,) int64 class indices into CLASS_NAMES.
        poses: One pose name per person.
        seed: The seed that made it.
    """

    image: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    poses: list[str] = field(default_factory=list)
    seed: int = 0


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


def _draw_person(rng: np.random.Generator, length: int, pose: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw one person, head at the top, on a transparent canvas.

    Returns:
        (patch (h, w, 3) float32 BGR, mask (h, w) float32 alpha).
    """
    L = float(length)
    w = int(L * 1.1) + 8
    h = int(L * 1.1) + 8
    canvas = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    top = np.array(_CLOTHING[rng.integers(len(_CLOTHING))], np.float32)
    legs = np.array(_CLOTHING[rng.integers(len(_CLOTHING))], np.float32) * rng.uniform(0.5, 1.0)
    head = np.array(_SKIN_HAIR[rng.integers(len(_SKIN_HAIR))], np.float32)
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
    return canvas, mask.astype(np.float32) / 255.0


def _rotate(patch: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    diag = int(math.ceil(math.hypot(h, w))) + 2
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    M[0, 2] += (diag - w) / 2
    M[1, 2] += (diag - h) / 2
    p = cv2.warpAffine(patch, M, (diag, diag), flags=cv2.INTER_LINEAR)
    m = cv2.warpAffine(mask, M, (diag, diag), flags=cv2.INTER_LINEAR)
    return p, m


def make_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Make one synthetic aerial photo with its ground truth.

    Args:
        seed: The scene is a pure function of this seed and the config.
        config: What to draw; defaults to a 4000x3000 photo with 2-8 people of 20-150 px.

    Returns:
        The Scene, boxes tight around every visible person.
    """
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    H, W = cfg.height, cfg.width
    season = cfg.seasons[int(rng.integers(len(cfg.seasons)))]
    img = _terrain(rng, H, W, season)
    sun = rng.uniform(0, 2 * math.pi)
    light = (math.cos(sun), math.sin(sun))
    shadow_dir = (-light[0], -light[1])
    winter = season == "winter"

    def place(n_range: tuple[int, int]) -> int:
        return int(rng.integers(n_range[0], n_range[1] + 1))

    # Bushes and tree crowns (with shadows), then rocks, then logs: distractors of people's size.
    for _ in range(place(cfg.bushes)):
        size = int(rng.uniform(20, 220))
        m = _blob(rng, size, int(rng.integers(3, 8)))
        x, y = int(rng.uniform(-size / 2, W)), int(rng.uniform(-size / 2, H))
        _darken(img, m, x + int(shadow_dir[0] * size * 0.35), y + int(shadow_dir[1] * size * 0.35), 0.45)
        base = np.array((25, 70, 35) if not winter else (40, 60, 45), np.float32) * rng.uniform(0.7, 1.3)
        patch = _shade(np.broadcast_to(base, (*m.shape, 3)).astype(np.float32), m, light, 0.6)
        patch += rng.normal(0, 8, patch.shape).astype(np.float32)
        _paste(img, patch, m, x, y)
    for _ in range(place(cfg.rocks)):
        size = int(rng.uniform(10, 90))
        m = _blob(rng, size, 2)
        x, y = int(rng.uniform(0, W)), int(rng.uniform(0, H))
        _darken(img, m, x + int(shadow_dir[0] * size * 0.2), y + int(shadow_dir[1] * size * 0.2), 0.4)
        g = rng.uniform(90, 190)
        base = np.array((g, g * rng.uniform(0.95, 1.05), g * rng.uniform(0.9, 1.1)), np.float32)
        _paste(img, _shade(np.broadcast_to(base, (*m.shape, 3)).astype(np.float32), m, light, 0.8), m, x, y)
    for _ in range(place(cfg.logs)):
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

    boxes: list[list[float]] = []
    poses: list[str] = []
    n_people = 0 if rng.random() < cfg.empty_fraction else place(cfg.people)
    centres: list[tuple[float, float, float]] = []
    for _ in range(n_people):
        length = int(rng.integers(cfg.person_px[0], cfg.person_px[1] + 1))
        pose = _POSES[int(rng.integers(len(_POSES)))]
        patch, m = _draw_person(rng, length, pose)
        # Oblique photos show standing people roughly upright; lying people lie any way.
        angle = rng.uniform(0, 360) if pose == "lying" else rng.normal(0, 25)
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
        sh = cv2.GaussianBlur(m, (0, 0), max(length / 40, 0.8))
        off = length * rng.uniform(0.15, 0.4)
        _darken(img, sh, x + int(shadow_dir[0] * off), y + int(shadow_dir[1] * off), 0.5)
        _paste(img, patch, m, x, y)
        boxes.append([x + bx0, y + by0, x + bx1, y + by1])
        poses.append(pose)

    # Camera: slight blur and sensor noise.
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.9))
    img += rng.normal(0, rng.uniform(2, 5), (H, W, 1)).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Scene(out, b, np.zeros(len(b), np.int64), poses, seed)


def write_dataset(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    config: SceneConfig | None = None,
    jpeg_quality: int = 92,
    progress: bool = False,
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

    Returns:
        The output folder.
    """
    if count < 0:
        raise ValueError(f"count: expected a non-negative number of scenes, found {count}")
    cfg = config or SceneConfig()
    out = Path(out_dir)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    coco: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)],
    }
    stems = []
    it = range(count)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="scenes", unit="photo")
    for i in it:
        sc = make_scene(seed + i, cfg)
        stem = f"scene_{seed + i:05d}"
        stems.append(stem)
        name = stem + ".jpg"
        h, w = sc.image.shape[:2]
        if not cv2.imwrite(
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
    (out / "ImageSets" / "Main" / "all.txt").write_text("\n".join(stems) + ("\n" if stems else ""))
    (out / "annotations.json").write_text(json.dumps(coco))
    return out
