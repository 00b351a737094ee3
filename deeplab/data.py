"""DeepLab training samples: which label each image trains with, and the augmentation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common import files

IGNORE = 255


def select_gt_images(ids_with_masks: list[str], percentage: float, seed: int) -> set[str]:
    """The images whose real mask replaces the pseudo label: ``percentage`` % of ``ids_with_masks``
    (rounded to the nearest whole image), chosen reproducibly from ``seed``. The choice is nested:
    with the same seed, a higher percentage keeps every image a lower one chose, so runs at
    different percentages differ only by the masks added."""
    if not 0 <= percentage <= 100:
        raise ValueError(f"deeplab.gt_percentage {percentage} is not a percentage (0 to 100)")
    ordered = sorted(ids_with_masks)
    rank = np.random.default_rng(seed).permutation(len(ordered))
    count = int(np.floor(len(ordered) * percentage / 100 + 0.5))
    return {ordered[i] for i in rank[:count]}


def to_tensor(image: np.ndarray, mean, std) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class SegmentationSamples(Dataset):
    """(normalised image crop, label crop) with random scale, crop (padding: mean colour / ignore)
    and horizontal flip. ``sources`` maps image id -> a callable giving its label map."""

    def __init__(self, image_set, sources: dict, *, crop_size: int, scale_min: float, scale_max: float,
                 mean, std) -> None:
        self.image_set = image_set
        self.ids = sorted(sources)
        self.sources = sources
        self.crop_size = crop_size
        self.scales = (scale_min, scale_max)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = to_tensor(self.image_set.image(image_id), self.mean, self.std)
        label = torch.from_numpy(self.sources[image_id]().astype(np.int64))
        if label.shape != image.shape[1:]:
            raise ValueError(f"label of {image_id} is {tuple(label.shape)}, its image {tuple(image.shape[1:])}")
        scale = np.random.uniform(*self.scales)
        size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[2] * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        side = self.crop_size
        pad_h, pad_w = max(0, side - size[0]), max(0, side - size[1])
        if pad_h or pad_w:  # zero is the mean colour after normalisation
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
        top = np.random.randint(0, image.shape[1] - side + 1)
        left = np.random.randint(0, image.shape[2] - side + 1)
        image = image[:, top:top + side, left:left + side]
        label = label[top:top + side, left:left + side]
        if np.random.rand() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


def label_sources(cfg, image_set, layout) -> tuple[dict, dict]:
    """id -> loader of its training label, and a report of what each image trains with.

    Real masks for the gt_percentage selection, pseudo labels (CREATE_GUIDE) for the rest; images
    with neither are listed in the report and skipped."""
    with_masks = [i for i in image_set.ids if image_set.has_mask(i)]
    chosen = select_gt_images(with_masks, cfg.deeplab.gt_percentage, cfg.runtime.seed)
    sources, pseudo, skipped = {}, [], []
    for image_id in image_set.ids:
        if image_id in chosen:
            sources[image_id] = (lambda i=image_id: image_set.mask(i))
        elif layout.pseudo_label(image_id).exists():
            path = layout.pseudo_label(image_id)
            sources[image_id] = (lambda p=path: files.read_label_png(p))
            pseudo.append(image_id)
        else:
            skipped.append(image_id)
    if not pseudo and len(chosen) < len(image_set.ids) and cfg.deeplab.gt_percentage < 100:
        raise FileNotFoundError(
            f"no pseudo labels in {layout.pseudo_label('x').parent}: run CREATE_GUIDE first "
            f"(python main.py --stages create_guide), or train on real masks with deeplab.gt_percentage")
    report = {"gt_percentage": cfg.deeplab.gt_percentage, "gt_images": sorted(chosen),
              "pseudo_images": len(pseudo), "skipped_without_label": skipped}
    return sources, report
