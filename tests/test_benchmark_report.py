"""The MSRC benchmark's report: every figure next to its target, verdicts that follow the numbers;
the validation curves and the plateau check read from real tensorboard event files."""

from __future__ import annotations

import json

import pytest

from benchmarks import msrc


def _results(weak: float, full: float, attention_speedup: float, minutes: float, resumed: bool) -> dict:
    guide = {"mIoU": 0.6, "precision": 0.8, "recall": 0.7, "ignore_fraction": 0.0, "seconds": 10.0}
    evals = {
        str(p): {"mIoU": m, "per_class_IoU": {"background": m, "cow": m / 2}, "train_seconds": 400.0, "seconds": 10.0}
        for p, m in ((0, weak), (100, full))
    }
    return {
        "command": "python -m benchmarks.msrc",
        "profile": "full",
        "date": "2026-11-25",
        "machine": "2 CPU cores",
        "settings": {"deeplab.steps": 300},
        "resumed": resumed,
        "seconds": minutes * 60,
        "base": {
            "train_saliency": {"max_F": 0.77, "MAE": 0.05, "seconds": 600.0},
            "train_seed": {"mAP": 0.97, "seconds": 300.0},
            "create_attention": {"seed_mIoU": 0.5, "best_threshold": 0.4, "seconds": 45.0},
            "create_guide": guide,
            "eval_deeplab": evals["0"],
            "seconds": 1000.0,
        },
        "gt_percentage": evals,
        "weak_over_full": weak / full,
        "ablations": {
            name: {**guide, "deeplab_mIoU": weak, **({"default": True} if i == 0 else {})}
            for i, name in enumerate(msrc.ABLATIONS)
        },
        "saliency_thresholds": {
            "0.5": guide,
            "0.2": {**guide, "mIoU": 0.62, "default": True},
            "0.1": {**guide, "mIoU": 0.61},
        },
        "speed": {
            "seconds": 120.0,
            "attention": {
                "images": 80,
                "class_maps": 81,
                "max_abs_difference_vs_reference": 0.0,
                "ours_seconds": 2.0,
                "original_seconds": 2.0 * attention_speedup,
                "speedup": attention_speedup,
            },
            "saliency": {"images": 80, "batch_size": 8, "seconds_batched": 6.0, "seconds_batch_1": 6.0, "speedup": 1.0},
            "guide": {
                "images": 40,
                "mIoU_box": 0.34,
                "mIoU_whole_image": 0.33,
                "seconds_box": 2.0,
                "seconds_whole_image": 6.2,
                "speedup_all_images": 3.1,
            },
            "storage": {
                "images_all": 268,
                "pseudo_mIoU_stored": 0.56,
                "pseudo_mIoU_float32_full": 0.56,
                "images_compared": 80,
                "pixels_agreeing": 0.999,
                "stored_bytes": 2e6,
                "float32_full_bytes": 9e7,
                "fraction": 0.022,
            },
        },
    }


def _with_seeds(results: dict, weak1: float, full1: float, full_gain: float = 0.004, weak_gain: float = 0.002) -> dict:
    """The two-seed layout of results.json: seeds, curves of every DeepLab (val at 80 % and 100 %
    of 500 steps), the DUTS saliency data and the second validation set."""
    weak0, full0 = results["gt_percentage"]["0"]["mIoU"], results["gt_percentage"]["100"]["mIoU"]

    def curve(final, gain):
        return {"val/mIoU": [[3.0, 100, final - 0.2], [12.0, 400, final - gain], [15.0, 500, final]]}

    results.update(
        saliency_data="duts_saliency",
        second_saliency_val={"name": "davis_saliency/val", "max_F": 0.81, "MAE": 0.05, "images": 141},
        seeds={
            "0": {"weak": weak0, "full": full0},
            "1": {"weak": weak1, "full": full1, "weak_train_seconds": 800.0, "full_train_seconds": 810.0},
        },
        curves={
            "train_saliency": {"base": {"val/max_F": [[5.0, 100, 0.88], [10.0, 200, 0.9]]}},
            "train_deeplab": {
                "gt0": curve(weak0, weak_gain),
                "gt100": curve(full0, full_gain),
                "gt0_seed1": curve(weak1, weak_gain),
                "gt100_seed1": curve(full1, full_gain),
                "selftrain": curve(weak0, 0.05),
            },
        },
    )
    results["base"]["train_saliency"]["max_F"] = 0.905
    return results


