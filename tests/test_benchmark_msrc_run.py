"""benchmarks.msrc end to end on a tiny stand-in for ../shared (the synthetic set in MSRC's VOC
layout, its saliency set as DUTS and as DAVIS val), a few steps per training: every part runs,
shares its upstream outputs, and the report, curves and sheet come out of one command."""

from __future__ import annotations

import json
import os

import pytest

import config as config_module
from benchmarks import msrc

TINY = {
    "synthetic.num_train": 24,
    "synthetic.num_val": 8,
    "synthetic.min_size": 64,
    "synthetic.max_size": 72,
    "synthetic.saliency_num_train": 6,
    "synthetic.saliency_num_val": 4,
}
STEPS = {
    "runtime.device": "cpu",
    "runtime.num_workers": 0,
    "saliency.steps": 2,
    "saliency.val_every": 1,
    "saliency.input_size": 64,
    "saliency.train_batch_size": 2,
    "saliency.batch_size": 4,
    "classifier.steps": 2,
    "classifier.val_every": 2,
    "classifier.crop_size": 64,
    "classifier.batch_size": 4,
    "attention.batch_size": 4,
    "guide.workers": 1,
    "guide.previews": 0,
    "deeplab.steps": 5,
    "deeplab.val_every": 1,
    "deeplab.crop_size": 64,
    "deeplab.batch_size": 2,
    "eval.overlays": 0,
}


@pytest.fixture
def tiny_shared(tmp_path):
    """A folder laid out as ../shared, holding links to a freshly generated tiny synthetic set."""
    from datasets import synthetic

    root = tmp_path / "synthetic"
    cfg = config_module.build_config("demo")
    cfg.dataset.root = str(root)
    for key, value in TINY.items():
        setattr(cfg.synthetic, key.split(".")[1], value)
    synthetic.ensure_generated(cfg)
    shared = tmp_path / "shared" / "data"
    (shared / "duts_saliency").mkdir(parents=True)
    (shared / "davis_saliency").mkdir()
    (shared / "msrc_objects").symlink_to(root)
    for split in ("train", "val"):
        (shared / "duts_saliency" / split).symlink_to(root / "saliency" / split)
    (shared / "davis_saliency" / "val").symlink_to(root / "saliency" / "val")
    return shared.parent


@pytest.mark.slow
def test_quick_profile_with_every_part(tiny_shared, tmp_path):
    import torch

    torch.set_num_threads(1)
    docs, out = tmp_path / "docs", tmp_path / "bench"
    args = [
        "--quick",
        "--self-training",
        "--seeds",
        "0,1",
        "--saliency-lengths",
        "1,2",
        "--shared",
        str(tiny_shared),
        "--out",
        str(out),
        "--docs",
        str(docs),
    ]
    args += [a for k, v in STEPS.items() for a in ("--set", f"{k}={v}")]
    assert msrc.main_cli(args) == 0
    results = json.loads((out / "quick" / "results.json").read_text())
    assert set(results["seeds"]) == {"0", "1"} and results["weak_over_full"] is not None
    deeplab_runs = set(results["curves"]["train_deeplab"])
    assert deeplab_runs == {"gt0", "gt100", "gt0_seed1", "gt100_seed1", "selftrain"}
    assert [p[1] for p in results["curves"]["train_deeplab"]["gt100"]["val/mIoU"]] == [1, 2, 3, 4, 5]
    # on a CPU with two cores or more the saliency network beside the classifier, then the four
    # DeepLabs two at a time, each in a process of its own with its log (one core: one after
    # another, in this process)
    two_cores = (os.cpu_count() or 1) >= 2
    if two_cores:
        pairs = [["saliency", "classifier"], ["gt0", "gt100"], ["gt0_seed1", "gt100_seed1"]]
        assert results["side_by_side"]["pairs"] == pairs
        assert "=== train_seed ===" in (out / "quick" / "logs" / "classifier.log").read_text()
        assert "=== train_deeplab ===" in (out / "quick" / "logs" / "gt100_seed1.log").read_text()
    assert results["second_saliency_val"]["name"] == "davis_saliency/val"
    assert results["self_training"]["labels"]["images"] == 24
    lengths = results["saliency_lengths"]
    assert set(lengths) == {"1", "2"} and all(0 <= row["mIoU"] <= 1 for row in lengths.values())
    assert lengths["2"]["train_minutes"] >= lengths["1"]["train_minutes"]
    # variants read the base run's outputs through links, never a copy
    assert (out / "quick" / "gt100_seed1" / "tmp" / "guide").is_symlink()
    assert (out / "quick" / "selftrain_predict" / "checkpoints" / "deeplab").is_symlink()
    assert not (out / "quick" / "selftrain" / "tmp" / "guide").is_symlink()
    report = (docs / "BENCHMARKS.md").read_text()
    assert "| DeepLab val mIoU gain over its last 20 % of steps, gt100_seed1 (every real mask) | " in report
    assert "## One step beyond the thesis: a self-training round" in report
    assert "## The saliency network's training length" in report
    assert ("then the DeepLabs, trained two at a time" in report) is two_cores
    for picture in ("benchmark_curves.png", "benchmark_worst_classes.png", "benchmark_gt_percentage.png"):
        assert (docs / picture).stat().st_size > 1000
    # a rerun trains nothing again: the same networks give the same numbers (the sweep's passed
    # lengths read back, not re-scored with the longer training's network)
    checkpoint = out / "quick" / "gt100_seed1" / "checkpoints" / "deeplab" / "last.pt"
    stamp = checkpoint.stat().st_mtime_ns
    assert msrc.main_cli(args) == 0
    again = json.loads((out / "quick" / "results.json").read_text())
    assert checkpoint.stat().st_mtime_ns == stamp
    assert again["seeds"] == results["seeds"] and again["saliency_lengths"] == lengths
    assert again["self_training"]["labels"] == results["self_training"]["labels"]
    # a resumed round reports what its stages cost when they ran, as every other part does
    kept = json.loads((out / "quick" / "selftrain" / "runs" / "stage_seconds.json").read_text())
    assert again["self_training"]["seconds"] >= kept["train_deeplab"] + kept["eval_deeplab"]
    # the report can be rewritten from results.json alone
    report = (docs / "BENCHMARKS.md").read_text()
    assert msrc.main_cli(args + ["--report-only"]) == 0
    assert (docs / "BENCHMARKS.md").read_text() == report


