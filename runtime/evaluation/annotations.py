"""Reading annotated photos: Pascal VOC XML (the LADD layout), YOLO txt and COCO JSON.

Every format becomes the same list of :class:`AnnotatedPhoto` (boxes x1, y1, x2, y2 in photo pixels).
A bad annotation (a box outside the image, x2 < x1, an unknown class, a missing or unreadable image, a
line that does not parse) is never repaired: it is reported as one line in ``Dataset.problems`` and
the photo it belongs to is left out (or only the box, with ``skip="box"``), so that the rest of the
work goes on.

Leaving out the whole photo is the default because a person whose box is dropped would otherwise stay
in the picture unlabelled, teaching a model that people are background and counting a correct
detection as a false positive.

Offline evaluation, not part of the device path: the export side (INT8 calibration) and the training
side read datasets through it. NumPy and OpenCV at import; PyYAML (the export and train extras) only
when a YOLO data.yaml is read.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..files import read_yaml_mapping
from ..images import IMAGE_EXTENSIONS, ImageReadError, image_size, read_image

FORMATS = ("auto", "voc", "yolo", "coco")
SKIP_MODES = ("photo", "box")
# Coordinates may sit this far outside the image (float rounding of normalised YOLO labels) and
# still count as inside; nothing is clipped either way.
EDGE_TOLERANCE_PX = 0.01


@dataclass
class AnnotatedPhoto:
    """One full-size photo and its ground truth.

    Attributes:
        path: The image file.
        width: Image width in pixels.
        height: Image height in pixels.
        boxes: (N, 4) float32 boxes x1, y1, x2, y2 in pixels.
        class_ids: (N,) int64 indices into the dataset's class_names.
    """

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        boxes = np.asarray(self.boxes, np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes: expected shape (N, 4), found {boxes.shape}")
        class_ids = np.asarray(self.class_ids, np.int64).reshape(-1)
        if class_ids.shape != (boxes.shape[0],):
            raise ValueError(
                f"class_ids: expected shape ({boxes.shape[0]},) to match boxes, found {class_ids.shape}"
            )
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(
                f"width, height: expected a positive image size, found {self.width}x{self.height}"
            )
        self.width, self.height = int(self.width), int(self.height)
        self.boxes, self.class_ids = boxes, class_ids

    @property
    def photo_id(self) -> str:
        """The file stem: the photo's name in manifests, folds and reports."""
        return self.path.stem

    def load(self) -> np.ndarray:
        """The (H, W, 3) uint8 BGR pixels; ImageReadError when unreadable or not of the annotated size."""
        image = read_image(self.path)
        if image.shape[:2] != (self.height, self.width):
            raise ImageReadError(
                f"{self.path}: expected a {self.width}x{self.height} image as annotated, "
                f"found {image.shape[1]}x{image.shape[0]}"
            )
        return image


@dataclass
class Dataset:
    """Annotated photos of one source.

    Attributes:
        photos: The photos whose annotations are all usable.
        class_names: Class index -> name.
        problems: One line per bad annotation or image, naming the file, what was expected and
            what was found; the photo (or box) it names is not in photos.
        format: "voc", "yolo" or "coco": what was read.
        root: What was read (folder or file).
    """

    photos: list[AnnotatedPhoto]
    class_names: list[str]
    problems: list[str] = field(default_factory=list)
    format: str = ""
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.photos)

    @property
    def box_count(self) -> int:
        """Boxes over all photos."""
        return int(sum(len(p.boxes) for p in self.photos))

    def summary(self) -> str:
        """One line: photos, boxes, classes and problems."""
        return (
            f"{len(self.photos)} photo(s), {self.box_count} box(es), classes {self.class_names}, "
            f"{len(self.problems)} problem(s)"
            + (f" ({self.format} at {self.root})" if self.root is not None else "")
        )


# ---------------------------------------------------------------------------------------------------
# Box checks shared by every format.


