"""The MSRC benchmark's report: every figure next to its target, verdicts that follow the numbers."""
from __future__ import annotations

import pytest

from benchmarks import msrc


def _results(weak: float, full: float, attention_speedup: float, minutes: float, resumed: bool) -> dict:
    guide = {"mIoU": 0.6, "precision": 0.8, "recall": 0.7, "ignore_fraction": 0.0, "seconds": 10.0}
    evals = {str(p): {"mIoU": m, "per_class_IoU": {"background": m, "cow": m / 2}, "train_seconds": 400.0,
                 "seconds": 10.0}
             for p, m in ((0, weak), (100, full))}
    return {
        "command": "python -m benchmarks.msrc", "profile": "full", "date": "2026-11-25", "machine": "2 CPU cores",
        "settings": {"deeplab.steps": 300}, "resumed": resumed, "seconds": minutes * 60,
        "base": {"train_saliency": {"max_F": 0.77, "MAE": 0.05, "seconds": 600.0},
                 "train_seed": {"mAP": 0.97, "seconds": 300.0},
                 "create_attention": {"seed_mIoU": 0.5, "best_threshold": 0.4, "seconds": 45.0},
                 "create_guide": guide, "eval_deeplab": evals["0"], "seconds": 1000.0},
        "gt_percentage": evals, "weak_over_full": weak / full,
        "ablations": {name: {**guide, "deeplab_mIoU": weak, **({"default": True} if i == 0 else {})}
                      for i, name in enumerate(msrc.ABLATIONS)},
        "saliency_thresholds": {"0.5": guide, "0.2": {**guide, "default": True}},
        "speed": {"seconds": 120.0,
                  "attention": {"images": 80, "class_maps": 81, "max_abs_difference_vs_reference": 0.0,
                                "ours_seconds": 2.0, "original_seconds": 2.0 * attention_speedup,
                                "speedup": attention_speedup},
                  "saliency": {"images": 80, "batch_size": 8, "seconds_batched": 6.0, "seconds_batch_1": 6.0,
                               "speedup": 1.0},
                  "guide": {"images": 40, "mIoU_box": 0.34, "mIoU_whole_image": 0.33, "seconds_box": 2.0,
                            "seconds_whole_image": 6.2, "speedup_all_images": 3.1},
                  "storage": {"images_all": 268, "pseudo_mIoU_stored": 0.56, "pseudo_mIoU_float32_full": 0.56,
                              "images_compared": 80, "pixels_agreeing": 0.999, "stored_bytes": 2e6,
                              "float32_full_bytes": 9e7, "fraction": 0.022}},
    }


def _row(report: str, starts: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(starts))


@pytest.mark.parametrize("weak, full, verdict", [(0.58, 0.64, "holds"), (0.52, 0.64, "MISSED")])
def test_weak_over_full_verdict_follows_the_ratio(weak, full, verdict):
    report = msrc.markdown(_results(weak, full, 6.0, 70, resumed=False))
    row = _row(report, "| **weak/full ratio**")
    assert f"**{weak / full:.3f}**" in row and row.rstrip(" |").endswith(verdict)
    assert "were reused" not in report  # one process from an empty output folder
    assert "| cow | " in report  # per-class table has every class of every gt_percentage


def test_speed_rows_and_time_limit():
    report = msrc.markdown(_results(0.58, 0.64, 4.2, 95, resumed=True))
    assert _row(report, "| CREATE_ATTENTION").endswith("| >= 5.0x | MISSED |")
    assert _row(report, "| CREATE_GUIDE").endswith("| >= 3.0x | holds |")
    assert _row(report, "| stored CAMs").endswith("| <= 0.1 | holds |")
    total = _row(report, "Whole benchmark")
    assert "95.0 min" in total and "resumed" in total and total.endswith("MISSED.")
    assert "| train_deeplab, gt_percentage 100 | 400 |" in report
    assert "| 0.2 (default) |" in report and "| 0.5 (original) |" in report
    assert "were reused" in report


def test_report_without_optional_parts():
    """An interrupted benchmark's report (no threshold sweep, no total yet) still renders."""
    results = _results(0.58, 0.64, 6.0, 70, resumed=False)
    del results["saliency_thresholds"], results["seconds"], results["speed"]["seconds"]
    report = msrc.markdown(results)
    assert "Whole benchmark" not in report and "saliency.threshold" not in report
