"""The shared metrics against brute-force definitions on random arrays."""

from __future__ import annotations

import numpy as np
import pytest

from common import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_equals_counting_pixels(seed):
    rng = np.random.default_rng(seed)
    classes = 5
    truths = [np.where(rng.random((17, 23)) < 0.15, 255, rng.integers(0, classes, (17, 23))) for _ in range(3)]
    # predictions may be 255 too (an ignored pseudo label): a miss for the true class
    predictions = [np.where(rng.random((17, 23)) < 0.1, 255, rng.integers(0, classes, (17, 23))) for _ in range(3)]
    matrix = metrics.ConfusionMatrix(classes)
    matrix.update(truths[0], predictions[0])
    other = metrics.ConfusionMatrix(classes)
    for truth, prediction in zip(truths[1:], predictions[1:]):
        other.update(truth, prediction)
    matrix.merge(other)

    truth, prediction = np.concatenate([t.ravel() for t in truths]), np.concatenate([p.ravel() for p in predictions])
    scored = truth != 255
    for c in range(classes):
        tp = np.sum((truth == c) & (prediction == c))
        in_truth = np.sum(truth == c)
        predicted = np.sum(scored & (prediction == c))
        assert matrix.iou()[c] == pytest.approx(tp / (in_truth + predicted - tp))
        assert matrix.precision()[c] == pytest.approx(tp / predicted)
        assert matrix.recall()[c] == pytest.approx(tp / in_truth)
    expected_iou = [
        np.sum((truth == c) & (prediction == c)) / np.sum(scored & ((truth == c) | (prediction == c)))
        for c in range(classes)
    ]
    assert matrix.mean_iou() == pytest.approx(np.mean(expected_iou))
    assert matrix.pixel_accuracy() == pytest.approx(np.sum(scored & (truth == prediction)) / np.sum(scored))


def test_class_absent_everywhere_is_left_out_of_the_mean():
    matrix = metrics.ConfusionMatrix(3)
    matrix.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    assert np.isnan(matrix.iou()[2])
    assert matrix.mean_iou() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_truth_outside_the_classes_is_an_error():
    with pytest.raises(ValueError, match="class 7"):
        metrics.ConfusionMatrix(3).update(np.array([7]), np.array([0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_average_precision_is_the_mean_precision_at_each_positive(seed):
    rng = np.random.default_rng(seed)
    scores = rng.permutation(40) / 40.0  # distinct scores: no ties
    targets = rng.random(40) < 0.3
    targets[0] = True
    expected = np.mean([np.sum(targets & (scores >= s)) / np.sum(scores >= s) for s in scores[targets]])
    assert metrics.average_precision(scores, targets) == pytest.approx(expected)
    perfect = metrics.average_precision(targets.astype(float), targets)
    assert perfect == pytest.approx(1.0)


def test_multilabel_metrics_skip_classes_without_positives():
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.4], [0.6, 0.1, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    result = metrics.multilabel_metrics(scores, targets)
    assert np.isnan(result["AP"][2])
    assert result["mAP"] == pytest.approx(1.0)
    # at 0.5: class 0 predicted for images 0 and 2 (both right), class 1 for image 1 (right)
    assert result["F1"][0] == pytest.approx(1.0) and result["micro_F1"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_saliency_max_f_and_mae_follow_their_definitions(seed):
    rng = np.random.default_rng(seed)
    scores = metrics.SaliencyScores()
    pairs = []
    for _ in range(4):
        truth = rng.random((12, 15)) < 0.3
        # 8-bit probabilities, as CREATE_SALIENCY stores them, loosely following the truth
        prob = np.round(np.clip(truth * 0.6 + rng.random((12, 15)) * 0.5, 0, 1) * 255) / 255
        scores.update(prob, truth.astype(np.uint8) * 255)
        pairs.append((prob, truth))
    f_values = []
    for threshold in np.arange(256) / 255:
        precisions, recalls = [], []
        for prob, truth in pairs:
            predicted = prob >= threshold - 1e-12
            tp = np.sum(predicted & truth)
            precisions.append(tp / predicted.sum() if predicted.sum() else 0.0)
            recalls.append(tp / truth.sum())
        p, r = np.mean(precisions), np.mean(recalls)
        f_values.append(1.3 * p * r / (0.3 * p + r) if p + r else 0.0)
    result = scores.result()
    assert result["max_F"] == pytest.approx(max(f_values))
    assert result["MAE"] == pytest.approx(np.mean([np.abs(prob - truth).mean() for prob, truth in pairs]))


def test_reports_write_nan_as_null_so_they_stay_json(make_cfg):
    import json

    from common import board
    from common.layout import Layout

    cfg = make_cfg()
    board.write_report(cfg, "create_guide", "scores", {"mIoU": float("nan"), "per_class": {"a": [1.0, float("inf")]}})
    text = (Layout(cfg).run_dir("create_guide") / "scores.json").read_text()
    assert json.loads(text) == {"mIoU": None, "per_class": {"a": [1.0, None]}}
    assert "NaN" not in text and "Infinity" not in text
