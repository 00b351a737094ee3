"""Image-level training and validation samples for the classifier."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common.backbone_parts import to_tensor
from common.training import sample_rng, split_item
from datasets.base import ImageSet

# tag of the classifier's augmentation streams (DeepLab and saliency use others)
AUGMENTATION_STREAM = 2


def fit_long_side(tensor: torch.Tensor, long_side: int) -> torch.Tensor:
    """Resize (3, H, W) so its longer side is ``long_side``, keeping the aspect ratio."""
    height, width = tensor.shape[1:]
    factor = long_side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]


def place_in_square(tensor: torch.Tensor, side: int, rng: np.random.Generator | None) -> torch.Tensor:
    """Crop or zero-pad (zero = the mean colour after normalisation) to side x side; random offsets
    when ``rng`` is given, centred otherwise."""
    height, width = tensor.shape[1:]
    out = tensor.new_zeros((3, side, side))

    def offsets(length: int) -> tuple[int, int]:
        slack = abs(side - length)
        shift = int(rng.integers(0, slack + 1)) if rng is not None else slack // 2
        return (0, shift) if length > side else (shift, 0)  # (dst offset, src offset)

    (dst_y, src_y), (dst_x, src_x) = offsets(height), offsets(width)
    copy_h, copy_w = min(side, height), min(side, width)
    out[:, dst_y : dst_y + copy_h, dst_x : dst_x + copy_w] = tensor[:, src_y : src_y + copy_h, src_x : src_x + copy_w]
    return out


class ClassificationSamples(Dataset):
    """Normalised image tensors at crop_size x crop_size and their label vectors.

    Training: the image's long side is scaled to crop_size * s (s uniform in [scale_min, scale_max]),
    then randomly cropped or padded to a square, and flipped at random; the aspect ratio is kept.
    Evaluation: long side = crop_size, centred, no flip.

    Items are image indices, or (index, stream position) pairs from ``common.training.StepBatches``;
    a training sample's augmentation is drawn from (seed, position) only, so it is the same
    whatever the worker, the process or the number of restarts.
    """

    def __init__(
        self,
        image_set: ImageSet,
        *,
        crop_size: int,
        mean,
        std,
        train: bool,
        scale_min: float = 1.0,
        scale_max: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.image_set = image_set
        self.crop_size = crop_size
        self.mean, self.std = mean, std
        self.train = train
        self.scale_range = (scale_min, scale_max)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, item):
        index, _ = split_item(item)
        image_id = self.image_set.ids[index]
        tensor = to_tensor(self.image_set.image(image_id), self.mean, self.std)
        rng = None
        long_side = self.crop_size
        if self.train:
            rng = sample_rng(self.seed, AUGMENTATION_STREAM, item)
            long_side = max(8, round(self.crop_size * rng.uniform(*self.scale_range)))
        tensor = place_in_square(fit_long_side(tensor, long_side), self.crop_size, rng)
        if self.train and rng.random() < 0.5:
            tensor = tensor.flip(-1)
        return tensor, torch.from_numpy(self.image_set.labels(image_id))