def _row(report: str, starts: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(starts))


@pytest.mark.parametrize("weak, full, verdict", [(0.70, 0.72, "holds"), (0.52, 0.64, "MISSED")])
def test_weak_over_full_verdict_follows_the_ratio(weak, full, verdict):
    report = msrc.markdown(_with_seeds(_results(weak, full, 6.0, 70, resumed=False), weak, full))
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
    # the parts' own wall times (600 + 300 + 45 + 10 + 10 + 2 x 400 + 4 x 10 + 120 s) are summed beside
    # it; not the default guide row, which is the base run
    assert "add up to **32.1 min**" in total
    assert "| train_deeplab, gt_percentage 100 | 400 |" in report
    first, second = list(msrc.ABLATIONS)[:2]
    assert f"| guide ablation: {first} |" not in report and f"| guide ablation: {second} | 10 |" in report
    assert "| 0.2 (default, best on MSRC train) |" in report and "| 0.5 (original) |" in report
    assert "| 0.1 | 0.610 |" in report
    assert "were reused" in report


def test_a_resumed_benchmark_is_judged_on_its_parts_when_they_took_longer_than_the_process():
    """A rerun that reused a 90-minute run's stages finishes in minutes; the limit is held against
    the parts' own wall times, not against the short process."""
    results = _results(0.58, 0.64, 6.0, 10, resumed=True)
    results["base"]["train_saliency"]["seconds"] = 6000.0
    total = _row(msrc.markdown(results), "Whole benchmark")
    assert "**10.0 min** in this process" in total and "add up to **122.1 min**" in total
    assert total.endswith("MISSED.")


def test_report_without_optional_parts():
    """An interrupted benchmark's report (no threshold sweep, no total yet) still renders."""
    results = _results(0.58, 0.64, 6.0, 70, resumed=False)
    del results["saliency_thresholds"], results["seconds"], results["speed"]["seconds"]
    report = msrc.markdown(results)
    assert "Whole benchmark" not in report and "saliency.threshold" not in report
    assert "## The guide's rules (ablation)" in report
    # stopped before the ablation: no empty table
    del results["ablations"]
    assert "The guide's rules" not in msrc.markdown(results)


def test_ratio_is_the_mean_of_the_seeds_ratios_with_both_shown():
    results = _with_seeds(_results(0.70, 0.72, 6.0, 80, resumed=False), weak1=0.66, full1=0.72)
    report = msrc.markdown(results)
    row = _row(report, "| **weak/full ratio**")
    ratios = (0.70 / 0.72, 0.66 / 0.72)
    assert f"**{sum(ratios) / 2:.3f}**" in row
    assert f"seed 0: {ratios[0]:.3f}" in row and f"seed 1: {ratios[1]:.3f}" in row
    assert f"ratio of the means {0.68 / 0.72:.3f}" in row
    assert row.rstrip(" |").endswith("MISSED")  # 0.944 < 0.95
    weak = _row(report, "| DeepLab mIoU, MSRC val, pseudo labels")
    assert "seed 0: 0.700, seed 1: 0.660" in weak and "| 0.680 |" in weak and weak.endswith("MISSED |")
    assert "| train_deeplab, gt_percentage 100, seed 1 | 810 |" in report


