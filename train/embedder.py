"""The appearance embedding: its identity crops, metric-learning training, export, threshold and report.

``edgetile train-embedder`` runs :func:`train_embedder`:

1. identity crops: a folder per person, ``ID/*.png``, each crop cut as the runtime cuts it around a
   detection (:func:`~edgetile.runtime.verifier.crop_views` and the runtime's BatchBuffer, at the
   embedder's crop geometry). Given folders are used as they are (``--crops``); otherwise
   :func:`render_identities` renders them: every synthetic person (renderer, body, clothing, pose
   fixed by a seed, drawn by train/synth.py's renderers) is seen in several "photos" that differ as
   consecutive photos of a flight do: size, heading, straight-down foreshortening, light, ground,
   shadow, a tree crown over part of the body, blur, noise, JPEG, a detector's loose box;
2. a small torchvision backbone (MobileNetV3-small from random initialisation, no downloaded
   weights) with GeM pooling, a linear layer to 128 values and L2 normalisation is trained by
   pytorch-metric-learning's ``MetricLossOnly`` trainer (it fits as it is: a trunk, an embedder, one
   loss and a miner; no hand-written loop): triplet margin loss over the semihard triplets of each
   batch (or batch-hard, or ArcFace); each batch holds pairs of people in similar clothing
   (:class:`LookAlikeSampler`), so the miner's negatives include the people an operator would confuse;
3. on held-out people (never seen in training), all same-person pairs and as many different-person
   pairs, half of them look-alikes, give the verification accuracy at the best threshold and the ROC
   AUC; the threshold, the crop geometry and the vector length are written into the ONNX metadata
   (runtime ``META_KEYS``), so ``detect --embed`` users know what "the same person" means for it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.embedder import DEFAULT_CROP, META_KEYS
from edgetile.runtime.embedding import DIM
from edgetile.runtime.files import write_text_atomic
from edgetile.runtime.preprocess import BatchBuffer
from edgetile.runtime.verifier import CropConfig

from . import synth
from .budget import MB, BudgetError, SizeEstimate, file_sizes_mb

BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "resnet18")
LOSSES = ("triplet", "arcface")
#: Triplet miners: the hardest positive and negative of each anchor in the batch, or every triplet
#: whose negative lies within the margin (semihard: farther than the positive; all: any).
MINERS = ("batch_hard", "semihard", "all")
DEFAULT_EMBEDDER_BUDGET_MB = 10.0
#: Renderers and their shares: the articulated and the soft ones are the closest to photos.
_RENDERERS = (("limbs", 0.45), ("blobs", 0.35), ("classic", 0.2))
#: Body length at which an identity is drawn once, then scaled to each photo's size.
_BASE_LENGTH = 96
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class EmbedderOptions:
    """How the identity crops are made and the embedding trained.

    Attributes:
        backbone: torchvision backbone, from random initialisation.
        imgsz: Crop side in model pixels (the model's fixed input).
        crop: Context around each box (kept in the ONNX, so the runtime cuts the same crops).
        loss: "triplet" (margin loss over mined triplets) or "arcface" (additive angular margin).
        miner: The triplet miner: "batch_hard", "semihard" or "all" (:data:`MINERS`).
        margin: Triplet margin (distance of unit vectors; default 0.2), or ArcFace's angular margin in
            degrees (default 28.6, pytorch-metric-learning's).
        epochs: Training epochs.
        per_identity: Crops of one person in a batch (m of pytorch-metric-learning's m-per-class).
        batch: Crops per batch (a multiple of per_identity).
        lr: Adam learning rate (cosine-annealed to a hundredth over the epochs).
        weight_decay: Adam weight decay.
        max_minutes: Stop after the epoch that passes this (0: no limit).
        seed: Rendering, sampling and initialisation seed.
        device: "cpu" or a CUDA device such as "cuda:0".
        budget_mb: Largest acceptable checkpoint and ONNX, in MiB.
    """

    backbone: str = "mobilenet_v3_small"
    imgsz: int = 64
    crop: CropConfig = DEFAULT_CROP
    loss: str = "triplet"
    miner: str = "semihard"
    margin: float | None = None
    epochs: int = 30
    per_identity: int = 4
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    max_minutes: float = 0.0
    seed: int = 0
    device: str = "cpu"
    budget_mb: float = DEFAULT_EMBEDDER_BUDGET_MB

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {', '.join(BACKBONES)}, found {self.backbone!r}")
        if self.miner not in MINERS:
            raise ValueError(f"miner: expected one of {', '.join(MINERS)}, found {self.miner!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, found {self.loss!r}")
        if (
            isinstance(self.imgsz, bool)
            or not isinstance(self.imgsz, int)
            or self.imgsz < 32
            or self.imgsz % 32
        ):
            raise ValueError(f"imgsz: expected a multiple of 32 of at least 32, found {self.imgsz!r}")
        if self.per_identity < 2:
            raise ValueError(f"per_identity: expected at least 2 (a pair), found {self.per_identity!r}")
        if self.batch < 2 * self.per_identity or self.batch % self.per_identity:
            raise ValueError(
                f"batch: expected a multiple of per_identity ({self.per_identity}) holding at least two people, "
                f"found {self.batch!r}"
            )
        if (self.margin is not None and not self.margin > 0) or not self.lr > 0 or self.epochs < 1:
            raise ValueError(
                f"margin, lr, epochs: expected positive values, found {self.margin!r}, {self.lr!r}, {self.epochs!r}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected 0 or more, found {self.weight_decay!r}")
        if not self.budget_mb > 0:
            raise ValueError(f"budget_mb: expected a positive size in MB, found {self.budget_mb!r}")


# --------------------------------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class Identity:
    """One synthetic person: everything that makes them look like themselves.

    Attributes:
        renderer: "limbs", "blobs" or "classic" (train/synth.py's renderers).
        seed: Seed of the renderer's draws: body proportions, clothing colours and fabric, hair, pose
            angles.
        pose: One of synth's poses.
    """

    renderer: str
    seed: int
    pose: str

    @property
    def name(self) -> str:
        return f"{self.renderer}-{self.seed}-{self.pose}"

    def draw(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(patch (h, w, 3) float32 BGR, alpha (h, w) float32, neck row) at the base length."""
        rng = np.random.default_rng(self.seed)
        draw = synth._RENDER.get(self.renderer, synth._draw_person)
        return draw(rng, _BASE_LENGTH, self.pose)


def identities(count: int, seed: int) -> list[Identity]:
    """count distinct synthetic people, a pure function of seed."""
    rng = np.random.default_rng(seed)
    names = [r for r, _ in _RENDERERS]
    shares = np.array([s for _, s in _RENDERERS])
    out = []
    for i in range(count):
        renderer = names[int(rng.choice(len(names), p=shares / shares.sum()))]
        pose = synth._POSES[int(rng.integers(len(synth._POSES)))]
        out.append(Identity(renderer, int(seed * 1_000_003 + i), pose))
    return out


def render_sighting(
    person: tuple[np.ndarray, np.ndarray, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One photo's view of a drawn person: a small BGR scene around them and their (loose) box.

    Returns:
        (image (H, W, 3) uint8 BGR, box (4,) float32 x1, y1, x2, y2).
    """
    patch, alpha, neck = person
    length = rng.uniform(22, 110)  # body length in photo pixels: the sizes of people in drone photos
    f = length / _BASE_LENGTH
    size = (max(int(round(alpha.shape[1] * f)), 3), max(int(round(alpha.shape[0] * f)), 3))
    p = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    if rng.random() < 0.3:  # seen from straight above: the body below the head foreshortened
        p, m = synth._foreshorten(p, m, neck * f, rng.uniform(0.45, 0.9))
    p, m = synth._rotate(p, m, rng.uniform(0, 360))  # the drone's heading, or the person turned
    light_angle = rng.uniform(0, 2 * math.pi)
    light = (math.cos(light_angle), math.sin(light_angle))
    p = synth._shade(p, m, light, rng.uniform(0.1, 0.6))
    p = (
        p * rng.uniform(0.6, 1.35) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    )  # sun, cloud, white balance
    h, w = m.shape
    H, W = int(h * rng.uniform(2.0, 3.0)), int(w * rng.uniform(2.0, 3.0))
    season = ("summer", "spring", "autumn", "winter", "snow")[
        int(rng.choice(5, p=[0.35, 0.2, 0.2, 0.15, 0.1]))
    ]
    img = synth._terrain(rng, H, W, season)
    x, y = int(rng.integers(0, max(W - w, 1))), int(rng.integers(0, max(H - h, 1)))
    if rng.random() < 0.6:  # a shadow thrown away from the light
        dx, dy = (int(round(-c * length * rng.uniform(0.1, 0.4))) for c in light)
        synth._darken(img, m, x + dx, y + dy, rng.uniform(0.2, 0.5))
    synth._paste(img, p, m, x, y)
    if rng.random() < 0.3:  # a tree crown over part of the body
        synth._occlude(rng, img, m, x, y, light, season in ("winter", "snow"))
    if rng.random() < 0.4:
        img = synth._camera(rng, img)
    img = img + rng.normal(0, rng.uniform(1, 6), img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        q = int(rng.integers(55, 95))
        ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    ys, xs = np.nonzero(m > 0.3)
    box = np.array([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1], np.float32)
    # A detector's box is not the mask's: each side off by up to a tenth of the box.
    bw, bh = box[2] - box[0], box[3] - box[1]
    box += rng.uniform(-0.1, 0.1, 4).astype(np.float32) * np.array([bw, bh, bw, bh], np.float32)
    box[[0, 2]] = np.clip(box[[0, 2]], 0, W)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, H)
    return out, box


def cut_crops(image: np.ndarray, xyxy: np.ndarray, crop: CropConfig, imgsz: int) -> np.ndarray:
    """Crops around boxes exactly as the runtime's embedder cuts them.

    Returns:
        (N, imgsz, imgsz, 3) uint8 BGR crops.
    """
    from edgetile.runtime.verifier import crop_views

    boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
    buffer = BatchBuffer(max(len(boxes), 1), (imgsz, imgsz))
    views = crop_views(boxes, (image.shape[1], image.shape[0]), (imgsz, imgsz), crop)
    arr = buffer.fill(image, views)
    # The buffer holds RGB k/255: scaled back, it is the very uint8 crop the model will see.
    rgb = np.rint(arr.astype(np.float32) * 255).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(rgb[..., ::-1])


def _render_person(job: tuple[Path, Identity, int, int, CropConfig, int]) -> None:
    root, person, sightings, seed, crop, imgsz = job
    drawn = person.draw()
    rng = np.random.default_rng([seed, person.seed])
    folder = root / person.name
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(sightings):
        image, box = render_sighting(drawn, rng)
        path = folder / f"{k:02d}.png"
        if not cv2.imwrite(str(path), cut_crops(image, box[None], crop, imgsz)[0]):
            raise OSError(f"could not write {path}")


def render_identities(
    out: str | Path,
    count: int,
    sightings: int,
    seed: int,
    crop: CropConfig = DEFAULT_CROP,
    imgsz: int = 64,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write ``out/ID/NN.png``: sightings crops of each of count synthetic people.

    Every person is a pure function of (seed, person), so the crops are the same for any workers.

    Returns:
        out.
    """
    root = Path(out)
    jobs = [(root, p, sightings, seed, crop, imgsz) for p in identities(count, seed)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"people {root.name}", unit="person")
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_person, jobs, chunksize=8):
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            _render_person(job)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return root


@dataclass
class IdentityCrops:
    """Crops of several people, loaded.

    Attributes:
        images: (N, imgsz, imgsz, 3) uint8 BGR.
        labels: (N,) int64 person index.
        names: Person index -> folder name.
        problems: Folders or files skipped, one line each.
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def load_identity_crops(root: str | Path, imgsz: int) -> IdentityCrops:
    """Read ``root/ID/*.png`` (or .jpg): one folder per person, crops cut as the runtime cuts them.

    A crop of another size is resized to imgsz (a crop cut at another size must be square to keep the
    person's shape). A person with fewer than two readable crops cannot form a pair and is skipped.

    Raises:
        FileNotFoundError: No such folder.
        ValueError: Fewer than two people with two crops each.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"crops: folder not found: {base}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    problems: list[str] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        got = []
        for f in files:
            im = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if im is None:
                problems.append(f"{f}: skipped: not a readable image")
                continue
            if im.shape[0] != im.shape[1]:
                problems.append(f"{f}: skipped: expected a square crop, found {im.shape[1]}x{im.shape[0]}")
                continue
            if im.shape[0] != imgsz:
                im = cv2.resize(im, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)  # as the runtime resizes
            got.append(im)
        if len(got) < 2:
            problems.append(f"{folder}: skipped: expected at least 2 crops of the person, found {len(got)}")
            continue
        images.extend(got)
        labels.extend([len(names)] * len(got))
        names.append(folder.name)
    if len(names) < 2:
        raise ValueError(
            f"crops {base}: expected folders of at least two people (ID/*.png, two crops or more each), "
            f"found {len(names)}"
        )
    return IdentityCrops(np.stack(images), np.asarray(labels, np.int64), names, problems)


def clothing_colours(crops: IdentityCrops) -> np.ndarray:
    """Each person's mean Lab colour of the upper and lower middle of their crops: (people, 6) float32.

    What an operator tells people apart by at a distance: jacket and trousers. Crops are centred on the
    person, so the middle third of a crop is mostly them.
    """
    n = crops.images.shape[1]
    a, b, c = n // 3, n // 2, 2 * n // 3
    lab = np.stack([cv2.cvtColor(im, cv2.COLOR_BGR2LAB) for im in crops.images]).astype(np.float32)
    upper = lab[:, a:b, a:c].mean(axis=(1, 2))
    lower = lab[:, b:c, a:c].mean(axis=(1, 2))
    per_crop = np.concatenate([upper, lower], axis=1)
    out = np.zeros((len(crops.names), 6), np.float32)
    for k in range(len(crops.names)):
        out[k] = per_crop[crops.labels == k].mean(axis=0)
    return out


def look_alikes(colours: np.ndarray) -> np.ndarray:
    """(people, people-1) indices of the other people by ascending clothing-colour distance."""
    d = np.linalg.norm(colours[:, None] - colours[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :-1]


# --------------------------------------------------------------------------------------------------- model


def _torch_parts():  # torch is imported when training, never when the train package is imported
    import torch
    from torch import nn

    class GeM(nn.Module):
        """Generalised mean pooling: a learnt exponent between average (1) and max (large) pooling."""

        def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.tensor(float(p)))
            self.eps = eps

        def forward(self, x):
            return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    class Trunk(nn.Module):
        """Backbone features, GeM pooled: (B, 3, H, W) RGB in [0, 1] -> (B, C)."""

        def __init__(self, backbone: str) -> None:
            super().__init__()
            import torchvision

            net = getattr(torchvision.models, backbone)(weights=None)
            if backbone.startswith("resnet"):
                self.features = nn.Sequential(*list(net.children())[:-2])
                self.channels = net.fc.in_features
            else:
                self.features = net.features
                self.channels = net.classifier[0].in_features
            self.pool = GeM()
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    # torchvision's MobileNetV3 keeps 1% of each batch in its running statistics, tuned
                    # for ImageNet's long runs: in a short run they would stay near their start, and the
                    # exported (evaluation-mode) network would see other features than training did.
                    m.momentum = 0.1

        def forward(self, x):
            return self.pool(self.features(x))

    class Head(nn.Module):
        """(B, C) -> (B, DIM) unit vectors."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.linear = nn.Linear(channels, DIM)

        def forward(self, x):
            return nn.functional.normalize(self.linear(x), dim=1)

    class EmbeddingNet(nn.Module):
        """The exported model: (B, 3, H, W) RGB in [0, 1] -> (B, DIM) unit vectors."""

        def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
            super().__init__()
            self.trunk = trunk
            self.head = head

        def forward(self, x):
            return self.head(self.trunk(x))

    return Trunk, Head, EmbeddingNet


def build_model(backbone: str):
    """(trunk, head, whole) torch modules of a fresh embedding network."""
    Trunk, Head, EmbeddingNet = _torch_parts()
    trunk = Trunk(backbone)
    head = Head(trunk.channels)
    return trunk, head, EmbeddingNet(trunk, head)


def estimate_size(backbone: str) -> SizeEstimate:
    """Predicted checkpoint (FP32 state dict) and ONNX (BatchNorm fused) sizes, from the meta device."""
    import torch

    with torch.device("meta"):
        _, _, net = build_model(backbone)
    params = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for b in net.buffers() if b.is_floating_point())
    bn = sum(m.num_features for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    modules = sum(1 for _ in net.modules())
    checkpoint = 4 * (params + buffers) + 200 * modules + 4096
    onnx = 4 * (params - bn) + 600 * modules
    return SizeEstimate(backbone, "", int(params), checkpoint / MB, onnx / MB)


def check_embedder_budget(backbone: str, budget_mb: float) -> SizeEstimate:
    """Refuse a backbone whose files would exceed the budget, naming those that fit.

    Raises:
        BudgetError: One line: the sizes, the budget and the backbones that fit.
    """
    own = estimate_size(backbone)
    if own.largest_mb(onnx=True) <= budget_mb:
        return own
    sizes = {b: estimate_size(b).largest_mb(onnx=True) for b in BACKBONES}
    fits = [b for b, mb in sorted(sizes.items(), key=lambda kv: kv[1]) if mb <= budget_mb]
    advice = (
        f"backbones that fit: {', '.join(fits)}" if fits else "no backbone fits; raise --budget-mb knowingly"
    )
    raise BudgetError(
        f"--backbone {backbone}: its checkpoint and ONNX would be {own.largest_mb(onnx=True):.1f} MB "
        f"({own.params / 1e6:.1f} M parameters), over the weight budget of {budget_mb:g} MB; {advice} "
        f"[{', '.join(f'{b} {mb:.1f} MB' for b, mb in sizes.items())}]"
    )


# --------------------------------------------------------------------------------------------------- training


class LookAlikeSampler:
    """Batches of look-alike groups: each batch holds people in similar clothes, per_identity crops each.

    A batch is built from groups: a person drawn at random, then the not yet used people whose clothes
    look most like theirs, up to group people; then the next group. The miner's hardest negatives are
    then the people an operator would confuse, not the ones any colour histogram tells apart.

    Args:
        labels: (N,) person index of every crop.
        colours: (people, 6) clothing colours (:func:`clothing_colours`).
        batch: Crops per batch.
        per_identity: Crops per person in a batch (drawn again when a person has fewer).
        group: People per look-alike group. Pairs by default: a batch of only one colour would make
            its BatchNorm statistics unlike any photo's, and the exported network, which normalises by
            the running statistics, would see features training never saw.
        seed: Sampling seed (advanced every epoch).
    """

    def __init__(
        self,
        labels: np.ndarray,
        colours: np.ndarray,
        batch: int,
        per_identity: int,
        group: int = 2,
        seed: int = 0,
    ) -> None:
        self.labels = np.asarray(labels)
        self.by_person = [np.flatnonzero(self.labels == k) for k in range(len(colours))]
        self.order = look_alikes(colours)
        self.batch = batch
        self.per_identity = per_identity
        self.people_per_batch = batch // per_identity
        if self.people_per_batch > len(colours):
            raise ValueError(
                f"batch: expected at most {len(colours) * per_identity} crops ({len(colours)} people x "
                f"{per_identity}), found {batch}"
            )
        self.group = max(1, min(group, self.people_per_batch))
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return (len(self.by_person) // self.people_per_batch) * self.batch

    def _people(self) -> list[int]:
        unused = set(range(len(self.by_person)))
        people: list[int] = []
        while len(unused) >= self.people_per_batch - len(people) % self.people_per_batch and unused:
            first = int(self.rng.choice(sorted(unused)))
            group = [first] + [int(j) for j in self.order[first] if j in unused and j != first]
            group = group[: min(self.group, self.people_per_batch - len(people) % self.people_per_batch)]
            people.extend(group)
            unused.difference_update(group)
            if len(people) // self.people_per_batch == len(self.by_person) // self.people_per_batch:
                break
        return people[: (len(people) // self.people_per_batch) * self.people_per_batch]

    def __iter__(self):
        out: list[int] = []
        for k in self._people():
            idx = self.by_person[k]
            out.extend(self.rng.choice(idx, self.per_identity, replace=len(idx) < self.per_identity).tolist())
        return iter(out)


def _dataset(crops: IdentityCrops, augment: bool, seed: int):
    import torch

    class Crops(torch.utils.data.Dataset):
        """(RGB float tensor in [0, 1], person) pairs; training mirrors and re-lights a little."""

        def __init__(self) -> None:
            self.x = torch.from_numpy(np.ascontiguousarray(crops.images[..., ::-1].transpose(0, 3, 1, 2)))
            self.y = torch.from_numpy(crops.labels)
            self.g = torch.Generator().manual_seed(seed)

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i):
            x = self.x[i].float() / 255
            if augment:
                if torch.rand(1, generator=self.g) < 0.5:  # a person mirrored is still that person
                    x = x.flip(2)
                x = (x * (0.85 + 0.3 * torch.rand(1, generator=self.g))).clamp(0, 1)
            return x, self.y[i]

    return Crops()


def embed_crops(net, crops: IdentityCrops, device: str = "cpu", batch: int = 256) -> np.ndarray:
    """(N, DIM) float32 unit vectors of the crops by the torch model in evaluation mode."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(crops), batch):
            x = np.ascontiguousarray(crops.images[start : start + batch, :, :, ::-1].transpose(0, 3, 1, 2))
            out.append(net(torch.from_numpy(x).float().div(255).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)


def verification_pairs(
    labels: np.ndarray, colours: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same-person and different-person pairs of crops, as many of each, half the different ones look-alikes.

    Returns:
        (pairs (P, 2) crop indices, same (P,) bool, look_alike (P,) bool: the two people are each
        other's nearest in clothing colour, or one of the other's three nearest).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    same = [(i, j) for k in np.unique(labels) for i, j in _combinations(np.flatnonzero(labels == k))]
    n = len(same)
    order = look_alikes(colours)
    by_person = [np.flatnonzero(labels == k) for k in range(len(colours))]
    alike = []
    for _ in range(n // 2):
        a = int(rng.integers(len(colours)))
        b = int(order[a][int(rng.integers(min(3, order.shape[1])))])
        alike.append((int(rng.choice(by_person[a])), int(rng.choice(by_person[b]))))
    other = []
    while len(other) < n - len(alike):
        i, j = (int(v) for v in rng.integers(len(labels), size=2))
        if labels[i] != labels[j]:
            other.append((i, j))
    pairs = np.asarray(same + alike + other, np.int64).reshape(-1, 2)
    is_same = np.r_[np.ones(n, bool), np.zeros(len(alike) + len(other), bool)]
    is_alike = np.r_[np.zeros(n, bool), np.ones(len(alike), bool), np.zeros(len(other), bool)]
    return pairs, is_same, is_alike


def _combinations(idx: np.ndarray) -> list[tuple[int, int]]:
    return [(int(idx[a]), int(idx[b])) for a in range(len(idx)) for b in range(a + 1, len(idx))]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(positive, bool), np.asarray(scores, np.float64)))


def best_threshold(similarity: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The cosine similarity threshold of the highest balanced accuracy ("same" at >= threshold).

    Balanced (the mean of the accuracy on same and on different pairs), so the threshold does not lean
    towards whichever kind of pair is more numerous.

    Returns:
        (threshold, balanced accuracy there).
    """
    s = np.asarray(similarity, np.float64)
    y = np.asarray(same, bool)
    if y.all() or not y.any():
        raise ValueError(f"pairs: expected same and different pairs, found {int(y.sum())} same of {len(y)}")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)  # same pairs at or above each candidate threshold
    fp = np.cumsum(~y)
    tpr, tnr = tp / y.sum(), 1 - fp / (~y).sum()
    acc = (tpr + tnr) / 2
    last = np.r_[s[1:] != s[:-1], True]  # a threshold must take every pair of equal similarity
    k = int(np.argmax(np.where(last, acc, -1)))
    nxt = s[k + 1] if k + 1 < len(s) else s[k] - 1e-3
    return float((s[k] + nxt) / 2), float(acc[k])


def verification_report(
    vectors: np.ndarray, crops: IdentityCrops, threshold: float | None = None, seed: int = 0
) -> dict[str, object]:
    """Verification of held-out people: accuracy at the best (or a given) threshold, ROC AUC, look-alikes.

    Returns:
        {"threshold", "balanced_accuracy", "roc_auc", "same_pairs", "different_pairs",
        "look_alike_pairs", "look_alike_roc_auc", "look_alike_accuracy", "same_accuracy",
        "different_accuracy", "mean_similarity": {"same", "different", "look_alike"}, "people", "crops"}.
    """
    colours = clothing_colours(crops)
    pairs, same, alike = verification_pairs(crops.labels, colours, seed)
    sim = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    chosen, acc = best_threshold(sim, same)
    if threshold is None:
        threshold = chosen
    else:
        acc = float(((sim[same] >= threshold).mean() + (sim[~same] < threshold).mean()) / 2)
    hard = same | alike
    return {
        "threshold": float(threshold),
        "balanced_accuracy": acc,
        "roc_auc": roc_auc(sim, same),
        "same_accuracy": float((sim[same] >= threshold).mean()),
        "different_accuracy": float((sim[~same] < threshold).mean()),
        "look_alike_accuracy": float((sim[alike] < threshold).mean()) if alike.any() else None,
        "look_alike_roc_auc": roc_auc(sim[hard], same[hard]) if alike.any() else None,
        "same_pairs": int(same.sum()),
        "different_pairs": int((~same).sum()),
        "look_alike_pairs": int(alike.sum()),
        "mean_similarity": {
            "same": float(sim[same].mean()),
            "different": float(sim[~same & ~alike].mean()) if (~same & ~alike).any() else None,
            "look_alike": float(sim[alike].mean()) if alike.any() else None,
        },
        "people": len(crops.names),
        "crops": len(crops),
    }


# --------------------------------------------------------------------------------------------------- export


def export_embedder_onnx(net, path: Path, imgsz: int, opset: int = 17) -> Path:
    """The model to ONNX: input "images" (B, 3, imgsz, imgsz) float32 RGB in [0, 1], dynamic batch;
    output "embeddings" (B, DIM) unit vectors. Written through a partial file."""
    import torch

    net = net.float().cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(2, 3, imgsz, imgsz),),
            str(tmp),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    tmp.replace(path)
    return path


def store_embedder_metadata(onnx_path: Path, threshold: float | None, crop: CropConfig, imgsz: int) -> None:
    """Write the vector length, the threshold (when chosen), the crop geometry and imgsz into the ONNX."""
    import onnx

    proto = onnx.load(str(onnx_path))
    entries = {
        META_KEYS["dim"]: repr(DIM),
        META_KEYS["context"]: repr(float(crop.context)),
        META_KEYS["min_side"]: repr(int(crop.min_side)),
        "imgsz": repr([imgsz, imgsz]),
    }
    if threshold is not None:
        entries[META_KEYS["threshold"]] = repr(round(float(threshold), 6))
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in entries.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    tmp = onnx_path.with_name(onnx_path.name + ".partial")
    onnx.save(proto, str(tmp))
    tmp.replace(onnx_path)


def check_against_torch(
    want: np.ndarray, onnx_path: Path, crops: IdentityCrops, tolerance: float = 1e-3
) -> float:
    """Largest difference between the torch model's embeddings (want) and the ONNX's, on the same crops.

    Raises:
        ValueError: When it exceeds tolerance.
    """
    from edgetile.runtime.backends import create_backend

    x = np.ascontiguousarray(crops.images[..., ::-1].transpose(0, 3, 1, 2)).astype(np.float32) / 255
    with create_backend("onnxruntime", onnx_path) as be:
        got = np.asarray(be.infer(x)[0])
    diff = float(np.abs(got - want).max()) if len(got) else 0.0
    if diff > tolerance:
        raise ValueError(
            f"ONNX {onnx_path}: expected the torch model's embeddings within {tolerance:g}, found a difference "
            f"of {diff:.3g}"
        )
    return diff


# --------------------------------------------------------------------------------------------------- all of it


@dataclass
class EmbedderResult:
    """What train-embedder made and measured.

    Attributes:
        out: The output folder.
        checkpoint: The trained state dict (embedder.pt).
        onnx: The exported model, threshold and crop geometry in its metadata.
        verification: Held-out people: :func:`verification_report`.
        report: Everything, as written to embedder_report.json.
        sizes_mb: File sizes.
    """

    out: Path
    checkpoint: Path
    onnx: Path
    verification: dict
    report: dict[str, object]
    sizes_mb: dict[str, float]

    def summary(self) -> str:
        v, r = self.verification, self.report
        alike = v["look_alike_accuracy"]
        return "\n".join(
            [
                f"people: {r['train_people']} to train on ({r['train_crops']} crops), {v['people']} held out "
                f"({v['crops']} crops); {r['epochs_run']} epoch(s) in {r['train_seconds']:.0f} s",
                f"embedder: {self.onnx} ({', '.join(f'{k} {mb:.2f} MB' for k, mb in self.sizes_mb.items())})",
                f"held-out people: {v['same_pairs']} same and {v['different_pairs']} different pairs "
                f"({v['look_alike_pairs']} look-alikes): ROC AUC {v['roc_auc']:.4f}, balanced accuracy "
                f"{v['balanced_accuracy']:.4f} at the best threshold {v['threshold']:.4f} (stored in the ONNX); "
                f"same {v['same_accuracy']:.3f}, different {v['different_accuracy']:.3f}"
                + (f", look-alikes told apart {alike:.3f}" if alike is not None else ""),
                f"report: {self.out / 'embedder_report.json'}",
            ]
        )


def train_embedder(
    out: str | Path,
    options: EmbedderOptions | None = None,
    train_crops: str | Path | None = None,
    val_crops: str | Path | None = None,
    people: tuple[int, int] = (300, 100),
    sightings: int = 8,
    progress: bool = False,
    log: Callable[[str], None] = lambda line: None,
    workers: int = 1,
) -> EmbedderResult:
    """Make (or read) identity crops, train the embedding, export it, choose its threshold, report.

    Args:
        out: Output folder: crops/{train,val}/ID/*.png when rendered, embedder.pt, embedder.onnx,
            embedder_report.json.
        options: Crops and training.
        train_crops: A folder of crops per person to train on (``ID/*.png``); default: rendered.
        val_crops: A folder of held-out people; default: rendered (other people than training's).
        people: People to render for training and for validation, when not given as folders.
        sightings: Crops rendered per person.
        progress: Progress bars on stderr.
        log: Where one line per epoch goes.
        workers: Processes rendering the crops.

    Raises:
        BudgetError: Before training, when the backbone cannot fit the budget.
        ValueError: Too few people; an export that disagrees with torch; a file over the budget.
    """
    opt = options or EmbedderOptions()
    out = Path(out).resolve()
    estimate = check_embedder_budget(opt.backbone, opt.budget_mb)
    out.mkdir(parents=True, exist_ok=True)
    sources = {}
    for split, given, count, seed in (
        ("train", train_crops, people[0], opt.seed * 2 + 1),
        ("val", val_crops, people[1], opt.seed * 2 + 2),  # another seed: people never seen in training
    ):
        if given is None:
            given = render_identities(
                out / "crops" / split, count, sightings, seed, opt.crop, opt.imgsz, progress, workers
            )
        sources[split] = Path(given)
    train = load_identity_crops(sources["train"], opt.imgsz)
    val = load_identity_crops(sources["val"], opt.imgsz)

    import torch
    from pytorch_metric_learning import losses, miners, trainers

    torch.manual_seed(opt.seed)
    trunk, head, net = build_model(opt.backbone)
    trunk.to(opt.device)
    head.to(opt.device)
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=opt.lr, weight_decay=opt.weight_decay),
        "embedder_optimizer": torch.optim.Adam(head.parameters(), lr=opt.lr, weight_decay=opt.weight_decay),
    }
    if opt.loss == "triplet":
        margin = opt.margin if opt.margin is not None else 0.2
        loss = losses.TripletMarginLoss(margin=margin)
        miner = (
            miners.BatchHardMiner()
            if opt.miner == "batch_hard"
            else miners.TripletMarginMiner(margin=margin, type_of_triplets=opt.miner)
        )
        mining = {"tuple_miner": miner}
    else:
        loss = losses.ArcFaceLoss(
            len(train.names), DIM, **({"margin": opt.margin} if opt.margin is not None else {})
        ).to(opt.device)
        optimizers["metric_loss_optimizer"] = torch.optim.SGD(loss.parameters(), lr=0.01)
        mining = {}
    schedulers = {
        f"{k.removesuffix('_optimizer')}_scheduler_by_epoch": torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=opt.epochs, eta_min=opt.lr / 100
        )
        for k, o in optimizers.items()
        if k != "metric_loss_optimizer"
    }
    sampler = LookAlikeSampler(
        train.labels, clothing_colours(train), opt.batch, opt.per_identity, seed=opt.seed
    )
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()

    def end_of_epoch(trainer) -> bool:
        vectors = embed_crops(net, val, opt.device)
        v = verification_report(vectors, val, seed=opt.seed)
        net.train()
        row = {
            "epoch": trainer.epoch,
            "loss": float(np.mean(epoch_losses)) if epoch_losses else 0.0,
            "val_roc_auc": v["roc_auc"],
            "val_balanced_accuracy": v["balanced_accuracy"],
            "seconds": time.perf_counter() - t_start,
        }
        history.append(row)
        epoch_losses.clear()
        log(
            f"epoch {row['epoch']}/{opt.epochs}: loss {row['loss']:.4f}, held-out ROC AUC {row['val_roc_auc']:.4f}, balanced accuracy "
            f"{row['val_balanced_accuracy']:.4f} ({row['seconds']:.0f} s)"
        )
        return not (opt.max_minutes and row["seconds"] > 60 * opt.max_minutes)

    epoch_losses: list[float] = []

    def end_of_iteration(trainer) -> None:  # the trainer zeroes its losses before the epoch hook runs
        value = trainer.losses.get("metric_loss", 0.0)
        epoch_losses.append(float(value.detach()) if hasattr(value, "detach") else float(value))

    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": head},
        optimizers=optimizers,
        batch_size=opt.batch,
        loss_funcs={"metric_loss": loss},
        mining_funcs=mining,
        dataset=_dataset(train, augment=True, seed=opt.seed),
        sampler=sampler,
        dataloader_num_workers=0,
        data_device=torch.device(opt.device),
        lr_schedulers=schedulers,
        end_of_iteration_hook=end_of_iteration,
        end_of_epoch_hook=end_of_epoch,
    )
    trainer.train(num_epochs=opt.epochs)
    train_seconds = time.perf_counter() - t_start

    net = net.cpu().eval()
    checkpoint = out / "embedder.pt"
    tmp = checkpoint.with_name(checkpoint.name + ".partial")
    torch.save({"backbone": opt.backbone, "imgsz": opt.imgsz, "state_dict": net.state_dict()}, tmp)
    tmp.replace(checkpoint)
    onnx_path = export_embedder_onnx(net, out / "embedder.onnx", opt.imgsz)
    vectors = embed_crops(net, val)
    diff = check_against_torch(vectors, onnx_path, val)
    verification = verification_report(vectors, val, seed=opt.seed)
    store_embedder_metadata(onnx_path, verification["threshold"], opt.crop, opt.imgsz)
    sizes = file_sizes_mb({checkpoint.name: checkpoint, onnx_path.name: onnx_path})
    over = {k: v for k, v in sizes.items() if v > opt.budget_mb}
    if over:
        raise ValueError(f"budget: expected files within {opt.budget_mb:g} MB, found {over}")
    report: dict[str, object] = {
        "onnx": str(onnx_path),
        "checkpoint": str(checkpoint),
        "crops": {k: str(v) for k, v in sources.items()},
        "train_people": len(train.names),
        "train_crops": len(train),
        "verification": verification,
        "history": history,
        "epochs_run": len(history),
        "train_seconds": train_seconds,
        "trainer": "pytorch-metric-learning MetricLossOnly",
        "loss": opt.loss,
        "miner": opt.miner if opt.loss == "triplet" else None,
        "options": asdict(opt),
        "sizes_mb": sizes,
        "predicted_mb": {"checkpoint": estimate.checkpoint_mb, "onnx": estimate.onnx_mb},
        "params": estimate.params,
        "onnx_vs_torch_max_diff": diff,
        "problems": train.problems + val.problems,
    }
    write_text_atomic(out / "embedder_report.json", json.dumps(report, indent=1, default=str))
    return EmbedderResult(out, checkpoint, onnx_path, verification, report, sizes)
