"""The guide's rules: saliency regions and class regions -> a pseudo label. Pure functions on arrays.

Label values: 0 background, 1..C class ids, 255 ignore.

Region rule (``rule="region"``, the thesis'):

1. Regions are 8-connected components (OpenCV) of the binarised saliency (probability >=
   ``saliency_threshold``) and of every class mask. Saliency regions smaller than
   ``min_saliency_area`` of the image and class regions of ``min_class_pixels`` pixels or fewer are
   dropped; dropped regions take part in nothing below (their pixels are as if not salient / not of
   the class).
2. A class overlaps a saliency region when its kept regions share at least ``min_overlap_pixels``
   pixels with it. Each saliency region then takes
     - no class: ``unlabelled_foreground`` (``background`` 0, the original, or ``ignore`` 255);
     - one class: that class, over the whole region;
     - several classes: a dense CRF decides pixel by pixel among them. Unaries are -log of the
       classes' CAMs normalised to sum to one at every pixel (plus, with
       ``crf_background_channel``, a background channel 1 - max CAM; pixels it wins become 0).
       The CRF runs on the region's bounding box plus ``crf_margin`` pixels (or on the whole image
       with ``crf_whole_image``, the slow reference); only the region's own pixels are written.
3. A kept class region that shares no pixel with any kept saliency region is isolated. With
   ``isolated_class_regions="class"`` (the original) it is painted with its class; where isolated
   regions of two classes overlap, the class whose CAM is higher at the pixel wins (ties: the lower
   class id). With ``"ignore"`` its pixels become 255. Isolated regions never overlap a kept
   saliency region, so they never overwrite step 2.
4. Every other pixel is background 0 (including the parts of class regions outside saliency
   regions they touch).

Either rule, with ``uncertain_saliency = (low, high)``: every pixel whose saliency probability lies
in [low, high) becomes ignore (255) at the end, whatever the rule gave it. Such pixels are where
the saliency map hesitates (mostly object boundaries), so DeepLab learns nothing from them instead
of learning the threshold's guess. Off (``()``) by default, as in the original.

Pixel rule (``rule="pixel"``, for the ablation against public saliency-guided baselines): every
salient pixel (probability >= ``saliency_threshold``; no region size filter) takes the class whose
upsampled CAM is highest there, if that CAM reaches ``cam_threshold`` (the attention stage's
class-mask threshold, so both rules see the same class support); salient pixels where no CAM
reaches it are ignore (255); other pixels are background. Class masks are not used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np

from common.crf import dense_crf
from config import CrfConfig

IGNORE = 255
BACKGROUND = 0


@dataclass(frozen=True)
class GuideParams:
    """Everything the rules need, detached from the config (see :meth:`from_config`)."""

    rule: str = "region"  # region | pixel
    saliency_threshold: float = 0.5
    cam_threshold: float = 0.4  # pixel rule only (the region rule reads binary class masks)
    min_saliency_area: float = 0.01  # fraction of the image
    min_class_pixels: int = 25  # class regions of this many pixels or fewer are dropped
    min_overlap_pixels: int = 1
    unlabelled_foreground: str = "background"  # background | ignore
    isolated_class_regions: str = "class"  # class | ignore
    crf_background_channel: bool = False
    crf_margin: int = 16
    crf_whole_image: bool = False  # reference variant: CRF over the whole image per region
    crf: CrfConfig = field(default_factory=CrfConfig)  # the kernels (guide.crf)
    uncertain_saliency: tuple[float, ...] = ()  # (low, high): saliency in [low, high) -> ignore

    def __post_init__(self) -> None:
        band = self.uncertain_saliency
        if band and not (len(band) == 2 and 0.0 <= band[0] < band[1] <= 1.0):
            raise ValueError(f"guide.uncertain_saliency: {list(band)} is not [low, high] with 0 <= low < high <= 1")
        checks = {
            "rule": ("region", "pixel"),
            "unlabelled_foreground": ("background", "ignore"),
            "isolated_class_regions": ("class", "ignore"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"guide.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")

    @classmethod
    def from_config(cls, cfg, **changes) -> GuideParams:
        """The parameters of ``cfg`` (guide section, saliency and attention thresholds);
        ``changes`` override single fields, e.g. ``crf_whole_image=True``."""
        guide = cfg.guide
        params = dict(
            rule=guide.rule,
            saliency_threshold=cfg.saliency.threshold,
            cam_threshold=cfg.attention.threshold,
            min_saliency_area=guide.min_saliency_area,
            min_class_pixels=guide.min_class_pixels,
            min_overlap_pixels=guide.min_overlap_pixels,
            unlabelled_foreground=guide.unlabelled_foreground,
            isolated_class_regions=guide.isolated_class_regions,
            crf_background_channel=guide.crf_background_channel,
            crf_margin=guide.crf_margin,
            # a copy: the settings stay editable, these parameters must not change under a running stage
            crf=dataclasses.replace(guide.crf),
            uncertain_saliency=tuple(guide.uncertain_saliency),
        )
        params.update(changes)
        return cls(**params)


@dataclass
class Regions:
    """Kept connected components of a mask: ``labels`` (H, W) int32 holds 0 outside every kept
    region and 1..n inside; ``boxes`` (n, 4) holds each region's x, y, width, height."""

    labels: np.ndarray
    boxes: np.ndarray

    @property
    def count(self) -> int:
        return len(self.boxes)