def _check_box(box: Sequence[float], width: int, height: int) -> str | None:
    """Why a box is bad, or None when it is a usable box inside the image."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return f"expected finite coordinates, found {tuple(box)}"
    if x2 < x1 or y2 < y1:
        which = "x2 < x1" if x2 < x1 else "y2 < y1"
        return f"expected x1 <= x2 and y1 <= y2, found {which} in box {_fmt(box)}"
    if x2 == x1 or y2 == y1:
        return f"expected a box of positive width and height, found {_fmt(box)}"
    t = EDGE_TOLERANCE_PX
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        return f"expected a box inside the {width}x{height} image, found {_fmt(box)}"
    return None


def _fmt(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


class _Collector:
    """Gathers the boxes of one photo and the problems found in it."""

    def __init__(self, source: str, width: int, height: int, skip: str, problems: list[str]) -> None:
        self.source, self.width, self.height, self.skip = source, width, height, skip
        self.problems = problems
        self.boxes: list[tuple[float, float, float, float]] = []
        self.class_ids: list[int] = []
        self.bad = 0

    def problem(self, what: str) -> None:
        self.bad += 1
        self.problems.append(f"{self.source}: {what}")

    def add(self, where: str, box: Sequence[float], class_id: int | None, class_label: str) -> None:
        if class_id is None:
            self.problem(f"{where}: unknown class {class_label!r}")
            return
        why = _check_box(box, self.width, self.height)
        if why is not None:
            self.problem(f"{where}: {why}")
            return
        x1, y1, x2, y2 = (float(v) for v in box)
        self.boxes.append((x1, y1, x2, y2))
        self.class_ids.append(int(class_id))

    def photo(self, path: Path) -> AnnotatedPhoto | None:
        if self.bad and self.skip == "photo":
            self.problems.append(
                f"{self.source}: photo left out ({self.bad} bad annotation(s); its {len(self.boxes)} good box(es) "
                "are not used either, so that no person stays in it unlabelled)"
            )
            return None
        return AnnotatedPhoto(
            path,
            self.width,
            self.height,
            np.asarray(self.boxes, np.float32).reshape(-1, 4),
            np.asarray(self.class_ids, np.int64),
        )


class _Classes:
    """Class name -> index: fixed when the user names the classes, otherwise grown in order of appearance."""

    def __init__(self, names: Sequence[str] | None) -> None:
        self.fixed = False
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        if names is not None:
            self.fix(names)

    def fix(self, names: Sequence[str]) -> None:
        """From now on only these classes are known."""
        self.fixed = True
        self.names = [str(n) for n in names]
        self.index = {n: i for i, n in enumerate(self.names)}

    def get(self, name: str) -> int | None:
        if name in self.index:
            return self.index[name]
        if self.fixed:
            return None
        self.index[name] = len(self.names)
        self.names.append(name)
        return self.index[name]


# ---------------------------------------------------------------------------------------------------
# Pascal VOC


def _voc_number(obj: ET.Element, tag: str) -> float:
    el = obj.find(tag)
    if el is None or el.text is None:
        raise ValueError(f"expected <{tag}>, found none")
    try:
        return float(el.text.strip())
    except ValueError:
        raise ValueError(f"expected a number in <{tag}>, found {el.text.strip()!r}") from None


def _find_image(folder: Path, stem: str, filename: str | None) -> Path | None:
    if filename:
        p = folder / filename
        if p.is_file():
            return p
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        p = folder / (stem + ext)
        if p.is_file():
            return p
    return None


def voc_xml(
    filename: str, width: int, height: int, boxes: np.ndarray, names: Sequence[str], decimals: int = 1
) -> str:
    """One photo's boxes as Pascal VOC XML, in the LADD layout that :func:`load_dataset` reads.

    Args:
        filename: The image's file name in JPEGImages/.
        width: Image width in pixels.
        height: Image height in pixels.
        boxes: (N, 4) x1, y1, x2, y2 in pixels.
        names: (N,) class name of each box.
        decimals: Digits after the point of the coordinates (0 for whole pixels).

    Returns:
        The XML document, one element a line.
    """
    if len(names) != len(boxes):
        raise ValueError(f"names: expected one per box ({len(boxes)}), found {len(names)}")
    objs = "".join(
        f"  <object>\n    <name>{escape(str(n))}</name>\n    <pose>Unspecified</pose>\n"
        f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
        f"      <xmin>{b[0]:.{decimals}f}</xmin>\n      <ymin>{b[1]:.{decimals}f}</ymin>\n"
        f"      <xmax>{b[2]:.{decimals}f}</xmax>\n      <ymax>{b[3]:.{decimals}f}</ymax>\n"
        f"    </bndbox>\n  </object>\n"
        for b, n in zip(np.asarray(boxes, np.float64).reshape(-1, 4), names)
    )
    return (
        f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{escape(filename)}</filename>\n"
        f"  <size>\n    <width>{int(width)}</width>\n    <height>{int(height)}</height>\n    <depth>3</depth>\n"
        f"  </size>\n  <segmented>0</segmented>\n{objs}</annotation>\n"
    )


def _load_voc(
    root: Path, classes: _Classes, skip: str, subset: str | None, problems: list[str]
) -> list[AnnotatedPhoto]:
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    if subset is not None:
        listing = root / "ImageSets" / "Main" / f"{subset}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"subset: expected the list {listing}, found no such file")
        stems = [s.split()[0] for s in listing.read_text().splitlines() if s.strip()]
        xmls = [ann_dir / f"{s}.xml" for s in stems]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    photos = []
    for xml in xmls:
        rel = f"{xml.parent.name}/{xml.name}"
        if not xml.is_file():
            problems.append(f"{rel}: expected an annotation file listed in ImageSets, found none")
            continue
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            problems.append(f"{rel}: expected Pascal VOC XML, found unparsable XML ({exc})")
            continue
        filename = (tree.findtext("filename") or "").strip() or None
        image = _find_image(img_dir, xml.stem, filename)
        if image is None:
            problems.append(
                f"{rel}: missing image: expected JPEGImages/{filename or xml.stem + '.jpg'}, found none"
            )
            continue
        try:
            real_w, real_h = image_size(image)
        except ImageReadError as exc:
            problems.append(f"{rel}: unreadable image: {exc}")
            continue
        size = tree.find("size")
        w = h = 0
        if size is not None:
            try:
                w, h = int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0))
            except ValueError:
                problems.append(f"{rel}: expected numbers in <size>, found {ET.tostring(size, 'unicode')!r}")
                continue
        if (w, h) != (0, 0) and (w, h) != (real_w, real_h):
            problems.append(
                f"{rel}: expected <size> {real_w}x{real_h} as in {image.name}, found {w}x{h}; photo left out"
            )
            continue
        c = _Collector(rel, real_w, real_h, skip, problems)
        for k, obj in enumerate(tree.iter("object")):
            name = (obj.findtext("name") or "").strip()
            where = f"object {k} ({name or 'no name'})"
            bb = obj.find("bndbox")
            if bb is None:
                c.problem(f"{where}: expected <bndbox>, found none")
                continue
            try:
                box = [_voc_number(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
            except ValueError as exc:
                c.problem(f"{where}: {exc}")
                continue
            c.add(where, box, classes.get(name) if name else None, name)
        photo = c.photo(image)
        if photo is not None:
            photos.append(photo)
    return photos


# ---------------------------------------------------------------------------------------------------
# YOLO


def _read_data_yaml(path: Path) -> dict:
    """An Ultralytics data.yaml (path, train, val, test, names) as a mapping.

    Raises:
        ImportError: PyYAML is missing.
        ValueError: When the file is not YAML or not a mapping.
    """
    return read_yaml_mapping(
        path, "path, train, val, names", install="found it missing; install edgetile[export] or pyyaml"
    )


def _names(doc: dict, path: Path) -> list[str] | None:
    """The class names of a data.yaml's ``names:`` (a list, or a mapping of class index to name)."""
    names = doc.get("names")
    if names is None:
        return None
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    raise ValueError(
        f"{path}: expected 'names:' as a list or a mapping of class index to name, found {names!r}"
    )