@pytest.mark.slow
def test_gpu_profile_parts_on_the_cpu(tiny_shared, tmp_path):
    """The gpu profile's own paths (its report and pictures, no speed ratios, no comparison
    DeepLab), run on the CPU: a lent GPU's minutes are too few to find a crash there."""
    import torch

    torch.set_num_threads(1)
    docs, out = tmp_path / "docs", tmp_path / "bench"
    args = ["--profile", "gpu", "--shared", str(tiny_shared), "--out", str(out), "--docs", str(docs)]
    args += [a for k, v in {**STEPS, "runtime.precision": "fp32"}.items() for a in ("--set", f"{k}={v}")]
    assert msrc.main_cli(args) == 0
    results = json.loads((out / "gpu" / "results.json").read_text())
    assert set(results["seeds"]) == {"0", "1"} and "speed" not in results
    assert set(results["curves"]["train_deeplab"]) == {"gt0", "gt100", "gt0_seed1", "gt100_seed1"}
    assert results["ablations"][msrc.ORIGINAL_RULE]["deeplab_mIoU"] is None
    assert results["ablations"][msrc.CLUSTER_SPLIT]["default"]
    report = (docs / "BENCHMARKS_GPU.md").read_text()
    assert "(gpu profile)" in report and "## One step beyond the thesis: shared regions split by" in report
    for picture in ("benchmark_curves_gpu.png", "benchmark_worst_classes_gpu.png", "benchmark_gt_percentage_gpu.png"):
        assert (docs / picture).stat().st_size > 1000
    assert not (docs / "BENCHMARKS.md").exists()
    # its report is rewritten on a machine without a GPU (the profile itself sets runtime.device=cuda)
    report = (docs / "BENCHMARKS_GPU.md").read_text()
    args = ["--profile", "gpu", "--shared", str(tiny_shared), "--out", str(out), "--docs", str(docs)]
    assert msrc.main_cli(args + ["--report-only"]) == 0
    assert (docs / "BENCHMARKS_GPU.md").read_text() == report


@pytest.mark.slow
def test_a_ready_saliency_network_is_scored_not_trained(tiny_shared, tmp_path):
    """--set saliency.checkpoint=<a network trained elsewhere> (the public PiCANet checkpoint, or the
    CPU benchmark's network on a GPU machine that cannot carry its training pairs): TRAIN_SALIENCY
    does not run, the ready network is scored on both validation sets, and the report says so."""
    import argparse

    import torch

    import main
    from common.layout import Layout

    torch.set_num_threads(1)
    overrides = [f"{k}={v}" for k, v in STEPS.items()]
    quick = argparse.Namespace(shared=str(tiny_shared), profile="quick", overrides=overrides)
    elsewhere = msrc.build(quick, tmp_path / "elsewhere", "gt0", {})
    main.run_stages(elsewhere, ["train_saliency"])
    network = Layout(elsewhere).trained_network("saliency")
    docs, out = tmp_path / "docs", tmp_path / "bench"
    args = ["--quick", "--shared", str(tiny_shared), "--out", str(out), "--docs", str(docs)]
    args += [a for o in overrides + [f"saliency.checkpoint={network}"] for a in ("--set", o)]
    assert msrc.main_cli(args) == 0
    results = json.loads((out / "quick" / "results.json").read_text())
    assert not (out / "quick" / "gt0" / "checkpoints" / "saliency").exists()
    scored = results["base"]["train_saliency"]
    assert 0 < scored["max_F"] <= 1 and scored["images"] == 4  # the tiny set's saliency val
    assert 0 < results["second_saliency_val"]["max_F"] <= 1
    report = (docs / "BENCHMARKS.md").read_text()
    assert f"saliency from the ready network `{network}` (TRAIN_SALIENCY does not run)" in report
    assert f"| saliency max F, duts_saliency/val | {scored['max_F']:.3f} |" in report


