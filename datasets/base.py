"""The interface every data set offers to the stages."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ImageSet(ABC):
    """One split of a data set: ids, and for each id the RGB image, its image-level labels and,
    where one exists, its ground-truth mask (0 background, 1..C classes, 255 ignore)."""

    def __init__(self, split: str, class_names: list[str], ids: list[str]) -> None:
        self.split = split
        self.class_names = list(class_names)
        self.ids = list(ids)

    @property
    def num_classes(self) -> int:
        """C, the number of classes of interest (background not counted)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def image(self, image_id: str) -> np.ndarray:
        """RGB uint8 (H, W, 3)."""

    @abstractmethod
    def labels(self, image_id: str) -> np.ndarray:
        """float32 (C,) multi-hot; entry c-1 is class id c."""

    @abstractmethod
    def mask(self, image_id: str) -> np.ndarray | None:
        """uint8 (H, W) ground truth, or None where the image has none."""

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) of the image; subclasses read it from the file header without decoding."""
        return tuple(self.image(image_id).shape[:2])

    def has_mask(self, image_id: str) -> bool:
        return self.mask(image_id) is not None

    def class_ids(self, image_id: str) -> list[int]:
        """The ids (1..C) of the classes the image is labelled with."""
        return [int(c) + 1 for c in np.flatnonzero(self.labels(image_id) > 0.5)]

    def labels_from_mask(self, mask: np.ndarray) -> np.ndarray:
        present = np.unique(mask)
        vector = np.zeros(self.num_classes, dtype=np.float32)
        for value in present:
            if 1 <= value <= self.num_classes:
                vector[value - 1] = 1.0
        return vector


def read_id_list(path) -> list[str]:
    """Ids, one per line (the first word of each line; blank lines skipped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.split()[0] for line in handle if line.strip()]
    except OSError as err:
        raise OSError(f"cannot read id list {path}: {err}") from err
