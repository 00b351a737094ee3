"""Saliency data: folders of images with 0/255 masks, and image preparation for PiCANet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common import files
from common.errors import InputError
from common.training import sample_rng, split_item
from datasets.voc import IMAGE_SUFFIXES

# (image folder, mask folder) layouts understood under a saliency root, in order of preference
LAYOUTS = {
    "train": [
        ("images", "masks"),
        ("DUTS-TR/DUTS-TR-Image", "DUTS-TR/DUTS-TR-Mask"),
        ("DUTS-TR-Image", "DUTS-TR-Mask"),
    ],
    "val": [("images", "masks"), ("DUTS-TE/DUTS-TE-Image", "DUTS-TE/DUTS-TE-Mask"), ("DUTS-TE-Image", "DUTS-TE-Mask")],
}


def find_pairs(root: Path, split: str = "train") -> list[tuple[Path, Path]]:
    """(image, mask) paths under ``root`` in DUTS layout or ``images/`` + ``masks/``, paired by
    file stem (never by substring)."""
    root = Path(root)
    for image_dir, mask_dir in LAYOUTS[split]:
        images, masks = root / image_dir, root / mask_dir
        if images.is_dir() and masks.is_dir():
            mask_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"}
            pairs = [
                (p, mask_by_stem[p.stem])
                for p in sorted(images.iterdir())
                if p.suffix in IMAGE_SUFFIXES and p.stem in mask_by_stem
            ]
            if not pairs:
                raise FileNotFoundError(f"{images}: no image has a mask of the same name in {masks}")
            return pairs
    tried = ", ".join(f"{i} + {m}" for i, m in LAYOUTS[split])
    raise FileNotFoundError(f"saliency data {root}: none of the layouts found ({tried})")


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]


# tag of the saliency augmentation streams (DeepLab and the classifier use others)
AUGMENTATION_STREAM = 3


class SaliencyPairs(Dataset):
    """Training: resize to (S + S/7)^2, random S x S crop, random flip (the checkpoint's recipe:
    256 -> 224). Validation: resize to S x S; the original-size mask comes along for scoring.

    Items are pair indices, or (index, stream position) pairs from ``common.training.StepBatches``;
    a training sample's crop and flip are drawn from (seed, position) only."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int, train: bool, seed: int = 0) -> None:
        self.pairs, self.size, self.train, self.seed = pairs, size, train, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item):
        index, _ = split_item(item)
        image_path, mask_path = self.pairs[index]
        image = image_tensor(files.read_image(image_path))
        mask = torch.from_numpy((files.read_label_png(mask_path) > 127).astype(np.float32))[None]
        if mask.shape[1:] != image.shape[1:]:
            raise InputError(f"{mask_path} is {tuple(mask.shape[1:])}, its image {tuple(image.shape[1:])}")
        if not self.train:
            return resize(image, (self.size, self.size)), mask
        big = self.size + self.size // 7
        image, mask = resize(image, (big, big)), resize(mask, (big, big))
        rng = sample_rng(self.seed, AUGMENTATION_STREAM, item)
        top, left = (int(v) for v in rng.integers(0, big - self.size + 1, size=2))
        image = image[:, top : top + self.size, left : left + self.size]
        mask = (mask[:, top : top + self.size, left : left + self.size] > 0.5).float()
        if rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask


def deep_supervision_targets(mask: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The mask max-pooled by 2 until it matches each side output's size."""
    targets = []
    for size in sizes:
        target = mask
        while target.shape[-1] > size[-1]:
            target = F.max_pool2d(target, 2)
        if target.shape[-2:] != tuple(size):
            target = (F.interpolate(mask, size=size, mode="bilinear", align_corners=False) > 0.5).float()
        targets.append(target)
    return targets