def _run_args(tiny_shared, *extra):
    import argparse

    return argparse.Namespace(
        shared=str(tiny_shared),
        profile="full",
        overrides=[f"{k}={v}" for k, v in STEPS.items()],
        seeds=[0, 1],
        ablation_deeplabs=False,
        argv=list(extra),
    )


def test_the_deeplabs_planned_ahead_are_the_ones_the_report_reads(tiny_shared, tmp_path, monkeypatch):
    """run_side_by_side trains planned_deeplabs() before the report's parts ask for them: each part
    must find its DeepLab finished, in the folder and with the settings the plan gave it."""
    args = _run_args(tiny_shared)
    out = tmp_path / "bench" / "full"
    base = msrc.build(args, out, msrc.BASE_FOLDER, msrc.BASE_SETTINGS)
    asked = []

    def recorded(cfg, stages):
        if "train_deeplab" in stages:
            asked.append((cfg.to_json(), tuple(stages)))
        return {stage: {"mIoU": 0.5, "seconds": 1.0} for stage in stages}

    monkeypatch.setattr(msrc, "run_variant", recorded)
    stage = {"mIoU": 0.5, "seconds": 1.0}
    results = {"gt_percentage": {"0": stage}, "base": {"create_guide": stage, "eval_deeplab": stage}}
    msrc.run_percentages(args, out, base, results, [100])
    msrc.run_seeds(args, out, base, results, args.seeds)
    msrc.run_ablations(args, out, base, results)
    planned = [
        (msrc.build(args, out, job.folder, job.settings).to_json(), job.stages)
        for job in msrc.planned_deeplabs(args, base)
    ]
    assert planned[0] == (base.to_json(), msrc.DEEPLAB_STAGES)  # the base run's own, in the main flow
    assert sorted(asked) == sorted(planned[1:])
    assert [job.folder for job in msrc.planned_deeplabs(args, base)] == [
        "gt0",
        "gt100",
        "gt0_seed1",
        "gt100_seed1",
        "guide0",
    ]


def test_deeplabs_train_side_by_side_only_on_a_cpu_with_two_cores(tiny_shared, tmp_path):
    args = _run_args(tiny_shared)
    base = msrc.build(args, tmp_path / "bench" / "full", msrc.BASE_FOLDER, msrc.BASE_SETTINGS)
    assert msrc.side_by_side_threads(base, cores=2) == 1
    assert msrc.side_by_side_threads(base, cores=16) == 8
    assert msrc.side_by_side_threads(base, cores=1) == 0
    base.runtime.device = "cuda"
    assert msrc.side_by_side_threads(base, cores=16) == 0


@pytest.mark.parametrize(("count", "sizes"), [(1, [1]), (2, [2]), (3, [3]), (4, [2, 2]), (5, [2, 3]), (7, [2, 2, 3])])
def test_jobs_run_in_pairs_and_an_odd_last_one_joins_the_last_pair(count, sizes):
    jobs = list(range(count))
    groups = msrc.job_groups(jobs)
    assert [len(group) for group in groups] == sizes
    assert [job for group in groups for job in group] == jobs  # every job once, in order


def test_a_group_shares_the_pairs_cores_and_a_job_alone_has_them_all():
    assert msrc.threads_in_group(1, 2) == 1
    assert msrc.threads_in_group(1, 3) == 1  # two cores, three single-threaded processes
    assert msrc.threads_in_group(8, 3) == 5  # never more threads than cores
    assert msrc.threads_in_group(8, 1) == 0


def test_a_failed_side_by_side_job_stops_the_run_naming_its_log(tiny_shared, tmp_path):
    # the jobs' processes are this script with the run's arguments: a missing --shared fails them
    args = _run_args(tiny_shared, "--shared", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bench"))
    out = tmp_path / "bench" / "full"
    jobs = [msrc.deeplab_job("gt100", {"deeplab.gt_percentage": 100}), msrc.deeplab_job("gt0_seed1", {})]
    with pytest.raises(RuntimeError, match=r"gt100 run \(train_deeplab, eval_deeplab\) failed with exit 2") as caught:
        msrc.run_side_by_side(args, out, jobs, threads=1)
    assert str(out / "logs" / "gt100.log") in str(caught.value)
    assert "nowhere" in (out / "logs" / "gt0_seed1.log").read_text()  # both ran: the partner is waited for
