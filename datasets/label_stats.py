"""What image-level labels can and cannot teach: classes that (almost) never appear alone.

A classifier trained on image labels learns "this image holds class A" from the images where A's
label is on and off. When A is labelled only on images that also hold B (MSRC's face: 37 training
images, every one also labelled body), nothing in the labels says which pixels are A and which are
B, and their Grad-CAMs come out nearly the same; the guide's split between them is then close to
chance. This is a property of the data set, not of the pipeline: it is reported before training so
that a user reads their low IoU for what it is (and can add images where A appears without B).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Companion:
    """``name`` is labelled on ``images`` images, ``shared`` of which also hold ``partner``."""

    name: str
    partner: str
    images: int
    shared: int

    @property
    def share(self) -> float:
        return self.shared / self.images

    def message(self) -> str:
        alone = self.images - self.shared
        return (
            f"class {self.name!r} is labelled on {self.images} training images and {self.shared} of them "
            f"also hold {self.partner!r} ({alone} without it): image labels can hardly tell their pixels "
            f"apart, so expect their CAMs and pseudo labels to mix"
        )


def label_matrix(image_set) -> np.ndarray:
    """(N, C) bool: image n is labelled with class c+1."""
    if not len(image_set):
        return np.zeros((0, image_set.num_classes), bool)
    return np.stack([image_set.labels(image_id) > 0.5 for image_id in image_set.ids])


def companions(
    labels: np.ndarray, class_names: list[str], *, share: float = 0.9, min_images: int = 5
) -> list[Companion]:
    """Classes labelled on at least ``min_images`` images of which at least ``share`` also hold one
    other class (the most frequent such partner), most entangled first.

    Args:
        labels: (N, C) bool, as :func:`label_matrix` gives.
        class_names: the C names.
    """
    labels = np.asarray(labels, bool)
    counts = labels.sum(0)
    together = labels.T.astype(np.int64) @ labels.astype(np.int64)  # (C, C) images holding both
    found = []
    for c, name in enumerate(class_names):
        if counts[c] < min_images:
            continue
        shared_with = together[c].copy()
        shared_with[c] = -1
        partner = int(shared_with.argmax())
        if shared_with[partner] >= share * counts[c]:
            found.append(Companion(name, class_names[partner], int(counts[c]), int(shared_with[partner])))
    return sorted(found, key=lambda item: (-item.share, item.name))
