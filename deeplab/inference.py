"""Segmenting whole images at their own size (never a crop), optionally multi-scale and flipped,
and the original's CRF post-processing."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common import metrics
from common.crf import CrfParams, dense_crf
from deeplab.data import to_tensor


def class_probabilities(model, image: np.ndarray, scales=(1.0,), flip: bool = False) -> torch.Tensor:
    """Softmax (K, H, W) for an RGB image at its own size, averaged over scales (and flips)."""
    device = next(model.parameters()).device
    tensor = to_tensor(image, model.mean, model.std)[None].to(device)
    height, width = image.shape[:2]
    total = None
    with torch.no_grad():
        for scale in scales:
            scaled = tensor if scale == 1.0 else F.interpolate(
                tensor, size=(max(8, round(height * scale)), max(8, round(width * scale))),
                mode="bilinear", align_corners=False)
            for flipped in ((False, True) if flip else (False,)):
                batch = scaled.flip(-1) if flipped else scaled
                logits = model(batch)
                logits = logits.flip(-1) if flipped else logits
                probs = F.softmax(F.interpolate(logits, size=(height, width), mode="bilinear",
                                                align_corners=False), dim=1)[0]
                total = probs if total is None else total + probs
    return total / total.sum(0, keepdim=True)


def crf_refine(image: np.ndarray, prediction: np.ndarray, num_classes: int, confidence: float,
               params: CrfParams) -> np.ndarray:
    """The original's post-processing: unaries from the label map itself (``confidence`` for the
    predicted label, the rest shared by the other classes), then a dense CRF."""
    rest = (1.0 - confidence) / max(1, num_classes - 1)
    probabilities = np.full((num_classes, *prediction.shape), rest, np.float32)
    np.put_along_axis(probabilities, prediction[None].astype(np.int64), confidence, axis=0)
    return dense_crf(image, probabilities, params).argmax(0).astype(np.uint8)


def evaluate(model, image_set, ids: list[str], scales=(1.0,), flip: bool = False) -> metrics.ConfusionMatrix:
    """Confusion matrix over ``ids`` (those with masks), each image at its own size."""
    matrix = metrics.ConfusionMatrix(image_set.num_classes + 1)
    was_training = model.training
    model.eval()
    for image_id in ids:
        mask = image_set.mask(image_id)
        if mask is None:
            continue
        prediction = class_probabilities(model, image_set.image(image_id), scales, flip).argmax(0)
        matrix.update(mask, prediction.cpu().numpy())
    model.train(was_training)
    return matrix