def test_ratio_holds_only_with_the_full_deeplabs_at_plateau():
    at_plateau = msrc.markdown(_with_seeds(_results(0.70, 0.72, 6.0, 80, False), 0.70, 0.72, full_gain=0.004))
    assert _row(at_plateau, "| **weak/full ratio**").endswith("| holds |")
    plateau_row = _row(at_plateau, "| DeepLab val mIoU gain over its last 20 % of steps, gt100 (")
    assert "+0.0040" in plateau_row and "step 400" in plateau_row and plateau_row.endswith("| < 0.01 | holds |")
    # the self-training DeepLab's gain is shown, not judged: it is not behind the ratio
    assert _row(at_plateau, "| DeepLab val mIoU gain over its last 20 % of steps, selftrain").endswith("|  |  |")
    for gains in ({"full_gain": 0.03}, {"weak_gain": 0.011}):
        rising = msrc.markdown(_with_seeds(_results(0.70, 0.72, 6.0, 80, False), 0.70, 0.72, **gains))
        assert "not at plateau" in _row(rising, "| **weak/full ratio**")
        run = "gt100_seed1" if "full_gain" in gains else "gt0_seed1"
        assert _row(rising, f"| DeepLab val mIoU gain over its last 20 % of steps, {run}").endswith("| MISSED |")


def test_saliency_rows_name_both_validation_sets():
    report = msrc.markdown(_with_seeds(_results(0.70, 0.72, 6.0, 80, False), 0.70, 0.72))
    assert report.startswith("# Benchmark: MSRC objects (real photos), saliency from DUTS")
    assert _row(report, "| saliency max F, duts_saliency/val").endswith("| 0.905 | >= 0.9 | holds |")
    assert "0.810 / 0.050" in _row(report, "| saliency max F / MAE, davis_saliency/val (second")
    assert _row(report, "| pseudo-label mIoU").endswith("| >= 0.78 | MISSED |")
    assert "| train_deeplab | gt100_seed1 | val | 100: " in report  # the curves' table


def test_plateau_needs_a_validation_at_80_percent():
    assert msrc.plateau([[1.0, 250, 0.5], [2.0, 500, 0.6]]) is None  # 50 % says nothing of the last 20 %
    check = msrc.plateau([[1.0, 250, 0.5], [1.6, 400, 0.58], [1.8, 450, 0.59], [2.0, 500, 0.585]])
    assert check["from_step"] == 400 and check["gain"] == pytest.approx(0.005)
    assert msrc.plateau([[1.0, 60, 0.5], [1.3, 80, 0.52]])["from_step"] == 60  # 75 %: close enough to 80 %
    assert msrc.plateau([]) is None and msrc.plateau([[1.0, 500, 0.6]]) is None


def test_curves_from_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.add_text("config", "{}", 0)
    for step, value in ((100, 0.4), (200, 0.5), (200, 0.55)):  # step 200 logged twice: the last counts
        writer.add_scalar("val/mIoU", value, step)
        writer.add_scalar("val_davis/mIoU", value / 2, step)
        writer.add_scalar("train/loss", 1.0, step)
    writer.close()
    curves = msrc.read_curves(tmp_path, "mIoU")
    assert sorted(curves) == ["val/mIoU", "val_davis/mIoU"]
    assert [(p[1], round(p[2], 3)) for p in curves["val/mIoU"]] == [(100, 0.4), (200, 0.55)]
    assert all(p[0] >= 0 for p in curves["val/mIoU"])
    assert msrc.read_curves(tmp_path / "absent", "mIoU") == {}


