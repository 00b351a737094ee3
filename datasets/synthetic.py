"""The embedded default data set: textured scenes with six object classes, generated on first use.

Classes differ by shape *and* texture, never by colour: every object's colour is drawn from one
distribution whatever its class, so a classifier has to look at form. Scenes have natural-looking
fractal backgrounds, 1 to 3 objects at varied scales and rotations (later ones occlude earlier ones;
the masks follow exactly), distractor objects of no class of interest (background in the masks,
foreground in the saliency set), and some images with no object at all.

Written once, deterministically from ``synthetic.seed``, in the PASCAL VOC layout under
``dataset.root`` (JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt,
class_names.txt), plus a class-agnostic saliency set (``synthetic.saliency_seed``) under
``saliency/{train,val}/{images,masks}``. A marker file written last records the settings; a later
call with the same settings returns at once.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common import files

GENERATOR_VERSION = 1
CLASS_NAMES = ["disc", "box", "triangle", "star", "ring", "cross"]
MARKER = ".complete.json"
SIDES = (128, 144, 160)  # multiples of 16: equal sizes batch well, and strides divide evenly


# ------------------------------------------------------------------------------------------------
# drawing
# ------------------------------------------------------------------------------------------------
def fractal_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 5,
                  base: int = 3) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1] (H, W)."""
    total = np.zeros((height, width), np.float32)
    amplitude, weight = 1.0, 0.0
    for octave in range(octaves):
        cells = base * 2 ** octave
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        weight += amplitude
        amplitude *= 0.55
    total /= weight
    return (total - total.min()) / max(1e-6, float(total.max() - total.min()))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """One RGB colour in [0, 1], the same distribution for every class and distractor."""
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(90, 230), rng.integers(110, 250)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A natural-looking backdrop: two muted colours blended by fractal noise, a horizon-like
    vertical gradient and fine grain."""
    low, high = random_colour(rng) * 0.5, random_colour(rng) * 0.7 + 0.25
    blend = fractal_noise(rng, height, width, octaves=5, base=int(rng.integers(2, 5)))
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    horizon = rng.uniform(0.3, 0.7)
    gradient = 1 / (1 + np.exp(-(rows - horizon) * rng.uniform(4, 12)))
    mix = np.clip(0.6 * blend + 0.4 * gradient, 0, 1)[..., None]
    grain = (rng.random((height, width, 1)).astype(np.float32) - 0.5) * 0.06
    return np.clip(low * (1 - mix) + high * mix + grain, 0, 1)


def _rotated_coords(height: int, width: int, cy: float, cx: float, angle: float, radius: float):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, xs = (ys - cy) / radius, (xs - cx) / radius
    cos, sin = np.cos(angle), np.sin(angle)
    return xs * cos + ys * sin, -xs * sin + ys * cos  # u, v in the object's own frame


def _polygon(points: np.ndarray, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def shape_mask(kind: str, height: int, width: int, cy: float, cx: float, radius: float,
               angle: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one shape (classes and distractors)."""
    u, v = _rotated_coords(height, width, cy, cx, angle, radius)
    if kind == "disc":
        aspect = rng.uniform(0.75, 1.0)
        return u ** 2 + (v / aspect) ** 2 <= 1.0
    if kind == "ring":
        r2 = u ** 2 + v ** 2
        return (r2 <= 1.0) & (r2 >= 0.45 ** 2)
    if kind == "box":
        aspect = rng.uniform(0.55, 0.9)
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9 * aspect)
    if kind == "cross":
        arm = 0.3
        return ((np.abs(u) <= 1.0) & (np.abs(v) <= arm)) | ((np.abs(v) <= 1.0) & (np.abs(u) <= arm))
    if kind in ("triangle", "star"):
        corners = 3 if kind == "triangle" else 5
        step = np.pi / corners
        angles = angle + np.arange(2 * corners if kind == "star" else corners) * (
            step if kind == "star" else 2 * step)
        radii = np.ones_like(angles) if kind == "triangle" else np.where(
            np.arange(len(angles)) % 2 == 0, 1.0, 0.42)
        points = np.stack([cx + radius * radii * np.cos(angles), cy + radius * radii * np.sin(angles)], 1)
        return _polygon(points, height, width)
    if kind == "blob":  # distractor: an irregular organic shape
        r = np.sqrt(u ** 2 + v ** 2)
        theta = np.arctan2(v, u)
        wobble = sum(rng.uniform(0.05, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                     for k in (2, 3, 5))
        return r <= 0.8 + wobble
    if kind == "crescent":  # distractor
        return (u ** 2 + v ** 2 <= 1.0) & ((u - 0.45) ** 2 + v ** 2 >= 0.75 ** 2)
    raise ValueError(kind)


def texture(kind: str, height: int, width: int, cy: float, cx: float, radius: float,
            angle: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness pattern in [0, 1] that identifies a class together with its shape."""
    u, v = _rotated_coords(height, width, cy, cx, angle + rng.uniform(-0.2, 0.2), radius)
    if kind == "disc":  # spherical shading, lit from one side
        light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)])
        depth = np.sqrt(np.clip(1 - u ** 2 - v ** 2, 0, 1))
        return np.clip(0.35 + 0.65 * (depth + light[0] * u + light[1] * v) / 1.5, 0, 1)
    if kind == "box":  # stripes
        return 0.5 + 0.5 * np.sign(np.sin(u * np.pi * rng.uniform(3.5, 5.0)))
    if kind == "triangle":  # checkerboard
        period = rng.uniform(0.28, 0.4)
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "star":  # polka dots
        period = rng.uniform(0.3, 0.4)
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        return np.where(du ** 2 + dv ** 2 < 0.09, 0.0, 1.0).astype(np.float32)
    if kind == "ring":  # coarse grain
        return fractal_noise(rng, height, width, octaves=2, base=max(8, int(radius)))
    if kind == "cross":  # waves
        return 0.5 + 0.5 * np.sin((u + 0.25 * np.sin(v * 4)) * np.pi * 3)
    # distractors: soft gradient only
    return np.clip(0.6 + 0.3 * u, 0, 1)


# ------------------------------------------------------------------------------------------------
# scenes
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W): 0 background, 1..C classes
    salient: np.ndarray  # bool (H, W): every object, classes and distractors
    touching: bool  # two objects share or border pixels
    distractors: int


def make_scene(rng: np.random.Generator, min_side: int, max_side: int) -> Scene:
    sides = [s for s in SIDES if min_side <= s <= max_side] or [min_side, max_side]
    height, width = int(rng.choice(sides)), int(rng.choice(sides))
    canvas = background(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    salient = np.zeros((height, width), bool)
    owner = np.zeros((height, width), np.int16)  # which drawn object holds each pixel
    short = min(height, width)

    roll = rng.random()
    count = 0 if roll < 0.06 else 1 if roll < 0.45 else 2 if roll < 0.8 else 3
    objects = [("class", int(rng.integers(len(CLASS_NAMES)))) for _ in range(count)]
    distractors = int(rng.random() < 0.4) + int(rng.random() < 0.1)
    objects += [("distractor", int(rng.integers(2))) for _ in range(distractors)]
    order = rng.permutation(len(objects))
    previous_centre = None
    touching = False
    for draw_index, index in enumerate(order, start=1):
        role, which = objects[index]
        kind = CLASS_NAMES[which] if role == "class" else ("blob", "crescent")[which]
        radius = short * rng.uniform(0.13, 0.3)
        if previous_centre is not None and rng.random() < 0.35:  # place next to the last object
            direction = rng.uniform(0, 2 * np.pi)
            distance = radius * rng.uniform(0.9, 1.6)
            cy = float(np.clip(previous_centre[0] + distance * np.sin(direction), radius * 0.5, height - radius * 0.5))
            cx = float(np.clip(previous_centre[1] + distance * np.cos(direction), radius * 0.5, width - radius * 0.5))
        else:
            cy, cx = rng.uniform(radius * 0.7, height - radius * 0.7), rng.uniform(radius * 0.7, width - radius * 0.7)
        angle = rng.uniform(0, 2 * np.pi)
        shape = shape_mask(kind, height, width, cy, cx, radius, angle, rng)
        if not shape.any():
            continue
        grown = cv2.dilate(shape.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        touching |= bool((owner[grown] > 0).any())
        pattern = texture(kind, height, width, cy, cx, radius, angle, rng)[..., None]
        colour = random_colour(rng)
        shade = colour * (0.45 + 0.55 * pattern)
        canvas = np.where(shape[..., None], shade, canvas)
        owner[shape] = draw_index
        salient |= shape
        mask[shape] = which + 1 if role == "class" else 0
        previous_centre = (cy, cx)
    # soft edges on the picture only (the mask stays exact), plus sensor-like noise
    blurred = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    noise = rng.normal(0, 0.015, canvas.shape).astype(np.float32)
    image = np.clip((blurred + noise) * 255, 0, 255).astype(np.uint8)
    # a class whose visible part is tiny is dropped from the mask (its label would be unfair)
    for class_id in np.unique(mask):
        if class_id and (mask == class_id).sum() < 30:
            mask[mask == class_id] = 0
    return Scene(image, mask, salient, touching, distractors)


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _settings(cfg) -> dict:
    return {"version": GENERATOR_VERSION, **dataclasses.asdict(cfg.synthetic)}


def _write_split(root: Path, prefix: str, count: int, rng: np.random.Generator, cfg, stats: dict,
                 progress: tqdm, saliency: bool) -> list[str]:
    ids = []
    for index in range(count):
        image_id = f"{prefix}_{index:04d}"
        scene = make_scene(rng, cfg.synthetic.min_size, cfg.synthetic.max_size)
        if saliency:
            files.write_rgb(root / "images" / f"{image_id}.jpg", scene.image, quality=95)
            files.write_gray_png(root / "masks" / f"{image_id}.png", np.where(scene.salient, 255, 0))
        else:
            files.write_rgb(root / "JPEGImages" / f"{image_id}.jpg", scene.image, quality=95)
            files.write_label_png(root / "SegmentationClass" / f"{image_id}.png", scene.mask)
            classes = set(np.unique(scene.mask)) - {0}
            stats["images"] += 1
            stats["multi_class"] += len(classes) >= 2
            stats["touching"] += scene.touching
            stats["with_distractor"] += scene.distractors > 0
            stats["empty"] += not classes
        ids.append(image_id)
        progress.update(1)
    return ids


def ensure_generated(cfg) -> Path:
    """Generate the set into ``dataset.root`` unless a marker with the same settings is there."""
    root = cfg.path(cfg.dataset.root)
    marker = root / MARKER
    settings = _settings(cfg)
    if marker.is_file():
        try:
            if json.loads(marker.read_text())["settings"] == settings:
                return root
        except (ValueError, KeyError):
            pass
    for name in ("JPEGImages", "SegmentationClass", "ImageSets", "saliency", MARKER, "class_names.txt"):
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    syn = cfg.synthetic
    stats = dict.fromkeys(("images", "multi_class", "touching", "with_distractor", "empty"), 0)
    total = syn.num_train + syn.num_val + syn.saliency_num_train + syn.saliency_num_val
    with tqdm(total=total, desc=f"generating synthetic data in {root}") as progress:
        rng = np.random.default_rng(syn.seed)
        splits = {"train": _write_split(root, "syn_train", syn.num_train, rng, cfg, stats, progress, False),
                  "val": _write_split(root, "syn_val", syn.num_val, rng, cfg, stats, progress, False)}
        saliency_rng = np.random.default_rng(syn.saliency_seed)
        _write_split(root / "saliency" / "train", "sal_train", syn.saliency_num_train, saliency_rng,
                     cfg, stats, progress, True)
        _write_split(root / "saliency" / "val", "sal_val", syn.saliency_num_val, saliency_rng,
                     cfg, stats, progress, True)
    for split, ids in splits.items():
        files.write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    files.write_text(root / "class_names.txt", "\n".join(CLASS_NAMES) + "\n")
    fractions = {key: value / max(1, stats["images"]) for key, value in stats.items() if key != "images"}
    files.write_text(marker, json.dumps({"settings": settings, "statistics": fractions}, indent=2))
    return root


def saliency_roots(cfg) -> tuple[Path, Path]:
    """(train, val) folders of the class-agnostic saliency set, each with images/ and masks/."""
    root = ensure_generated(cfg)
    return root / "saliency" / "train", root / "saliency" / "val"


def statistics(cfg) -> dict:
    """Fractions of segmentation images that are multi-class, touching, with distractors, empty."""
    return json.loads((ensure_generated(cfg) / MARKER).read_text())["statistics"]


def contact_sheet(root: Path, path: Path, count: int = 12, columns: int = 6) -> None:
    """Images above their colourised masks, for the docs."""
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:count]
    tiles = []
    for image_id in ids:
        image = cv2.resize(files.read_image(root / "JPEGImages" / f"{image_id}.jpg"), (128, 128))
        mask = files.read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        colour = cv2.resize(files.colorize(mask), (128, 128), interpolation=cv2.INTER_NEAREST)
        tiles.append(np.concatenate([image, colour], axis=0))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    files.write_rgb(path, np.concatenate(rows, axis=0))
