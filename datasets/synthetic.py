"""The embedded default data set: textured scenes with six object classes, generated on first use.

Classes differ by shape *and* texture, never by colour: every object's colour is drawn from one
distribution whatever its class, and each texture is rescaled to the same mean brightness, so a
classifier has to look at form. Scenes have natural-looking backgrounds (landscape bands, fractal
noise, blurred blobs), 1 to 3 objects of interest at varied scales and rotations (later ones occlude
earlier ones; the masks follow exactly), lit from one side per scene with drop shadows, distractor
objects of no class of interest (background in the masks, foreground in the saliency set), and
some images with no object at all.

Written once, deterministically from ``synthetic.seed``, in the PASCAL VOC layout under
``dataset.root``::

    JPEGImages/syn_{train,val}_NNNN.jpg          RGB, JPEG quality 95
    SegmentationClass/syn_*.png                  palette PNG: 0 background, 1..6 classes (exact)
    SegmentationObject/syn_*.png                 palette PNG: every object's instance index
                                                 (1.., draw order, distractors included)
    ImageSets/Segmentation/{train,val}.txt       ids
    class_names.txt                              CLASS_NAMES, one a line
    scenes.json                                  per id: size and objects (kind, class id, ...)
    saliency/{train,val}/images/sal_*.jpg        class-agnostic set (``synthetic.saliency_seed``)
    saliency/{train,val}/masks/sal_*.png         every object 255, background 0
    saliency/{train,val}/instances/sal_*.png     instance indices as above
    .complete.json                               written last: generator version, settings,
                                                 measured statistics

A later call with the same settings finds the marker and returns at once; other settings remove
what the generator wrote (files named like its ids, nothing else) and generate again.

``python -m datasets.synthetic [--set synthetic.num_train=40] [--sheet docs/synthetic_examples.png]``
generates the configured set, prints its statistics and optionally writes a contact sheet.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from common import files

GENERATOR_VERSION = 2
MARKER = ".complete.json"
LOCK = ".generating.lock"
SCENES = "scenes.json"

# class name -> texture; the shape is the name
CLASS_TEXTURES = {
    "disc": "shaded",
    "box": "stripes",
    "triangle": "checker",
    "star": "dots",
    "ring": "grain",
    "cross": "waves",
}
CLASS_NAMES = list(CLASS_TEXTURES)
# objects of no class of interest: shapes and textures none of the classes has
DISTRACTOR_TEXTURES = {"blob": "marble", "crescent": "target", "pill": "two-tone"}
DISTRACTOR_KINDS = list(DISTRACTOR_TEXTURES)

SIDE_STEP = 16  # image sides are multiples of 16: equal sizes batch well, strides divide evenly
OBJECT_COUNT_P = (0.06, 0.36, 0.34, 0.24)  # P(0, 1, 2, 3 objects of interest)
DISTRACTOR_COUNT_P = (0.52, 0.36, 0.12)  # P(0, 1, 2 distractors)
NEW_CLASS_P = 0.8  # a further object takes a class not yet in the scene
NEXT_TO_PREVIOUS_P = 0.4  # a further object is placed against the previous one (touch / overlap)
EXTENT_RANGE = (0.15, 0.6)  # object extent (2 x radius) as a fraction of the image's short side
MIN_VISIBLE_FRACTION = 0.5  # an occluded object keeps at least this much of itself in view
MIN_VISIBLE_PIXELS = 60  # ... and at least this many pixels (fewer on images under 110 x 110)
PLACEMENT_TRIES = 8

SEGMENTATION_ID = re.compile(r"syn_(train|val)_\d{4,}")
SALIENCY_ID = re.compile(r"sal_(train|val)_\d{4,}")


# ------------------------------------------------------------------------------------------------
# noise and colours
# ------------------------------------------------------------------------------------------------
def value_noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Smooth random field (H, W) in about [0, 1] with features ``cells`` across the longer side."""
    cells = max(1, int(round(cells)))
    grid_h = max(2, int(np.ceil(cells * height / max(height, width))) + 1)
    grid_w = max(2, int(np.ceil(cells * width / max(height, width))) + 1)
    grid = rng.random((grid_h, grid_w), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def fractal_noise(
    rng: np.random.Generator, height: int, width: int, octaves: int = 5, base: float = 3, persistence: float = 0.55
) -> np.ndarray:
    """Multi-octave value noise stretched to [0, 1] (H, W)."""
    total = np.zeros((height, width), np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        total += amplitude * value_noise(rng, height, width, base * 2**octave)
        amplitude *= persistence
    low, high = float(total.min()), float(total.max())
    return (total - low) / max(1e-6, high - low)


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    pixel = np.uint8([[[int(hue) % 180, int(saturation), int(value)]]])
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def object_colour(rng: np.random.Generator) -> np.ndarray:
    """RGB in [0, 1]; one distribution for every class and distractor (colour says nothing)."""
    return _hsv(rng.integers(0, 180), rng.integers(80, 235), rng.integers(120, 250))


def muted_colour(rng: np.random.Generator, hue: float | None = None, value: tuple = (50, 210)) -> np.ndarray:
    """A less saturated colour for backgrounds, optionally near ``hue`` (OpenCV's 0..180)."""
    hue = rng.integers(0, 180) if hue is None else hue + rng.integers(-12, 13)
    return _hsv(hue, rng.integers(15, 150), rng.integers(*value))


# ------------------------------------------------------------------------------------------------
# backgrounds
# ------------------------------------------------------------------------------------------------
def _lerp(low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return low + (high - low) * weight[..., None]


def _landscape(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sky over a wobbly horizon over textured ground (grass, sand, soil)."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    sky_hue = rng.integers(85, 125) if rng.random() < 0.7 else None
    sky = _lerp(
        muted_colour(rng, sky_hue, (150, 250)),
        muted_colour(rng, sky_hue, (90, 200)),
        np.broadcast_to(rows / height, (height, width)),
    )
    clouds = fractal_noise(rng, height, width, octaves=4, base=2)
    sky = sky + (0.35 * np.clip(clouds - 0.5, 0, 1))[..., None]
    line = 1 + 0.9 * (value_noise(rng, 1, width, rng.integers(2, 6))[0] - 0.5)
    horizon = height * rng.uniform(0.2, 0.6) * line[None, :]
    ground_hue = rng.integers(10, 75) if rng.random() < 0.75 else None
    grain = fractal_noise(rng, height, width, octaves=5, base=rng.uniform(3, 8), persistence=0.7)
    ground = _lerp(muted_colour(rng, ground_hue, (40, 130)), muted_colour(rng, ground_hue, (100, 220)), grain)
    ground *= (0.75 + 0.35 * np.clip((rows - horizon) / height, 0, 1))[..., None]  # nearer = brighter
    blend = np.clip((rows - horizon) / 1.5 + 0.5, 0, 1)
    return _lerp(sky, ground, blend)


def _fractal(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Two or three colours mixed by fractal noise, under a colour gradient in a random direction."""
    field = fractal_noise(rng, height, width, octaves=5, base=rng.uniform(2, 5), persistence=rng.uniform(0.45, 0.7))
    canvas = _lerp(muted_colour(rng), muted_colour(rng), field)
    if rng.random() < 0.5:
        second = fractal_noise(rng, height, width, octaves=4, base=rng.uniform(3, 7))
        canvas = _lerp(canvas, np.broadcast_to(muted_colour(rng), canvas.shape), np.clip(second * 1.6 - 0.8, 0, 1))
    direction = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs * np.cos(direction) + ys * np.sin(direction)) / max(height, width)
    return canvas * (0.8 + 0.4 * (ramp - ramp.min()))[..., None]


def _blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A noisy base with large blurred blobs of colour, like out-of-focus foliage or walls."""
    canvas = _lerp(muted_colour(rng), muted_colour(rng), fractal_noise(rng, height, width, 4, 4))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(4, 10))):
        cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
        sigma = rng.uniform(0.08, 0.25) * max(height, width)
        weight = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2)) * rng.uniform(0.5, 0.95)
        canvas = _lerp(canvas, np.broadcast_to(muted_colour(rng), canvas.shape), weight)
    speckle = fractal_noise(rng, height, width, octaves=2, base=max(height, width) / 6)
    return canvas * (0.9 + 0.2 * speckle)[..., None]


BACKGROUNDS = (_landscape, _fractal, _blobs)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A natural-looking textured backdrop (H, W, 3) float32 in about [0, 1]; style varies."""
    style = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = style(rng, height, width)
    # fine surface grain, a few pixels across (foliage, gravel, fabric)
    grain = value_noise(rng, height, width, max(height, width) / rng.uniform(2.5, 5)) - 0.5
    canvas = canvas * (1 + rng.uniform(0.08, 0.2) * grain)[..., None]
    return np.clip(canvas, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# shapes and textures (in the object's own frame: u along its axis, v across, radius 1)
# ------------------------------------------------------------------------------------------------
def _frame(height: int, width: int, cy: float, cx: float, radius: float, angle: float):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, xs = (ys - cy) / radius, (xs - cx) / radius
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return xs * cos + ys * sin, -xs * sin + ys * cos


def _star_polygon(
    height: int, width: int, cy: float, cx: float, radius: float, angle: float, points: int, inner: float
) -> np.ndarray:
    corner_angles = angle + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner) * radius
    corners = np.stack([cx + radii * np.cos(corner_angles), cy + radii * np.sin(corner_angles)], 1)
    mask = np.zeros((height, width), np.uint8)
    # 4 fractional bits: cv2 places the vertices to 1/16 pixel
    cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


@dataclasses.dataclass
class ShapeParams:
    """Per-object shape parameters drawn once, so retries keep an object's look."""

    aspect: float
    inner: float
    arm: float
    wobble: list

    @staticmethod
    def draw(rng: np.random.Generator) -> ShapeParams:
        return ShapeParams(
            aspect=float(rng.uniform(0.55, 0.9)),
            inner=float(rng.uniform(0.42, 0.6)),
            arm=float(rng.uniform(0.24, 0.34)),
            wobble=[(k, float(rng.uniform(0.1, 0.2)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5)],
        )


def shape_mask(
    kind: str, height: int, width: int, cy: float, cx: float, radius: float, angle: float, params: ShapeParams
) -> np.ndarray:
    """Boolean mask (H, W) of one object: a class shape or a distractor shape."""
    u, v = _frame(height, width, cy, cx, radius, angle)
    if kind == "disc":  # a slightly elliptic disc
        return u**2 + (v / (0.8 + 0.2 * params.aspect)) ** 2 <= 1.0
    if kind == "box":
        return (np.abs(u) <= 0.92) & (np.abs(v) <= 0.92 * params.aspect)
    if kind == "triangle":
        return _star_polygon(height, width, cy, cx, radius, angle, 3, 0.5)  # inner = 1/2: straight sides
    if kind == "star":
        return _star_polygon(height, width, cy, cx, radius, angle, 5, 0.42)
    if kind == "ring":
        squared = u**2 + v**2
        return (squared <= 1.0) & (squared >= params.inner**2)
    if kind == "cross":
        return ((np.abs(u) <= 1.0) & (np.abs(v) <= params.arm)) | ((np.abs(v) <= 1.0) & (np.abs(u) <= params.arm))
    if kind == "blob":  # an irregular, lumpy outline
        theta = np.arctan2(v, u)
        outline = 0.72 + sum(amp * np.cos(k * theta + phase) for k, amp, phase in params.wobble)
        return np.sqrt(u**2 + v**2) <= outline
    if kind == "crescent":
        return (u**2 + v**2 <= 1.0) & ((u - 0.45) ** 2 + v**2 >= 0.78**2)
    if kind == "pill":  # a capsule: a rectangle with round ends
        half_length, half_width = 0.65, 0.32
        return (np.maximum(np.abs(u) - half_length, 0) ** 2 + v**2) <= half_width**2
    raise ValueError(f"unknown shape {kind!r}")


def texture_pattern(
    kind: str, height: int, width: int, cy: float, cx: float, radius: float, angle: float, rng: np.random.Generator
) -> np.ndarray:
    """The object's brightness pattern (H, W), any scale; rescaled per object later."""
    texture = CLASS_TEXTURES.get(kind) or DISTRACTOR_TEXTURES[kind]
    u, v = _frame(height, width, cy, cx, radius, angle + rng.uniform(-0.3, 0.3))
    if texture == "shaded":  # plain: the lighting alone gives its form
        return np.zeros((height, width), np.float32)
    if texture == "stripes":
        return np.sign(np.sin(u * np.pi * rng.uniform(3.0, 4.5) + rng.uniform(0, 2 * np.pi)))
    if texture == "checker":
        period = rng.uniform(0.26, 0.38)
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if texture == "dots":
        period = rng.uniform(0.28, 0.38)
        row = np.floor(v / period)
        du = (u / period + 0.5 * row) % 1 - 0.5  # staggered rows
        dv = (v / period) % 1 - 0.5
        return -(du**2 + dv**2 < 0.31**2).astype(np.float32)
    if texture == "grain":  # coarse mottled grain, a few pixels across
        cells = max(height, width) / rng.uniform(2.5, 3.5)
        return value_noise(rng, height, width, cells) + 0.5 * value_noise(rng, height, width, cells / 2)
    if texture == "waves":
        return np.sin((u + 0.22 * np.sin(v * np.pi * 1.5)) * np.pi * rng.uniform(2.5, 3.5))
    if texture == "marble":  # thin dark veins through a light stone
        turbulence = fractal_noise(rng, height, width, octaves=3, base=max(height, width) / radius / 1.5)
        return -((1 - np.abs(np.sin((u * 2.5 + 4 * turbulence) * np.pi))) ** 8)
    if texture == "target":  # concentric rings around the crescent's centre
        return np.sin(np.sqrt(u**2 + v**2) * np.pi * rng.uniform(7, 10))
    if texture == "two-tone":  # the pill's halves get two colours (see render_object)
        return (u > 0).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


# ------------------------------------------------------------------------------------------------
# lighting and objects
# ------------------------------------------------------------------------------------------------
def _height_field(
    kind: str, shape: np.ndarray, u: np.ndarray, v: np.ndarray, radius: float, params: ShapeParams
) -> np.ndarray:
    """Surface height in [0, 1]: a dome for round solids, a bevelled slab for the others."""
    if kind == "disc":
        return np.sqrt(np.clip(1 - u**2 - (v / (0.8 + 0.2 * params.aspect)) ** 2, 0, 1))
    if kind == "pill":
        return np.sqrt(np.clip(1 - (v / 0.32) ** 2, 0, 1))
    distance = cv2.distanceTransform(np.pad(shape, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ramp = np.clip(distance / max(2.5, 0.18 * radius), 0, 1)
    # smoothstep, then a light blur: a rounded edge without the distance map's pixel steps
    return cv2.GaussianBlur(ramp * ramp * (3 - 2 * ramp), (0, 0), 0.8)


def _shading(
    height_field: np.ndarray, shape: np.ndarray, radius: float, light: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(diffuse factor with mean 1 over the shape, specular highlight) from a height field."""
    gy, gx = np.gradient(height_field * radius * 0.35)
    norm = np.sqrt(gx**2 + gy**2 + 1)
    nx, ny, nz = -gx / norm, -gy / norm, 1 / norm
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    half = light + np.array([0, 0, 1], np.float32)
    half /= np.linalg.norm(half)
    specular = np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1) ** 30 * rng.uniform(0.1, 0.35)
    diffuse = 0.35 + 0.65 * lambert
    return diffuse / max(1e-6, float(diffuse[shape].mean())), specular


def render_object(
    canvas: np.ndarray,
    kind: str,
    shape: np.ndarray,
    cy: float,
    cx: float,
    radius: float,
    angle: float,
    params: ShapeParams,
    light: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Paint one object into ``canvas`` (in place; a window of the image holding the object and
    its shadow, with ``cy, cx`` in the window): drop shadow, textured colour, lighting."""
    height, width = shape.shape
    # the shadow falls away from the light onto whatever lies beneath
    offset = -light[:2] / max(1e-6, float(np.linalg.norm(light[:2]))) * radius * rng.uniform(0.08, 0.16)
    shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
    shadow = cv2.warpAffine(shape.astype(np.float32), shift, (width, height))
    sigma = 1 + 0.06 * radius
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigma) * rng.uniform(0.3, 0.5)
    canvas *= (1 - shadow)[..., None]

    pattern = texture_pattern(kind, height, width, cy, cx, radius, angle, rng)
    inside = pattern[shape]
    spread = float(inside.std())
    # every texture gets the same mean (0.5) so it cannot shift the object's mean colour by class
    weight = (
        np.clip(0.5 + 0.5 * (pattern - float(inside.mean())) / spread, 0, 1)
        if spread > 1e-6
        else np.full(shape.shape, 0.5, np.float32)
    )
    colour = object_colour(rng)
    if kind == "pill" or rng.random() < 0.35:  # two colours from the same distribution
        second = object_colour(rng)
    else:  # one colour, the pattern in a darker and a lighter shade
        contrast = rng.uniform(0.3, 0.5)
        second, colour = colour * (1 - contrast), np.clip(colour * (1 + contrast * 0.6), 0, 1)
    albedo = _lerp(second, colour, weight)
    u, v = _frame(height, width, cy, cx, radius, angle)
    diffuse, specular = _shading(_height_field(kind, shape, u, v, radius, params), shape, radius, light, rng)
    lit = albedo * diffuse[..., None] + specular[..., None]
    canvas[shape] = lit[shape]


@dataclasses.dataclass
class SceneObject:
    """One drawn object; ``index`` is its value in the instance map."""

    index: int
    role: str  # "class" | "distractor"
    kind: str
    class_id: int  # 1..C; 0 for a distractor
    centre: tuple[float, float]
    radius: float
    angle: float
    drawn_pixels: int
    visible_pixels: int = 0


@dataclasses.dataclass
class Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W): 0 background (distractors too), 1..C classes
    instances: np.ndarray  # uint8 (H, W): 0 background, i = objects[i - 1]
    objects: list[SceneObject]

    @property
    def salient(self) -> np.ndarray:
        """bool (H, W): every object, classes and distractors."""
        return self.instances > 0

    @property
    def distractors(self) -> int:
        return sum(o.role == "distractor" for o in self.objects)

    @property
    def touching(self) -> bool:
        """Two objects share a border or one occludes another (seen in the instance map)."""
        return bool(touching_pairs(self.instances))


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, of instance indices that are 8-neighbours somewhere in the map."""
    padded = np.pad(instances, 1)
    centre = padded[1:-1, 1:-1]
    pairs: set[tuple[int, int]] = set()
    height, width = instances.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        other = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        differ = (centre != other) & (centre > 0) & (other > 0)
        for a, b in set(zip(centre[differ].tolist(), other[differ].tolist())):
            pairs.add((min(a, b), max(a, b)))
    return pairs


def _window(height: int, width: int, cy: float, cx: float, reach: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the image rows and columns within ``reach`` of a centre."""
    return (
        max(0, int(cy - reach)),
        min(height, int(np.ceil(cy + reach)) + 1),
        max(0, int(cx - reach)),
        min(width, int(np.ceil(cx + reach)) + 1),
    )


def image_sides(min_side: int, max_side: int) -> list[int]:
    """The side lengths images may have: multiples of SIDE_STEP in range, else the two ends."""
    first = -(-min_side // SIDE_STEP) * SIDE_STEP
    return list(range(first, max_side + 1, SIDE_STEP)) or sorted({min_side, max_side})


def _plan(rng: np.random.Generator) -> list[tuple[str, str]]:
    """(role, kind) of the objects of one scene, in draw order."""
    count = int(rng.choice(len(OBJECT_COUNT_P), p=OBJECT_COUNT_P))
    classes: list[str] = []
    for _ in range(count):
        unused = [name for name in CLASS_NAMES if name not in classes]
        pool = unused if classes and rng.random() < NEW_CLASS_P else CLASS_NAMES
        classes.append(pool[int(rng.integers(len(pool)))])
    distractors = int(rng.choice(len(DISTRACTOR_COUNT_P), p=DISTRACTOR_COUNT_P))
    objects = [("class", name) for name in classes]
    objects += [("distractor", DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]) for _ in range(distractors)]
    return [objects[i] for i in rng.permutation(len(objects))]


def make_scene(rng: np.random.Generator, min_side: int, max_side: int) -> Scene:
    """One random scene: image, exact class mask, instance map and the objects drawn."""
    sides = image_sides(min_side, max_side)
    height, width = int(rng.choice(sides)), int(rng.choice(sides))
    short = min(height, width)
    canvas = background(rng, height, width)
    elevation = rng.uniform(0.45, 0.9)
    azimuth = rng.uniform(0, 2 * np.pi)
    light = np.array(
        [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)], np.float32
    )
    instances = np.zeros((height, width), np.uint8)
    objects: list[SceneObject] = []
    min_visible = min(MIN_VISIBLE_PIXELS, 0.005 * height * width)
    for role, kind in _plan(rng):
        params = ShapeParams.draw(rng)
        placed = None
        for _ in range(PLACEMENT_TRIES):
            radius = short * float(np.exp(rng.uniform(*np.log(EXTENT_RANGE)))) / 2
            if objects and rng.random() < NEXT_TO_PREVIOUS_P:
                previous = objects[-1]
                direction = rng.uniform(0, 2 * np.pi)
                distance = (previous.radius + radius) * rng.uniform(0.55, 0.95)
                cy = previous.centre[0] + distance * np.sin(direction)
                cx = previous.centre[1] + distance * np.cos(direction)
            else:
                cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            # mostly inside the image: the centre at least 0.65 radius from every border
            cy = float(np.clip(cy, 0.65 * radius, height - 0.65 * radius))
            cx = float(np.clip(cx, 0.65 * radius, width - 0.65 * radius))
            angle = float(rng.uniform(0, 2 * np.pi))
            top, bottom, left, right = _window(height, width, cy, cx, radius * 1.02 + 2)
            shape = np.zeros((height, width), bool)
            shape[top:bottom, left:right] = shape_mask(
                kind, bottom - top, right - left, cy - top, cx - left, radius, angle, params
            )
            drawn = int(shape.sum())
            if drawn < min_visible:
                continue
            covered = np.bincount(instances[shape], minlength=len(objects) + 1)[1:]
            if all(
                o.visible_pixels - covered[i] >= max(min_visible, MIN_VISIBLE_FRACTION * o.drawn_pixels)
                for i, o in enumerate(objects)
            ):
                placed = (cy, cx, radius, angle, shape, drawn, covered)
                break
        if placed is None:
            continue  # no room for this object in this scene
        cy, cx, radius, angle, shape, drawn, covered = placed
        for i, o in enumerate(objects):
            o.visible_pixels -= int(covered[i])
        # everything an object paints (itself, its shadow) lies within this window
        top, bottom, left, right = _window(height, width, cy, cx, radius * 1.25 + 3 * (1 + 0.06 * radius) + 3)
        render_object(
            canvas[top:bottom, left:right],
            kind,
            shape[top:bottom, left:right],
            cy - top,
            cx - left,
            radius,
            angle,
            params,
            light,
            rng,
        )
        index = len(objects) + 1
        instances[shape] = index
        class_id = CLASS_NAMES.index(kind) + 1 if role == "class" else 0
        objects.append(SceneObject(index, role, kind, class_id, (cy, cx), radius, angle, drawn, drawn))

    # anti-alias object outlines in the picture only (the masks stay exact)
    outline = np.zeros((height, width), bool)
    outline[:, 1:] |= instances[:, 1:] != instances[:, :-1]
    outline[1:, :] |= instances[1:, :] != instances[:-1, :]
    outline = cv2.dilate(outline.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    softened = cv2.GaussianBlur(canvas, (3, 3), 0.7)
    canvas[outline] = softened[outline]
    exposure = rng.uniform(0.9, 1.1)
    noise = rng.normal(0, 0.012, canvas.shape).astype(np.float32)
    image = np.clip((canvas * exposure + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    class_of_instance = np.array([0] + [o.class_id for o in objects], np.uint8)
    return Scene(image, class_of_instance[instances], instances, objects)


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _settings(cfg) -> dict:
    return {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(cfg.synthetic)}


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_generated_file(name: str) -> bool:
    """Whether a file name is one the generator writes (or its atomic_write temporary)."""
    if name.startswith(".") and name.endswith(".part"):
        name = name[1:].split(".", 2)
        name = ".".join(name[:2])
    stem, _, suffix = name.rpartition(".")
    return suffix in ("jpg", "png") and bool(SEGMENTATION_ID.fullmatch(stem) or SALIENCY_ID.fullmatch(stem))


GENERATED_FOLDERS = (
    "JPEGImages",
    "SegmentationClass",
    "SegmentationObject",
    "saliency/train/images",
    "saliency/train/masks",
    "saliency/train/instances",
    "saliency/val/images",
    "saliency/val/masks",
    "saliency/val/instances",
)
GENERATED_FILES = ("ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt", "class_names.txt", SCENES)


def _check_foreign(root: Path) -> None:
    """Refuse to generate into a folder that holds anything the generator did not write: a wrong
    dataset.root must never cost a user's files (class_names.txt, images, lists are all overwritten)."""
    if (root / MARKER).exists() or not root.is_dir():
        return
    known = {Path(f).parts[0] for f in (*GENERATED_FOLDERS, *GENERATED_FILES)} | {LOCK}
    foreign = [p.name for p in root.iterdir() if p.name not in known]
    for folder in GENERATED_FOLDERS:
        if (root / folder).is_dir():
            foreign += [
                f"{folder}/{p.name}"
                for p in (root / folder).iterdir()
                if not (p.is_file() and _is_generated_file(p.name))
            ]
    if foreign:
        raise FileExistsError(
            f"dataset.kind = synthetic, but dataset.root {root} already holds files the generator did not "
            f"write (e.g. {sorted(foreign)[0]}); point dataset.root at an empty folder or set dataset.kind"
        )


def remove_generated(root: Path) -> None:
    """Delete what the generator writes under ``root`` (marker first), and folders left empty."""
    (root / MARKER).unlink(missing_ok=True)
    for name in (*GENERATED_FILES, MARKER):
        target = root / name
        target.unlink(missing_ok=True)
        if target.parent.is_dir():  # temporaries of an interrupted atomic_write
            for leftover in target.parent.glob(f".{target.name}.*.part"):
                leftover.unlink()
    for folder in GENERATED_FOLDERS:
        path = root / folder
        if path.is_dir():
            for entry in path.iterdir():
                if entry.is_file() and _is_generated_file(entry.name):
                    entry.unlink()
    folders = sorted(
        {root / f for f in GENERATED_FOLDERS}
        | {
            root / "ImageSets/Segmentation",
            root / "ImageSets",
            root / "saliency/train",
            root / "saliency/val",
            root / "saliency",
        },
        key=lambda p: len(p.parts),
        reverse=True,
    )
    for path in folders:
        with contextlib.suppress(OSError):  # kept when something else is inside
            path.rmdir()


def _write_scene(root: Path, image_id: str, scene: Scene, saliency: bool) -> None:
    if saliency:
        files.write_rgb(root / "images" / f"{image_id}.jpg", scene.image, quality=95)
        files.write_gray_png(root / "masks" / f"{image_id}.png", np.where(scene.salient, 255, 0))
        files.write_label_png(root / "instances" / f"{image_id}.png", scene.instances)
    else:
        files.write_rgb(root / "JPEGImages" / f"{image_id}.jpg", scene.image, quality=95)
        files.write_label_png(root / "SegmentationClass" / f"{image_id}.png", scene.mask)
        files.write_label_png(root / "SegmentationObject" / f"{image_id}.png", scene.instances)


def _scene_record(scene: Scene) -> dict:
    return {
        "size": list(scene.mask.shape),
        "objects": [
            {
                **dataclasses.asdict(o),
                "centre": [round(c, 2) for c in o.centre],
                "radius": round(o.radius, 2),
                "angle": round(o.angle, 3),
            }
            for o in scene.objects
        ],
    }


def scene_summary(scene: Scene) -> dict:
    """The few facts about a scene that :func:`scene_statistics` counts."""
    return {
        "classes": set(np.unique(scene.mask).tolist()) - {0},
        "touching": scene.touching,
        "distractors": scene.distractors,
        "objects_of_interest": sum(o.role == "class" for o in scene.objects),
    }


def scene_statistics(summaries: list[dict]) -> dict:
    """Fractions of scenes that are empty, multi-class, touching, with a distractor; class counts."""
    count = max(1, len(summaries))
    classes = [s["classes"] for s in summaries]
    return {
        "images": len(summaries),
        "empty": sum(not c for c in classes) / count,
        "multi_class": sum(len(c) >= 2 for c in classes) / count,
        "touching_or_overlapping": sum(s["touching"] for s in summaries) / count,
        "with_distractor": sum(s["distractors"] > 0 for s in summaries) / count,
        "objects_of_interest_per_image": sum(s["objects_of_interest"] for s in summaries) / count,
        "images_per_class": {name: sum(i + 1 in c for c in classes) for i, name in enumerate(CLASS_NAMES)},
    }


@contextlib.contextmanager
def _generation_lock(root: Path):
    """Only one process generates into ``root`` at a time (e.g. under torchrun)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_generated(cfg) -> Path:
    """Generate the set into ``dataset.root`` unless a marker with the same settings is there;
    return the root. Deterministic from ``synthetic.seed`` and ``synthetic.saliency_seed``.

    Only for ``dataset.kind = synthetic``: nothing else may write under a data set's root."""
    if cfg.dataset.kind != "synthetic":
        raise ValueError(
            f"the synthetic set is generated only for dataset.kind = synthetic, not into the "
            f"{cfg.dataset.kind} set at {cfg.path(cfg.dataset.root)}"
        )
    root = cfg.path(cfg.dataset.root)
    settings = _settings(cfg)
    marker = _read_marker(root)
    if marker is not None and marker.get("settings") == settings:
        return root
    _check_foreign(root)  # before the lock file: a folder the generator did not write gets nothing
    with _generation_lock(root):
        marker = _read_marker(root)  # another process may have finished meanwhile
        if marker is not None and marker.get("settings") == settings:
            return root
        _check_foreign(root)
        remove_generated(root)
        _generate(root, cfg.synthetic, settings)
    return root


def _generate(root: Path, syn, settings: dict) -> None:
    parts = [
        ("train", "syn_train", syn.num_train, False),
        ("val", "syn_val", syn.num_val, False),
        ("train", "sal_train", syn.saliency_num_train, True),
        ("val", "sal_val", syn.saliency_num_val, True),
    ]
    total = sum(count for *_, count, _ in parts)
    rngs = {False: np.random.default_rng(syn.seed), True: np.random.default_rng(syn.saliency_seed)}
    records: dict[str, dict] = {}
    ids: dict[str, list[str]] = {}
    summaries: dict[bool, list[dict]] = {False: [], True: []}
    with tqdm(total=total, desc=f"generating synthetic data in {root}", unit="image") as progress:
        for split, prefix, count, saliency in parts:
            folder = root / "saliency" / split if saliency else root
            for number in range(1, count + 1):
                image_id = f"{prefix}_{number:04d}"
                scene = make_scene(rngs[saliency], syn.min_size, syn.max_size)
                _write_scene(folder, image_id, scene, saliency)
                records[image_id] = _scene_record(scene)
                summaries[saliency].append(scene_summary(scene))
                if not saliency:
                    ids.setdefault(split, []).append(image_id)
                progress.update(1)
    for split in ("train", "val"):
        files.write_text(
            root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in ids.get(split, []))
        )
    files.write_text(root / "class_names.txt", "\n".join(CLASS_NAMES) + "\n")
    files.write_text(root / SCENES, json.dumps(records, separators=(",", ":")))
    statistics = {"segmentation": scene_statistics(summaries[False]), "saliency": scene_statistics(summaries[True])}
    files.write_text(root / MARKER, json.dumps({"settings": settings, "statistics": statistics}, indent=2))
    tqdm.write(f"synthetic data in {root}: " + json.dumps(statistics["segmentation"]))


def saliency_roots(cfg) -> tuple[Path, Path]:
    """(train, val) folders of the class-agnostic saliency set, each with images/ and masks/."""
    root = ensure_generated(cfg)
    return root / "saliency" / "train", root / "saliency" / "val"


def statistics(cfg) -> dict:
    """What the generator measured on the set it wrote: {"segmentation": ..., "saliency": ...}."""
    return json.loads((ensure_generated(cfg) / MARKER).read_text(encoding="utf-8"))["statistics"]


def read_scenes(root: Path) -> dict[str, dict]:
    """The per-image object records of a generated set (``scenes.json``)."""
    return json.loads((Path(root) / SCENES).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# contact sheet
# ------------------------------------------------------------------------------------------------
def contact_sheet(root: Path, path: Path, n: int = 12, columns: int = 6, tile: int = 112) -> Path:
    """A PNG of the first ``n`` training images above their colourised masks, captioned with
    their classes (for the docs). Returns ``path``."""
    root = Path(root)
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:n]
    names = (root / "class_names.txt").read_text().split()
    tiles = []
    for image_id in tqdm(ids, desc="contact sheet", leave=False):
        image = files.read_image(root / "JPEGImages" / f"{image_id}.jpg")
        mask = files.read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        scale = tile / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        cells = []
        for picture, interpolation in ((image, cv2.INTER_AREA), (files.colorize(mask), cv2.INTER_NEAREST)):
            cell = np.full((tile, tile, 3), 255, np.uint8)
            resized = cv2.resize(picture, size, interpolation=interpolation)
            cell[: size[1], : size[0]] = resized
            cells.append(cell)
        caption = np.full((14, tile, 3), 255, np.uint8)
        label = ", ".join(names[c - 1] for c in sorted(set(np.unique(mask).tolist()) - {0, 255})) or "(none)"
        cv2.putText(caption, label, (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (0, 0, 0), 1, cv2.LINE_AA)
        column = np.concatenate([cells[0], cells[1], caption], axis=0)
        tiles.append(np.pad(column, ((2, 2), (2, 2), (0, 0)), constant_values=255))
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    sheet = Image.fromarray(np.concatenate(rows, axis=0))

    def write(handle: io.BufferedWriter) -> None:
        sheet.save(handle, format="PNG", optimize=True)

    files.atomic_write(Path(path), write)
    return Path(path)


def main(argv: list[str] | None = None) -> dict:
    """Generate the configured set, print its statistics, optionally write a contact sheet."""
    import config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--sheet", help="write a contact sheet PNG here")
    args = parser.parse_args(argv)
    cfg = config.validate(config.build_config(args.preset, args.set))
    root = ensure_generated(cfg)
    result = statistics(cfg)
    print(json.dumps(result, indent=2))
    if args.sheet:
        print(f"contact sheet: {contact_sheet(root, Path(args.sheet))}")
    return result


if __name__ == "__main__":
    main()