def connected_regions(mask: np.ndarray, min_pixels: int) -> Regions:
    """8-connected components of ``mask`` with at least ``min_pixels`` pixels, numbered 1..n."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # OpenCV's component 0 is the mask's outside
    renumber = np.zeros(count, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    boxes = stats[keep][:, [cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT]]
    return Regions(labels=renumber[labels], boxes=boxes.astype(np.int64))


def crf_window(box: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a region's bounding box (x, y, w, h) grown by ``margin``, inside the image."""
    x, y, w, h = (int(v) for v in box)
    return (
        slice(max(0, y - margin), min(shape[0], y + h + margin)),
        slice(max(0, x - margin), min(shape[1], x + w + margin)),
    )


def crf_probabilities(cam_stack: np.ndarray, background_channel: bool) -> np.ndarray:
    """Per-pixel class probabilities (K[+1], h, w) from CAMs (K, h, w) in [0, 1]: the maps (after an
    optional background channel 1 - max CAM in front) divided by their sum at every pixel. A small
    floor keeps -log finite and makes pixels where every CAM is zero uniform."""
    maps = np.clip(cam_stack, 0.0, 1.0).astype(np.float32)
    if background_channel:
        maps = np.concatenate([1.0 - maps.max(0, keepdims=True), maps])
    maps += 1e-5
    return maps / maps.sum(0, keepdims=True)