def test_report_files_and_old_results_render(tmp_path):
    """write_report draws the curves and writes the profile's report; a results.json of the
    previous layout (one seed, no curves, no speed) renders too."""
    results = _with_seeds(_results(0.70, 0.72, 6.0, 80, False), 0.70, 0.72)

    class Args:
        docs, profile = str(tmp_path / "docs"), "gpu"

    msrc.write_report(Args, tmp_path / "out", results)
    assert (tmp_path / "docs" / "BENCHMARKS_GPU.md").exists()
    assert (tmp_path / "docs" / "benchmark_curves_gpu.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "results.json").read_text())["seeds"]["1"]["weak"] == 0.70
    old = _results(0.58, 0.64, 6.0, 70, resumed=False)
    del old["speed"]
    report = msrc.markdown(old)
    assert "DAVIS" in report.splitlines()[0] and f"**{0.58 / 0.64:.3f}**" in _row(report, "| **weak/full ratio**")
    assert "## Speed and storage" not in report and not msrc.plot_curves(old, tmp_path / "none.png")


def test_saliency_length_table_marks_the_best_on_msrc_train():
    results = _with_seeds(_results(0.70, 0.72, 6.0, 80, False), 0.70, 0.72)
    results["saliency_lengths"] = {
        "100": {"max_F": 0.88, "MAE": 0.06, "mIoU": 0.70, "precision": 0.8, "recall": 0.8, "train_minutes": 4.0},
        "400": {
            "max_F": 0.91,
            "MAE": 0.05,
            "mIoU": 0.74,
            "precision": 0.8,
            "recall": 0.85,
            "second_max_F": 0.8,
            "train_minutes": 16.5,
        },
        "200": {"max_F": 0.90, "MAE": 0.05, "mIoU": 0.72, "precision": 0.8, "recall": 0.82},
    }
    report = msrc.markdown(results)
    rows = [
        line
        for line in report.splitlines()
        if line.startswith("| 100 ") or line.startswith("| 200 ") or line.startswith("| 400")
    ]
    assert [row.split(" ")[1] for row in rows] == ["100", "200", "400"]  # by length, not as stored
    assert rows[2].startswith("| 400 (best on MSRC train) | 0.910 | 0.050 | 0.800 | 0.740 / 0.800 / 0.850 | 16.5 |")
    assert rows[1].endswith("| - | 0.720 / 0.800 / 0.820 | - |")


def test_entangled_classes_are_named_under_the_worst_classes():
    results = _results(0.58, 0.64, 6.0, 70, resumed=False)
    assert "cannot separate" not in msrc.markdown(results)
    results["base"]["train_seed"]["entangled_classes"] = [{"class": "face", "with": "body", "images": 37, "shared": 37}]
    line = _row(msrc.markdown(results), "Classes that image labels cannot separate")
    assert "face is labelled on 37 training images, 37 of them also labelled body" in line


def test_weak_over_full_without_the_entangled_classes_is_computed_from_the_kept_classes():
    """The indicative ratio leaves out both classes of an entangled pair and averages the rest."""
    results = _with_seeds(_results(0.60, 0.70, 6.0, 70, resumed=False), 0.62, 0.68)
    weak = {"background": 0.9, "cow": 0.6, "face": 0.2, "body": 0.3}
    full = {"background": 0.9, "cow": 0.8, "face": 0.8, "body": 0.9}
    for pair in results["seeds"].values():
        pair.update(weak_per_class=weak, full_per_class=full)
    assert "image labels can tell apart" not in msrc.markdown(results)  # no pair: no row
    results["base"]["train_seed"]["entangled_classes"] = [{"class": "face", "with": "body", "images": 37, "shared": 37}]
    summary = msrc.seed_summary(results)
    assert summary["left_out"] == ["face", "body"]
    assert summary["ratio_mean_without"] == pytest.approx(0.75 / 0.85)
    line = _row(msrc.markdown(results), "| weak/full over the classes image labels can tell apart")
    assert "every class but face, body" in line and f"| {0.75 / 0.85:.3f} |" in line
    # the headline ratio is untouched: it still counts every class
    assert summary["ratio_mean"] == pytest.approx((0.60 / 0.70 + 0.62 / 0.68) / 2)


def test_rescoring_replaces_every_deeplab_figure_and_says_so():
    """benchmarks.eval_variants --rescore: new evaluation scores reach the quality rows, the seeds'
    ratio, the default guide rule's row and the self-training row; the report names the evaluation
    and the command, and keeps what was not re-measured."""
    from benchmarks import eval_variants

    results = _with_seeds(_results(0.60, 0.70, 6.0, 70, resumed=False), 0.62, 0.68)
    results["self_training"] = {"labels": {"mIoU": 0.5}, "deeplab_mIoU": 0.55, "per_class_IoU": {}}
    results["worst_classes"] = [{"name": "cow", "IoU": 0.30}]
    before = msrc.markdown(results)
    assert "EVAL_DEEPLAB scores" not in before and "scored again" not in before

    evaluation = {
        "scales": [0.75, 1.0],
        "flip": False,
        "crf": True,
        "unary": "softmax",
    }  # as evaluation_settings gives it

    def scored(m):
        per_class = {"background": m, "cow": m / 2}
        return {"mIoU": m, "pixel_accuracy": 0.9, "per_class_IoU": per_class, "seconds": 5, "evaluation": evaluation}

    row = {
        "variant": "crf",
        "settings": {"eval.use_crf": "true", "eval.crf_unary": "softmax", "eval.scales": "[0.75, 1.0]"},
        "networks": {
            "gt0": scored(0.66),
            "gt0_seed1": scored(0.64),
            "gt100": scored(0.72),
            "gt100_seed1": scored(0.80),
            "selftrain": scored(0.58),
        },
    }
    eval_variants.summarise(row)
    assert row["weak_mean"] == pytest.approx(0.65)
    assert row["ratio_mean"] == pytest.approx((0.66 / 0.72 + 0.64 / 0.8) / 2)
    report = msrc.markdown(eval_variants.rescore(results, row, "python -m benchmarks.eval_variants --rescore crf"))
    weak = _row(report, "| DeepLab mIoU, MSRC val, pseudo labels (gt 0)")
    assert "seed 0: 0.660, seed 1: 0.640" in weak and "| 0.650 |" in weak
    assert f"**{row['ratio_mean']:.3f}**" in _row(report, "| **weak/full ratio**")
    assert _row(report, "| region rule (original) (default)").endswith("| 0.660 |")
    assert _row(report, "| self-training round").endswith("| 0.580 |")
    assert "under the earlier evaluation, with their IoU now: cow (0.330)" in report  # the sheet's class
    assert "scales 0.75/1, the dense CRF on the network's probabilities" in report
    assert "scored again on" in report and "--rescore crf" in report
    assert _row(report, "| pseudo-label mIoU") == _row(before, "| pseudo-label mIoU")  # not re-measured


def test_evaluation_settings_read_from_the_config():
    """What the rescored report names is what the evaluated config held, defaults included."""
    import config as config_module

    cfg = config_module.build_config("demo", ["eval.scales=[0.75,1.0]"])
    evaluation = msrc.evaluation_settings(cfg)
    assert evaluation == {
        "scales": [0.75, 1.0],
        "flip": False,
        "crf": True,
        "unary": "softmax",
        "checkpoint": "last",
        "average_decay": 0.0,
    }
    sentence = msrc.evaluation_sentence(evaluation)
    assert "at its last checkpoint, with scales 0.75/1, the dense CRF on the network's probabilities" in sentence
    averaged = msrc.evaluation_sentence({**evaluation, "average_decay": 0.995})
    assert "last checkpoint (the moving average of its weights, `deeplab.average_decay` 0.995), with" in averaged
    # a report of results from before eval.checkpoint says they were read at best.pt
    del evaluation["checkpoint"]
    assert "best validation mIoU" in msrc.evaluation_sentence(evaluation)


def test_variant_parsing_keeps_each_benchmark_to_its_settings():
    from benchmarks import cam_variants, eval_variants

    assert eval_variants.parse_variant("crf=eval.use_crf=true eval.scales=[1.0,0.5]") == (
        "crf",
        {"eval.use_crf": "true", "eval.scales": "[1.0,0.5]"},
    )
    assert cam_variants.parse_variant("base=") == ("base", {})
    with pytest.raises(SystemExit, match="eval.split is not an eval setting"):
        eval_variants.parse_variant("train=eval.split=train")
    with pytest.raises(SystemExit, match="deeplab.lr is not an attention, guide or saliency.threshold setting"):
        cam_variants.parse_variant("x=deeplab.lr=0.1")


@pytest.mark.parametrize(
    "trained, base, said",
    [
        (0.80, 0.76, "wins"),
        (0.73, 0.70, "wins"),  # 0.0299999... in floating point: judged as printed
        (0.70, 0.76, "does not win"),
        (0.754, 0.748, "is within one training's spread of it (+0.006), no win"),
        (0.735, 0.748, "is within one training's spread of it (-0.013), no win"),
        (None, 0.748, "not measured"),
    ],
)
def test_the_self_training_row_calls_a_win_only_beyond_one_trainings_spread(trained, base, said):
    """One seed each: a difference smaller than two trainings of one recipe differ by is no result."""
    assert msrc.self_training_outcome(trained, base) == said
    results = _with_seeds(_results(base or 0.6, 0.80, 6.0, 70, resumed=False), 0.62, 0.68)
    results["self_training"] = {"labels": {"mIoU": 0.79}, "deeplab_mIoU": trained, "per_class_IoU": {}}
    if base is not None:
        assert f"the self-training round **{said}**" in msrc.markdown(results)


def test_the_cluster_split_section_sets_the_default_against_the_original_crf_split():
    results = _with_seeds(_results(0.79, 0.82, 6.0, 70, resumed=False), 0.78, 0.81)
    results["cluster_counts"] = [8, 16, 32]
    results["base"]["train_seed"]["entangled_classes"] = [{"class": "face", "with": "body", "images": 37, "shared": 37}]
    results["ablations"] = {
        msrc.ORIGINAL_RULE: {
            "mIoU": 0.775,
            "precision": 0.885,
            "recall": 0.86,
            "deeplab_mIoU": 0.75,
            "per_class_IoU": {"face": 0.63, "body": 0.48},
        },
        msrc.CLUSTER_SPLIT: {
            "mIoU": 0.792,
            "precision": 0.899,
            "recall": 0.872,
            "deeplab_mIoU": 0.79,
            "per_class_IoU": {"face": 0.78, "body": 0.61},
            "default": True,
        },
    }
    report = msrc.markdown(results)
    assert "## One step beyond the thesis: shared regions split by clusters" in report
    assert "k-means at 8, 16, 32 clusters" in report
    assert (
        "| shared regions split by | pseudo-label mIoU | precision | recall | face | body | DeepLab mIoU (seed 0) |"
        in report
    )
    assert _row(report, "| dense CRF (the original)").endswith("| 0.775 | 0.885 | 0.860 | 0.630 | 0.480 | 0.750 |")
    assert _row(report, "| feature clusters (default)").endswith("| 0.792 | 0.899 | 0.872 | 0.780 | 0.610 | 0.790 |")
    assert "the cluster split's DeepLab **wins**" in report
    assert "seeds 0, 1: 0.790, 0.780" in report
    # the gpu profile trains no DeepLab on the original's labels: no verdict, the seeds still shown
    results["ablations"][msrc.ORIGINAL_RULE]["deeplab_mIoU"] = None
    report = msrc.markdown(results)
    assert "were not both measured in this run; the default's DeepLabs at seeds 0, 1: 0.790, 0.780" in report
    assert "**not measured**" not in report
    # without the original's row (a run that has not reached the ablations) there is no section
    del results["ablations"][msrc.ORIGINAL_RULE]
    assert "One step beyond the thesis: shared regions" not in msrc.markdown(results)
