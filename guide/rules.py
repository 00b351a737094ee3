"""The guide's rules: saliency regions and class regions -> a pseudo label. Pure functions.

Region rule (the thesis'): connected components (8-connectivity) of the binarised saliency and of
every class mask; small ones dropped. Each saliency region takes
  - no overlapping class: ``unlabelled_foreground`` (background 0, as the original, or ignore 255),
  - one class: that class over the whole region,
  - several classes: a dense CRF on the region's bounding box (plus a margin), with unaries from the
    classes' CAMs, decides pixel by pixel; only the region's pixels are written.
Class regions that overlap no saliency region are painted with their class (the original) or
ignore; where two such regions overlap, the class with the higher CAM wins.

Pixel rule (the public saliency-guided baselines'): each salient pixel takes the class whose CAM is
highest there if that CAM reaches ``cam_threshold``, else ignore; other pixels are background.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from common.crf import CrfParams, dense_crf

IGNORE = 255


@dataclass(frozen=True)
class GuideParams:
    rule: str = "region"
    saliency_threshold: float = 0.5
    cam_threshold: float = 0.4  # only the pixel rule uses it (the region rule reads binary masks)
    min_saliency_area: float = 0.01
    min_class_pixels: int = 25
    min_overlap_pixels: int = 1
    unlabelled_foreground: str = "background"
    isolated_class_regions: str = "class"
    crf_background_channel: bool = False
    crf_margin: int = 16
    crf_whole_image: bool = False  # the slow baseline: CRF over the whole image for every region
    crf: CrfParams = field(default_factory=CrfParams)

    @classmethod
    def from_config(cls, cfg) -> "GuideParams":
        guide = cfg.guide
        return cls(rule=guide.rule, saliency_threshold=cfg.saliency.threshold,
                   cam_threshold=cfg.attention.threshold, min_saliency_area=guide.min_saliency_area,
                   min_class_pixels=guide.min_class_pixels, min_overlap_pixels=guide.min_overlap_pixels,
                   unlabelled_foreground=guide.unlabelled_foreground,
                   isolated_class_regions=guide.isolated_class_regions,
                   crf_background_channel=guide.crf_background_channel, crf_margin=guide.crf_margin,
                   crf=CrfParams(gaussian_sxy=guide.crf_gaussian_sxy, gaussian_compat=guide.crf_gaussian_compat,
                                 bilateral_sxy=guide.crf_bilateral_sxy, bilateral_srgb=guide.crf_bilateral_srgb,
                                 bilateral_compat=guide.crf_bilateral_compat, iterations=guide.crf_iterations))


def components(mask: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """8-connected components of a boolean mask with at least ``min_pixels`` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [labels == index for index in range(1, count) if stats[index, cv2.CC_STAT_AREA] >= min_pixels]


def _bounding_box(region: np.ndarray, margin: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(region)
    height, width = region.shape
    return (slice(max(0, ys.min() - margin), min(height, ys.max() + margin + 1)),
            slice(max(0, xs.min() - margin), min(width, xs.max() + margin + 1)))


def split_region(image: np.ndarray, region: np.ndarray, class_ids: list[int],
                 cams: dict[int, np.ndarray], params: GuideParams) -> np.ndarray:
    """Class id (or 0 for the background channel) of every pixel of ``region``, by dense CRF on
    CAM-derived probabilities; returns a full-size uint8 map, meaningful inside ``region``."""
    window = (slice(None), slice(None)) if params.crf_whole_image else _bounding_box(region, params.crf_margin)
    maps = np.stack([np.clip(cams[c][window], 0, 1) for c in class_ids]).astype(np.float32)
    ids = list(class_ids)
    if params.crf_background_channel:
        maps = np.concatenate([1.0 - maps.max(0, keepdims=True), maps])
        ids = [0] + ids
    maps = maps + 1e-5
    probabilities = maps / maps.sum(0, keepdims=True)
    marginals = dense_crf(np.ascontiguousarray(image[window]), probabilities, params.crf)
    result = np.zeros(region.shape, np.uint8)
    result[window] = np.asarray(ids, np.uint8)[marginals.argmax(0)]
    return result


def make_pseudo_label(image: np.ndarray, saliency: np.ndarray, class_masks: dict[int, np.ndarray],
                      cams: dict[int, np.ndarray], params: GuideParams) -> np.ndarray:
    """The pseudo label (H, W) uint8: 0 background, class ids, 255 ignore.

    Args:
        image: RGB uint8 (H, W, 3), for the CRF's colour term.
        saliency: foreground probability (H, W) in [0, 1].
        class_masks: class id -> binary class region (H, W) bool, for the image's classes.
        cams: class id -> CAM (H, W) in [0, 1], same keys.
    """
    height, width = saliency.shape
    salient = saliency >= params.saliency_threshold
    label = np.zeros((height, width), np.uint8)
    min_area = int(np.ceil(params.min_saliency_area * height * width))
    regions = components(salient, max(1, min_area))
    if params.rule == "pixel":
        return _pixel_rule(regions, cams, params, label)

    class_regions = {c: components(mask, params.min_class_pixels + 1) for c, mask in class_masks.items()}
    kept_class = {c: np.any(parts, axis=0) if parts else np.zeros_like(salient)
                  for c, parts in class_regions.items()}
    unlabelled = 0 if params.unlabelled_foreground == "background" else IGNORE
    kept_salient = np.zeros_like(salient)
    for region in regions:
        kept_salient |= region
        overlapping = [c for c in sorted(kept_class)
                       if np.count_nonzero(kept_class[c] & region) >= params.min_overlap_pixels]
        if not overlapping:
            label[region] = unlabelled
        elif len(overlapping) == 1:
            label[region] = overlapping[0]
        else:
            label[region] = split_region(image, region, overlapping, cams, params)[region]

    # class regions that overlap no saliency region
    isolated = {c: [part for part in parts if not (part & kept_salient).any()]
                for c, parts in class_regions.items()}
    if params.isolated_class_regions == "ignore":
        for parts in isolated.values():
            for part in parts:
                label[part] = IGNORE
        return label
    painted = np.zeros((height, width), np.uint8)
    best_cam = np.full((height, width), -1.0, np.float32)
    for class_id, parts in isolated.items():
        for part in parts:
            wins = part & (cams[class_id] > best_cam)
            painted[wins] = class_id
            best_cam[wins] = cams[class_id][wins]
    label[painted > 0] = painted[painted > 0]
    return label


def _pixel_rule(regions: list[np.ndarray], cams: dict[int, np.ndarray], params: GuideParams,
                label: np.ndarray) -> np.ndarray:
    salient = np.any(regions, axis=0) if regions else np.zeros(label.shape, bool)
    if not cams:
        label[salient] = IGNORE
        return label
    ids = np.array(sorted(cams), np.uint8)
    stacked = np.stack([cams[c] for c in ids])
    best = stacked.argmax(0)
    confident = stacked.max(0) >= params.cam_threshold
    label[salient & confident] = ids[best][salient & confident]
    label[salient & ~confident] = IGNORE
    return label