def _paths(doc: dict, key: str, path: Path) -> list[str]:
    """The image folders a data.yaml names under a split ``key`` (one, or a list); none when absent."""
    value = doc.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, (str, int, float)):
        return [str(value)]
    raise ValueError(f"{path}: expected '{key}:' as a folder or a list of folders, found {value!r}")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _label_path(image: Path, root: Path) -> Path:
    """Ultralytics' rule: the last 'images' folder of the path becomes 'labels'; else root/labels/."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return root / "labels" / (image.stem + ".txt")


def _yolo_yaml_roots(src: Path, classes: _Classes, subset: str | None) -> tuple[Path, list[Path]]:
    """The dataset root and image folders of a data.yaml; fixes the classes from its names."""
    doc = _read_data_yaml(src)
    root = src.parent
    base = doc.get("path")
    if base not in (None, ""):
        if not isinstance(base, str):
            raise ValueError(f"{src}: expected 'path:' as a folder, found {base!r}")
        root = src.parent / base  # an absolute path replaces src.parent
    names = _names(doc, src)
    if not classes.fixed:
        if names is None:
            raise ValueError(f"{src}: expected class names under 'names:', found none")
        classes.fix(names)
    keys = [subset] if subset is not None else ["train", "val", "test"]
    splits = list(dict.fromkeys(v for k in keys for v in _paths(doc, k, src)))
    if not splits:
        raise ValueError(f"{src}: expected a {' or '.join(repr(k) for k in keys)} entry, found none")
    return root, [root / s for s in splits]


def _yolo_folder_roots(src: Path, classes: _Classes, subset: str | None) -> tuple[Path, list[Path]]:
    """The dataset root and image folder of a YOLO folder; fixes the classes from classes.txt or data.yaml."""
    if not classes.fixed:
        for cand in (src / "classes.txt", src.parent / "classes.txt"):
            if cand.is_file():
                classes.fix([s.strip() for s in cand.read_text(encoding="utf-8").splitlines() if s.strip()])
                break
        else:
            for cand in (src / "data.yaml", src / "dataset.yaml"):
                names = _names(_read_data_yaml(cand), cand) if cand.is_file() else None
                if names is not None:
                    classes.fix(names)
                    break
    if not classes.fixed:
        raise ValueError(
            f"{src}: expected class names in classes.txt or data.yaml (or passed as class_names), found none"
        )
    image_root = next((src / d for d in ("images", "JPEGImages") if (src / d).is_dir()), src)
    return src, [image_root / subset if subset is not None else image_root]


def _load_yolo(
    src: Path, classes: _Classes, skip: str, subset: str | None, problems: list[str]
) -> list[AnnotatedPhoto]:
    if src.is_file():  # data.yaml
        root, image_roots = _yolo_yaml_roots(src, classes, subset)
    else:
        root, image_roots = _yolo_folder_roots(src, classes, subset)
    images: list[Path] = []
    for image_root in image_roots:
        if not image_root.is_dir():
            raise FileNotFoundError(f"expected an image folder at {image_root}, found none")
        images += sorted(
            p
            for p in image_root.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and "labels" not in p.relative_to(image_root).parts
        )
    photos = []
    for image in images:
        label = _label_path(image, root)
        rel = _relative(label, root)
        try:
            w, h = image_size(image)
        except ImageReadError as exc:
            problems.append(f"{image.name}: unreadable image: {exc}")
            continue
        c = _Collector(rel, w, h, skip, problems)
        lines = label.read_text(encoding="utf-8").splitlines() if label.is_file() else []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"line {n}"
            if len(parts) != 5:
                c.problem(f"{where}: expected 'class cx cy w h', found {line.strip()!r}")
                continue
            try:
                cls = int(parts[0])
                cx, cy, bw, bh = (float(v) for v in parts[1:])
            except ValueError:
                c.problem(f"{where}: expected an integer class and four numbers, found {line.strip()!r}")
                continue
            cid = cls if 0 <= cls < len(classes.names) else None
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            if bw < 0 or bh < 0:
                c.problem(f"{where}: expected a non-negative width and height, found w={bw:g} h={bh:g}")
                continue
            c.add(where, box, cid, f"{cls} (known: 0..{len(classes.names) - 1})")
        photo = c.photo(image)
        if photo is not None:
            photos.append(photo)
    _report_labels_without_images(images, image_roots, root, problems)
    return photos


def _report_labels_without_images(
    images: list[Path], image_roots: list[Path], root: Path, problems: list[str]
) -> None:
    """Label files without an image are annotations of a missing image: one problem each."""
    used = {_label_path(p, root) for p in images}
    for image_root in image_roots:
        label_root = _label_path(image_root / "x.jpg", root).parent
        if not label_root.is_dir() or label_root == image_root:
            continue
        for lab in sorted(label_root.rglob("*.txt")):
            if lab not in used and lab.name != "classes.txt":
                rel = _relative(lab, root)
                problems.append(
                    f"{rel}: missing image: expected an image named {lab.stem}.* for these labels, found none"
                )


# ---------------------------------------------------------------------------------------------------
# COCO


def _load_coco(
    src: Path, images_dir: Path | None, classes: _Classes, skip: str, problems: list[str]
) -> list[AnnotatedPhoto]:
    try:
        doc = json.loads(src.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{src}: expected COCO JSON, found unparsable JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{src}: expected a COCO object with 'images' and 'annotations', found none")
    cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
    # keyed by whatever the file gives as category id; an annotation's category_id may be anything too
    cat_index: dict[object, int | None] = {}
    cat_names: dict[object, str] = {}
    for cat in cats:
        cat_names[cat["id"]] = str(cat["name"])
        cat_index[cat["id"]] = classes.get(str(cat["name"]))
    by_image: dict[object, list[dict]] = {}
    for ann in doc.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    folders = (
        [images_dir]
        if images_dir is not None
        else [src.parent, src.parent / "images", src.parent / "JPEGImages"]
    )
    photos = []
    for img in doc["images"]:
        fname = str(img.get("file_name", ""))
        source = f"{src.name}: image {img.get('id')} ({fname})"
        path = next((f / fname for f in folders if fname and (f / fname).is_file()), None)
        if path is None:
            problems.append(
                f"{source}: missing image: expected {fname} in {' or '.join(map(str, folders))}, found none"
            )
            continue
        try:
            real_w, real_h = image_size(path)
        except ImageReadError as exc:
            problems.append(f"{source}: unreadable image: {exc}")
            continue
        w, h = int(img.get("width") or 0), int(img.get("height") or 0)
        if (w, h) != (0, 0) and (w, h) != (real_w, real_h):
            problems.append(
                f"{source}: expected width x height {real_w}x{real_h} as in the file, found {w}x{h}; "
                "photo left out"
            )
            continue
        c = _Collector(source, real_w, real_h, skip, problems)
        for ann in by_image.get(img.get("id"), []):
            where = f"annotation {ann.get('id')}"
            if ann.get("iscrowd"):
                c.problem(f"{where}: expected a single object, found a crowd region (iscrowd=1)")
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                c.problem(f"{where}: expected bbox [x, y, w, h], found {bbox!r}")
                continue
            x, y, bw, bh = (float(v) for v in bbox)
            cat = ann.get("category_id")
            label = cat_names.get(cat, f"category_id {cat}")
            c.add(where, [x, y, x + bw, y + bh], cat_index.get(cat), label)
        photo = c.photo(path)
        if photo is not None:
            photos.append(photo)
    return photos


# ---------------------------------------------------------------------------------------------------


def detect_format(src: str | Path) -> str:
    """Which annotation format a path holds: "voc", "yolo" or "coco".

    Raises:
        ValueError: When the path matches none of them.
    """
    p = Path(src)
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise ValueError(f"src: expected a folder, a COCO .json or a YOLO data.yaml, found the file {p}")
    if not p.is_dir():
        raise FileNotFoundError(f"src: expected an annotated dataset, found nothing at {p}")
    if (p / "Annotations").is_dir() and any((p / "Annotations").glob("*.xml")):
        return "voc"
    if (p / "labels").is_dir() or (p / "data.yaml").is_file() or (p / "classes.txt").is_file():
        return "yolo"
    jsons = [j for j in sorted(p.glob("*.json")) if j.stat().st_size > 0]
    if len(jsons) == 1:
        return "coco"
    raise ValueError(
        f"src: expected Annotations/*.xml (VOC), labels/ with classes.txt or data.yaml (YOLO), or one COCO .json "
        f"in {p}, found {'several .json files' if jsons else 'none of them'}; name the format or the file"
    )


def load_dataset(
    src: str | Path,
    format: str = "auto",
    class_names: Sequence[str] | None = None,
    *,
    skip: str = "photo",
    subset: str | None = None,
    images: str | Path | None = None,
) -> Dataset:
    """Read an annotated dataset.

    Args:
        src: A VOC folder (Annotations/ and JPEGImages/, the LADD layout); a YOLO folder (images/ and
            labels/, or JPEGImages/ and labels/, with classes.txt or data.yaml) or a data.yaml; a COCO
            JSON file, or a folder holding exactly one.
        format: "auto" (detected from the layout), "voc", "yolo" or "coco".
        class_names: The classes, index = class id. VOC and COCO boxes of other classes are reported
            as unknown; YOLO needs them when no classes.txt or data.yaml names them. When None, VOC
            classes are numbered in order of first appearance and COCO ones by category id.
        skip: What a bad annotation removes: "photo" (default: the whole photo, so that nobody stays
            in it unlabelled) or "box" (only that box).
        subset: VOC: the ImageSets/Main list to read (e.g. "test"); YOLO: the data.yaml split key
            ("train", "val") or the subfolder of images/.
        images: COCO: the folder holding the images (default: beside the JSON, or its images/).

    Returns:
        The Dataset; its problems list every bad annotation, one line each.

    Raises:
        ValueError / FileNotFoundError: When src is not a dataset of the given format at all.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, found {format!r}")
    if skip not in SKIP_MODES:
        raise ValueError(f"skip: expected one of {', '.join(SKIP_MODES)}, found {skip!r}")
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"src: expected an annotated dataset, found nothing at {p}")
    fmt = detect_format(p) if format == "auto" else format
    classes = _Classes(class_names)
    problems: list[str] = []
    if fmt == "voc":
        if not (p / "Annotations").is_dir():
            raise ValueError(f"src: expected a VOC folder with Annotations/ and JPEGImages/, found {p}")
        photos = _load_voc(p, classes, skip, subset, problems)
    elif fmt == "yolo":
        photos = _load_yolo(p, classes, skip, subset, problems)
    else:
        if p.is_dir():
            jsons = sorted(j for j in p.glob("*.json"))
            if len(jsons) != 1:
                raise ValueError(f"src: expected one COCO .json in {p}, found {len(jsons)}; name the file")
            p = jsons[0]
        photos = _load_coco(p, Path(images) if images is not None else None, classes, skip, problems)
    return Dataset(photos, list(classes.names), problems, fmt, p)
