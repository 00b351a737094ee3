"""Metrics shared by the stages: segmentation confusion matrices, multi-label AP, saliency F/MAE."""

from __future__ import annotations

import numpy as np

IGNORE = 255


class ConfusionMatrix:
    """Counts (ground truth, prediction) pairs over classes 0..n-1; ground truth 255 is skipped."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        # ground-truth pixels whose prediction is no class (255, e.g. an ignored pseudo label):
        # they count against recall and IoU, never for anything
        self.missed = np.zeros(num_classes, dtype=np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        truth, prediction = np.asarray(truth), np.asarray(prediction)
        # compared before flattening: a transposed (W, H) map has as many pixels as an (H, W) one
        if truth.shape != prediction.shape:
            raise ValueError(f"truth and prediction differ in shape: {truth.shape} vs {prediction.shape}")
        truth = truth.reshape(-1).astype(np.int64)
        prediction = prediction.reshape(-1).astype(np.int64)
        keep = truth != IGNORE
        truth, prediction = truth[keep], prediction[keep]
        if truth.size and (truth.max() >= self.num_classes or truth.min() < 0):
            raise ValueError(f"ground truth holds class {truth.max()} >= {self.num_classes}")
        valid = (prediction >= 0) & (prediction < self.num_classes)
        self.matrix += np.bincount(
            truth[valid] * self.num_classes + prediction[valid], minlength=self.num_classes**2
        ).reshape(self.num_classes, -1)
        self.missed += np.bincount(truth[~valid], minlength=self.num_classes)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix
        self.missed += other.missed

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        gt = self.matrix.sum(1) + self.missed
        pred = self.matrix.sum(0)
        union = gt + pred - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def mean_iou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")

    def precision(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        pred = self.matrix.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pred > 0, tp / pred, np.nan)

    def recall(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        gt = self.matrix.sum(1) + self.missed
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gt > 0, tp / gt, np.nan)

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.missed.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of every positive (ties broken by order)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    if not targets.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """mAP, per-class AP and F1 (scores are probabilities; F1 at ``threshold``)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    predicted = scores >= threshold
    tp = (predicted & targets).sum(0)
    fp = (predicted & ~targets).sum(0)
    fn = (~predicted & targets).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {
        "mAP": float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float("nan"),
        "AP": ap,
        "F1": f1,
        "micro_F1": float(2 * tp.sum() / max(1, 2 * tp.sum() + fp.sum() + fn.sum())),
    }


class SaliencyScores:
    """Max F-measure (beta^2 = 0.3, 256 thresholds, precision and recall averaged over images)
    and MAE, as in the saliency literature."""

    def __init__(self, beta2: float = 0.3, bins: int = 256) -> None:
        self.beta2 = beta2
        self.thresholds = np.arange(bins) / (bins - 1)
        self.precision_sum = np.zeros(bins)
        self.recall_sum = np.zeros(bins)
        self.mae_sum = 0.0
        self.count = 0

    def update(self, prob: np.ndarray, truth: np.ndarray) -> None:
        prob = np.asarray(prob, dtype=np.float64).reshape(-1)
        positive = (
            np.asarray(truth).reshape(-1) > 127 if np.asarray(truth).max() > 1 else np.asarray(truth).reshape(-1) > 0.5
        )
        self.mae_sum += float(np.abs(prob - positive).mean())
        # counts of predicted-positive pixels at each threshold, from a histogram (fast)
        bins = np.clip(np.floor(prob * (len(self.thresholds) - 1) + 1e-9).astype(np.int64), 0, len(self.thresholds) - 1)
        pos_hist = np.bincount(bins[positive], minlength=len(self.thresholds))
        all_hist = np.bincount(bins, minlength=len(self.thresholds))
        tp = np.cumsum(pos_hist[::-1])[::-1].astype(np.float64)  # pixels with prob >= threshold
        predicted = np.cumsum(all_hist[::-1])[::-1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.precision_sum += np.where(predicted > 0, tp / predicted, 0.0)
            self.recall_sum += tp / positive.sum() if positive.sum() else 0.0
        self.count += 1

    def result(self) -> dict:
        if not self.count:
            return {"max_F": float("nan"), "MAE": float("nan")}
        precision = self.precision_sum / self.count
        recall = self.recall_sum / self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (1 + self.beta2) * precision * recall / (self.beta2 * precision + recall)
        f = np.nan_to_num(f)
        best = int(np.argmax(f))
        return {"max_F": float(f[best]), "threshold": float(self.thresholds[best]), "MAE": self.mae_sum / self.count}
