"""DeepLab training samples: which label each image trains with, the augmentation, and a batch
order that depends only on (seed, step) so an interrupted run resumes exactly where it stopped."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common import files
from common.backbone_parts import to_tensor
from common.errors import InputError
from common.training import StepBatches, sample_rng, split_item  # noqa: F401  (StepBatches lived here)

IGNORE = 255


def select_gt_images(ids_with_masks: list[str], percentage: float, seed: int) -> set[str]:
    """The images whose real mask replaces the pseudo label.

    ``percentage`` % of ``ids_with_masks``, rounded to the nearest whole image (halves round up:
    2.5 images -> 3), chosen reproducibly from ``seed`` whatever the order of the ids. The choice is
    nested: with the same seed and ids, a higher percentage keeps every image a lower one chose, so
    runs at different percentages differ only by the masks added. 0 chooses none, 100 all."""
    if not 0 <= percentage <= 100:
        raise ValueError(f"deeplab.gt_percentage {percentage} is not a percentage (0 to 100)")
    ordered = sorted(set(ids_with_masks))
    rank = np.random.default_rng(seed).permutation(len(ordered))
    count = int(np.floor(len(ordered) * percentage / 100 + 0.5))
    return {ordered[i] for i in rank[:count]}


class SegmentationSamples(Dataset):
    """(normalised image crop (3, S, S), label crop (S, S) int64) for an item (index, position):
    random scale in [scale_min, scale_max], a random S x S crop (padding: the mean colour for the
    image, ignore 255 for the label) and a horizontal flip, all drawn from (seed, position).
    ``sources`` maps image id -> a callable giving its label map (0 bg, 1..C, 255 ignore)."""

    def __init__(
        self, image_set, sources: dict, *, crop_size: int, scale_min: float, scale_max: float, mean, std, seed: int = 0
    ) -> None:
        self.image_set = image_set
        self.ids = sorted(sources)
        self.sources = sources
        self.crop_size = crop_size
        self.scales = (scale_min, scale_max)
        self.mean, self.std = mean, std
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item):
        index, _ = split_item(item)
        rng = sample_rng(self.seed, 1, item)
        image_id = self.ids[index]
        image = to_tensor(self.image_set.image(image_id), self.mean, self.std)
        label = torch.from_numpy(self.sources[image_id]().astype(np.int64))
        if label.shape != image.shape[1:]:
            raise InputError(f"label of {image_id} is {tuple(label.shape)}, its image {tuple(image.shape[1:])}")
        scale = rng.uniform(*self.scales)
        size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[2] * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        side = self.crop_size
        pad_h, pad_w = max(0, side - size[0]), max(0, side - size[1])
        if pad_h or pad_w:  # zero is the mean colour after normalisation
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
        top = int(rng.integers(0, image.shape[1] - side + 1))
        left = int(rng.integers(0, image.shape[2] - side + 1))
        image = image[:, top : top + side, left : left + side]
        label = label[top : top + side, left : left + side]
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


def label_sources(cfg, image_set, layout) -> tuple[dict, dict]:
    """id -> loader of its training label, and a report of what each image trains with.

    Real masks for the ``gt_percentage`` selection (among training images with a mask), pseudo
    labels (CREATE_GUIDE, ``Layout.pseudo_label``) for the rest; images with neither are listed in
    the report and skipped. Raises FileNotFoundError when pseudo labels are needed and none exist."""
    with_masks = [i for i in image_set.ids if image_set.has_mask(i)]
    chosen = select_gt_images(with_masks, cfg.deeplab.gt_percentage, cfg.runtime.seed)
    sources, pseudo, skipped = {}, [], []
    for image_id in image_set.ids:
        if image_id in chosen:
            sources[image_id] = _MaskLoader(image_set, image_id)
        elif layout.pseudo_label(image_id).exists():
            sources[image_id] = _PngLoader(layout.pseudo_label(image_id))
            pseudo.append(image_id)
        else:
            skipped.append(image_id)
    folder = layout.pseudo_label("x").parent
    if skipped and not pseudo and cfg.deeplab.gt_percentage < 100:
        raise FileNotFoundError(
            f"no pseudo labels in {folder} for the {len(skipped)} training images without a chosen "
            f"mask: run CREATE_GUIDE first (python main.py --stages create_guide), or train on real "
            f"masks with deeplab.gt_percentage"
        )
    report = {
        "gt_percentage": cfg.deeplab.gt_percentage,
        "training_images": len(image_set.ids),
        "images_with_masks": len(with_masks),
        "gt_images": sorted(chosen),
        "pseudo_images": len(pseudo),
        "pseudo_label_folder": str(folder),
        "skipped_without_label": skipped,
    }
    return sources, report


class _MaskLoader:
    """The ground-truth mask of one image (a class, not a lambda, so DataLoader workers can pickle it)."""

    def __init__(self, image_set, image_id: str) -> None:
        self.image_set, self.image_id = image_set, image_id

    def __call__(self) -> np.ndarray:
        return self.image_set.mask(self.image_id)


class _PngLoader:
    def __init__(self, path) -> None:
        self.path = path

    def __call__(self) -> np.ndarray:
        return files.read_label_png(self.path)
