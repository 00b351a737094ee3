"""Segmenting whole images at their own size (never a crop), optionally multi-scale and flipped,
and the original's CRF post-processing.

Images are batched by padding each one at the bottom and right, with the mean colour, to a common
size that is a multiple of the output stride; every image's logits are cut back to its own extent
before anything else, so padding never reaches a prediction or a score.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from common import metrics
from common.crf import CrfParams, dense_crf
from deeplab.data import to_tensor


def _padded_logits(model, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits (K, h, w) of normalised images (3, h, w) of any sizes, run as one padded batch."""
    stride = model.output_stride
    height = math.ceil(max(t.shape[1] for t in tensors) / stride) * stride
    width = math.ceil(max(t.shape[2] for t in tensors) / stride) * stride
    batch = torch.stack(
        [F.pad(t, (0, width - t.shape[2], 0, height - t.shape[1]), value=0.0) for t in tensors]
    )  # zero = the mean colour after normalisation
    # float32 from here on when the model ran under autocast (runtime.precision bf16/fp16)
    logits = model(batch).float()
    return [logits[i, :, : t.shape[1], : t.shape[2]] for i, t in enumerate(tensors)]


def batch_probabilities(model, images: list[np.ndarray], scales=(1.0,), flip: bool = False) -> list[torch.Tensor]:
    """Softmax (K, H, W) of each RGB image at its own size, averaged over ``scales`` (image sides
    times the scale) and, with ``flip``, over the horizontally flipped image too."""
    device = next(model.parameters()).device
    originals = [to_tensor(image, model.mean, model.std).to(device) for image in images]
    totals: list[torch.Tensor | None] = [None] * len(images)
    with torch.no_grad():
        for scale in scales:
            scaled = [
                t
                if scale == 1.0
                else F.interpolate(
                    t[None],
                    size=(max(8, round(t.shape[1] * scale)), max(8, round(t.shape[2] * scale))),
                    mode="bilinear",
                    align_corners=False,
                )[0]
                for t in originals
            ]
            for flipped in (False, True) if flip else (False,):
                inputs = [t.flip(-1) for t in scaled] if flipped else scaled
                for index, logits in enumerate(_padded_logits(model, inputs)):
                    logits = logits.flip(-1) if flipped else logits
                    if logits.shape[1:] != originals[index].shape[1:]:
                        logits = F.interpolate(
                            logits[None], size=originals[index].shape[1:], mode="bilinear", align_corners=False
                        )[0]
                    probs = F.softmax(logits, dim=0)
                    totals[index] = probs if totals[index] is None else totals[index] + probs
    return [total / total.sum(0, keepdim=True) for total in totals]


def class_probabilities(model, image: np.ndarray, scales=(1.0,), flip: bool = False) -> torch.Tensor:
    """Softmax (K, H, W) of one RGB image at its own size (see :func:`batch_probabilities`)."""
    return batch_probabilities(model, [image], scales, flip)[0]


def padded_batches(ids: list[str], sizes: dict[str, tuple[int, int]], batch_size: int) -> list[list[str]]:
    """``ids`` in groups of ``batch_size`` of similar size (least padding), in a fixed order."""
    ordered = sorted(ids, key=lambda i: (sizes[i], i))
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def crf_unaries_from_labels(prediction: np.ndarray, num_classes: int, confidence: float) -> np.ndarray:
    """The original's unaries: probability ``confidence`` for the predicted label of each pixel,
    (1 - confidence) / (K - 1) for each other class; (K, H, W) float32."""
    rest = (1.0 - confidence) / max(1, num_classes - 1)
    probabilities = np.full((num_classes, *prediction.shape), rest, np.float32)
    np.put_along_axis(probabilities, prediction[None].astype(np.int64), confidence, axis=0)
    return probabilities


def crf_refine(
    image: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    confidence: float,
    params: CrfParams,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Dense-CRF post-processing of a label map (H, W) on its RGB image; returns the new labels.

    Unaries from the label map itself (the original: see :func:`crf_unaries_from_labels`), or, when
    ``probabilities`` (K, H, W) are given, from the network's softmax."""
    if probabilities is None:
        probabilities = crf_unaries_from_labels(prediction, num_classes, confidence)
    return dense_crf(image, probabilities, params).argmax(0).astype(np.uint8)


def evaluate(
    model, image_set, ids: list[str], *, batch_size: int = 8, scales=(1.0,), flip: bool = False, progress=None
) -> metrics.ConfusionMatrix:
    """Confusion matrix (C + 1 classes) over those of ``ids`` with masks, each at its own size.

    The model is put in eval mode for the pass and given back in the mode it came in."""
    matrix = metrics.ConfusionMatrix(image_set.num_classes + 1)
    scored = [i for i in ids if image_set.has_mask(i)]
    sizes = {i: image_set.image_size(i) for i in scored}
    was_training = model.training
    model.eval()
    try:
        for group in padded_batches(scored, sizes, batch_size):
            probabilities = batch_probabilities(model, [image_set.image(i) for i in group], scales, flip)
            for image_id, probs in zip(group, probabilities):
                matrix.update(image_set.mask(image_id), probs.argmax(0).cpu().numpy())
            if progress is not None:
                progress.update(len(group))
    finally:
        model.train(was_training)
    return matrix