def split_region(
    image: np.ndarray,
    region: np.ndarray,
    box: np.ndarray,
    class_ids: list[int],
    cams: dict[int, np.ndarray],
    params: GuideParams,
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Dense-CRF labels among ``class_ids`` for a saliency region shared by several classes.

    Args:
        image: RGB uint8 (H, W, 3), the CRF's colour term.
        region: bool (H, W), the region's pixels.
        box: the region's bounding box (x, y, w, h).
        class_ids: the classes that overlap the region (two or more).
        cams: class id -> CAM (H, W) in [0, 1].
    Returns:
        ``(window, labels)``: the rows/columns the CRF ran on and its labels there (uint8; class
        ids, or 0 where the background channel won). Only ``labels[region[window]]`` is meant to
        be used.
    """
    if params.crf_whole_image:
        window = (slice(0, region.shape[0]), slice(0, region.shape[1]))
    else:
        window = crf_window(box, params.crf_margin, region.shape)
    ids = ([BACKGROUND] if params.crf_background_channel else []) + list(class_ids)
    probabilities = crf_probabilities(np.stack([cams[c][window] for c in class_ids]), params.crf_background_channel)
    marginals = dense_crf(np.ascontiguousarray(image[window]), probabilities, params.crf)
    return window, np.asarray(ids, np.uint8)[marginals.argmax(0)]


def _check_inputs(image, saliency, class_masks, cams) -> None:
    shape = saliency.shape
    if image.shape[:2] != shape:
        raise ValueError(f"image {image.shape[:2]} and saliency {shape} differ in size")
    for name, maps in (("class mask", class_masks), ("CAM", cams)):
        for class_id, array in maps.items():
            if array.shape != shape:
                raise ValueError(f"{name} of class {class_id} is {array.shape}, the saliency map {shape}")
            if not 1 <= int(class_id) <= 254:
                raise ValueError(f"{name}: class id {class_id} outside 1..254")
    missing = sorted(set(class_masks) - set(cams))
    if missing:
        raise ValueError(f"classes {missing} have a class mask but no CAM")


def make_pseudo_label(
    image: np.ndarray,
    saliency_prob: np.ndarray,
    class_masks: dict[int, np.ndarray],
    cams: dict[int, np.ndarray],
    params: GuideParams,
    split=None,
) -> np.ndarray:
    """The pseudo label (H, W) uint8 of one image: 0 background, class ids, 255 ignore.

    Args:
        image: RGB uint8 (H, W, 3), for the CRF's colour term.
        saliency_prob: foreground probability (H, W) in [0, 1].
        class_masks: class id -> binary class region (H, W) bool, one per class of the image
            (empty for an image without labels).
        cams: class id -> CAM (H, W) float in [0, 1] at the image's size; every class of
            ``class_masks`` needs one.
        params: the rule and its settings.
        split: how the region rule splits a region shared by several classes, with the arguments
            and result of :func:`split_region` (the default, the dense CRF); comparisons pass others.
    """
    _check_inputs(image, saliency_prob, class_masks, cams)
    salient = saliency_prob >= params.saliency_threshold
    if params.rule == "pixel":
        label = pixel_rule(salient, cams, params.cam_threshold)
    else:
        label = region_rule(image, salient, class_masks, cams, params, split or split_region)
    if params.uncertain_saliency:
        low, high = params.uncertain_saliency
        label[(saliency_prob >= low) & (saliency_prob < high)] = IGNORE
    return label


@dataclass
class RegionPlan:
    """Steps 1 and 2 of the region rule before any labelling: the kept saliency regions, the kept
    class regions, and which classes overlap which saliency region."""

    saliency_regions: Regions
    class_ids: list[int]  # sorted; the columns of ``overlapping``
    class_regions: dict[int, Regions]
    overlapping: np.ndarray  # (saliency regions, classes) bool

    @property
    def classes_per_region(self) -> np.ndarray:
        return self.overlapping.sum(1)


def plan_regions(salient: np.ndarray, class_masks: dict[int, np.ndarray], params: GuideParams) -> RegionPlan:
    """Regions of the saliency and class masks after the size filters, and their overlaps."""
    height, width = salient.shape
    # "under 1% of the image" is dropped: keep areas >= the fraction, in whole pixels
    min_area = max(1, int(np.ceil(params.min_saliency_area * height * width - 1e-9)))
    saliency_regions = connected_regions(salient, min_area)
    class_ids = sorted(int(c) for c in class_masks)
    class_regions = {c: connected_regions(class_masks[c], params.min_class_pixels + 1) for c in class_ids}
    # shared pixels of each (saliency region, class): one bincount per class instead of one
    # full-image AND per pair
    region_count = saliency_regions.count
    shared = np.zeros((region_count + 1, len(class_ids)), np.int64)
    for column, class_id in enumerate(class_ids):
        inside_class = class_regions[class_id].labels > 0
        shared[:, column] = np.bincount(saliency_regions.labels[inside_class], minlength=region_count + 1)
    overlapping = shared[1:] >= max(1, params.min_overlap_pixels)
    return RegionPlan(saliency_regions, class_ids, class_regions, overlapping)


def region_rule(
    image: np.ndarray,
    salient: np.ndarray,
    class_masks: dict[int, np.ndarray],
    cams: dict[int, np.ndarray],
    params: GuideParams,
    split=split_region,
) -> np.ndarray:
    """The region rule (module docstring) on a binary saliency mask; ``split`` as in
    :func:`make_pseudo_label`."""
    height, width = salient.shape
    plan = plan_regions(salient, class_masks, params)
    saliency_regions, class_ids, overlapping = plan.saliency_regions, plan.class_ids, plan.overlapping
    region_count = saliency_regions.count
    classes_per_region = plan.classes_per_region

    # regions with zero or one class: one lookup from region number to label value
    unlabelled = BACKGROUND if params.unlabelled_foreground == "background" else IGNORE
    value_of_region = np.zeros(region_count + 1, np.uint8)
    value_of_region[1:] = unlabelled
    single = np.flatnonzero(classes_per_region == 1)
    if len(single):
        value_of_region[single + 1] = np.asarray(class_ids, np.uint8)[overlapping[single].argmax(1)]
    label = value_of_region[saliency_regions.labels]

    for index in np.flatnonzero(classes_per_region >= 2):
        region_number = index + 1
        shared_classes = [c for c, hit in zip(class_ids, overlapping[index]) if hit]
        x, y, w, h = saliency_regions.boxes[index]
        region = np.zeros((height, width), bool)
        region[y : y + h, x : x + w] = saliency_regions.labels[y : y + h, x : x + w] == region_number
        window, window_labels = split(image, region, saliency_regions.boxes[index], shared_classes, cams, params)
        inside = region[window]
        label[window][inside] = window_labels[inside]

    _paint_isolated(label, saliency_regions.labels > 0, plan.class_regions, cams, params)
    return label


def _paint_isolated(
    label: np.ndarray,
    kept_salient: np.ndarray,
    class_regions: dict[int, Regions],
    cams: dict[int, np.ndarray],
    params: GuideParams,
) -> None:
    """Step 3 of the region rule, in place on ``label``."""
    isolated = {}
    for class_id, regions in class_regions.items():
        if not regions.count:
            continue
        touching = np.zeros(regions.count + 1, bool)
        touching[np.unique(regions.labels[kept_salient])] = True
        is_isolated = ~touching
        is_isolated[0] = False
        if is_isolated.any():
            isolated[class_id] = is_isolated[regions.labels]
    if not isolated:
        return
    if params.isolated_class_regions == "ignore":
        label[np.any(list(isolated.values()), axis=0)] = IGNORE
        return
    ids = np.asarray(list(isolated), np.uint8)
    scores = np.stack([np.where(mask, cams[c], -np.inf) for c, mask in isolated.items()])
    order = np.argsort(ids, kind="stable")  # argmax keeps the first maximum: lower id wins ties
    best = scores[order].argmax(0)
    painted = np.isfinite(scores.max(0))
    label[painted] = ids[order][best][painted]


def pixel_rule(salient: np.ndarray, cams: dict[int, np.ndarray], cam_threshold: float) -> np.ndarray:
    """The pixel rule (module docstring) on a binary saliency mask."""
    label = np.zeros(salient.shape, np.uint8)
    label[salient] = IGNORE
    if not cams:
        return label
    ids = np.asarray(sorted(cams), np.uint8)
    stacked = np.stack([cams[int(c)] for c in ids])
    best = stacked.argmax(0)
    confident = salient & (stacked.max(0) >= cam_threshold)
    label[confident] = ids[best][confident]
    return label
