"""Real-data benchmark: the whole pipeline on MSRC objects with saliency trained on DAVIS.

Quality against full supervision, speed against the original's way of working, each measured in
this one run on this machine, written to docs/BENCHMARKS.md (with docs/benchmark_gt_percentage.png)
and to <out>/results.json.

    python -m benchmarks.msrc [--quick] [--shared ../shared] [--out bench/msrc] [--set k=v ...]
    make bench            # make bench QUICK=1 for the short variant

What runs (lite0 backbones, CPU):
1. the pipeline on the ``msrc`` preset: TRAIN_SALIENCY on davis_saliency/train (validated on
   davis_saliency/val), CREATE_SALIENCY, TRAIN_SEED, CREATE_ATTENTION, CREATE_GUIDE (the default
   rule), TRAIN_DEEPLAB on pseudo labels (gt_percentage 0), EVAL_DEEPLAB on MSRC val;
2. DeepLab again with gt_percentage 10, 25, 50, 100, reading the same pseudo labels;
3. the guide's rules (the ablations), each from the same saliency and CAMs, pseudo-label mIoU and
   (not with --quick) DeepLab trained on them;
4. speed ratios on the same images: CREATE_ATTENTION against the original's way, CREATE_SALIENCY
   batched against batch 1, the guide's bounding-box CRF against a whole-image CRF, and the size of
   the stored CAMs against float32 full-resolution maps, with the pseudo labels both give.

Every variant has its own tmp/, runs/ and checkpoints/ under <out>; stage outputs it shares with
the first run are symbolic links to that run's tmp/ folders. Reruns skip finished work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config as config_module  # noqa: E402
import datasets  # noqa: E402
import main  # noqa: E402
from common import metrics  # noqa: E402
from common.layout import Layout  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]

# sized so the whole benchmark fits 90 minutes (quick: 15) on 2 CPU cores; measured stage times in
# docs/BENCHMARKS.md. DeepLab is validated once, at the end: eight of them are trained.
PROFILES = {
    "full": {"saliency.steps": 200, "saliency.val_every": 100, "classifier.steps": 100,
             "classifier.val_every": 100, "deeplab.steps": 300, "deeplab.val_every": 300,
             "deeplab.crop_size": 192},
    "quick": {"saliency.steps": 40, "saliency.val_every": 40, "classifier.steps": 40,
              "classifier.val_every": 40, "deeplab.steps": 80, "deeplab.val_every": 80,
              "deeplab.crop_size": 192},
}
TIME_LIMIT_MINUTES = {"full": 90, "quick": 15}
# 0 first (the main run), then 100 (the weak/full ratio), then the points between
GT_PERCENTAGES = {"full": (0, 100, 10, 25, 50), "quick": (0, 100)}
# guide variants: name -> settings (the first one that equals the config is the main run itself)
ABLATIONS = {
    "region rule (original)": {"guide.rule": "region", "guide.unlabelled_foreground": "background",
                               "guide.isolated_class_regions": "class"},
    "unlabelled foreground = ignore": {"guide.rule": "region", "guide.unlabelled_foreground": "ignore",
                                       "guide.isolated_class_regions": "class"},
    "isolated class regions = ignore": {"guide.rule": "region", "guide.unlabelled_foreground": "background",
                                        "guide.isolated_class_regions": "ignore"},
    "pixel rule": {"guide.rule": "pixel"},
}
# saliency.threshold of the guide, pseudo labels only (the first is the original's 0.5)
SALIENCY_THRESHOLDS = (0.5, 0.3, 0.2, 0.1)
SPEED_IMAGES = {"full": 80, "quick": 30}
TARGETS = {"weak_over_full": 0.90, "attention_speedup": 5.0, "saliency_speedup": 3.0,
           "guide_speedup": 3.0, "storage_fraction": 0.1}


def build(args, out: Path, name: str, settings: dict) -> config_module.Config:
    """The msrc preset with the profile, the user's overrides and ``settings``; paths under out/name."""
    shared = Path(args.shared).resolve()
    overrides = [f"{k}={v}" for k, v in {**PROFILES[args.profile], **settings}.items()] + args.overrides
    cfg = config_module.build_config("msrc", overrides)
    cfg.dataset.root = str(shared / "data" / "msrc_objects")
    cfg.saliency.train_root = str(shared / "data" / "davis_saliency" / "train")
    cfg.saliency.val_root = str(shared / "data" / "davis_saliency" / "val")
    cfg.paths.tmp = str(out / name / "tmp")
    cfg.paths.runs = str(out / name / "runs")
    cfg.paths.checkpoints = str(out / name / "checkpoints")
    return config_module.validate(cfg)


def share_outputs(source, target, stages: tuple[str, ...]) -> None:
    """Let ``target`` read ``source``'s outputs of ``stages`` (symbolic links to its tmp/ folders)."""
    for stage in stages:
        link, real = Layout(target).folder(stage), Layout(source).folder(stage)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or not link.exists():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(real, target_is_directory=True)


def run_variant(cfg, stages: list[str]) -> dict:
    """Run ``stages``; a stage a rerun finds done keeps the wall time of the run that did the work
    (kept in runs/stage_seconds.json), so the report shows what each stage costs."""
    started = time.time()
    summaries = main.run_stages(cfg, stages)
    record = Layout(cfg).runs / "stage_seconds.json"
    seconds = json.loads(record.read_text()) if record.exists() else {}
    for stage, summary in summaries.items():
        seconds[stage] = max(seconds.get(stage, 0.0), summary["seconds"])
        summary["seconds"] = seconds[stage]
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(seconds, indent=2))
    summaries["seconds"] = round(time.time() - started, 1)
    return summaries


def matches_config(cfg, settings: dict) -> bool:
    return all(str(getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1])) == str(v)
               for k, v in settings.items())


# ---- speed ------------------------------------------------------------------------------------
def saliency_speed(cfg, num_images: int) -> dict:
    """CREATE_SALIENCY's network pass, batched (saliency.batch_size) against one image at a time."""
    from saliency.data import image_tensor, resize
    from saliency.make_saliency import load_network, saliency_maps

    image_set = datasets.build(cfg, "train")
    ids = image_set.ids[:num_images]
    size = cfg.saliency.input_size
    images = [image_tensor(image_set.image(i)) for i in ids]
    resized = [resize(image, (size, size)) for image in images]
    sizes = [tuple(image.shape[1:]) for image in images]
    model = load_network(cfg, torch.device("cpu")).eval()
    saliency_maps(model, resized[0][None], sizes[:1], False)  # warm-up, not timed
    seconds = {}
    for name, batch in (("batch_1", 1), ("batched", cfg.saliency.batch_size)):
        started = time.perf_counter()
        for start in range(0, len(ids), batch):
            saliency_maps(model, torch.stack(resized[start:start + batch]), sizes[start:start + batch], False)
        seconds[name] = time.perf_counter() - started
    return {"images": len(ids), "batch_size": cfg.saliency.batch_size,
            "seconds_batch_1": round(seconds["batch_1"], 2), "seconds_batched": round(seconds["batched"], 2),
            "speedup": round(seconds["batch_1"] / seconds["batched"], 2)}


def storage_check(cfg, num_images: int) -> dict:
    """Stored CAMs (float16, 1/stride) against float32 full-resolution maps per class, and the
    pseudo labels the guide makes from each, on ``num_images`` training images."""
    from attention.gradcam import GradCam
    from attention.make_cam import compute_cams
    from classifier import load_trained
    from classifier.data import to_tensor
    from guide.make_guide import read_inputs
    from guide.rules import GuideParams, make_pseudo_label

    layout = Layout(cfg)
    image_set = datasets.build(cfg, "train")
    all_ids = [i for i in image_set.ids if image_set.class_ids(i)]
    stored = sum(layout.cams(i).stat().st_size for i in all_ids)
    float32_full = sum(4 * int(np.prod(image_set.image_size(i))) * len(image_set.class_ids(i)) for i in all_ids)
    torch.set_grad_enabled(True)
    model = load_trained(cfg, image_set.class_names, torch.device("cpu"))
    params = GuideParams.from_config(cfg)
    matrices = {n: metrics.ConfusionMatrix(image_set.num_classes + 1) for n in ("stored", "float32_full")}
    agreeing = pixels = 0
    ids = all_ids[:num_images]
    with GradCam(model, cfg.attention.target_layer or model.default_target_layer) as grad_cam:
        for image_id in ids:
            inputs = read_inputs(layout, image_set, image_id)
            image = to_tensor(inputs["image"], model.mean, model.std)[None]
            classes = [c - 1 for c in image_set.class_ids(image_id)]
            full = compute_cams(grad_cam, image, [classes], cfg.attention.scales, cfg.attention.flip,
                                tuple(inputs["image"].shape[:2]))[0].detach().numpy().astype(np.float32)
            exact = {**inputs, "cams": dict(zip(image_set.class_ids(image_id), full)),
                     "class_masks": {c: m >= cfg.attention.threshold
                                     for c, m in zip(image_set.class_ids(image_id), full)}}
            labels = {"stored": make_pseudo_label(**inputs, params=params),
                      "float32_full": make_pseudo_label(**exact, params=params)}
            mask = image_set.mask(image_id)
            for name, label in labels.items():
                matrices[name].update(mask, label)
            agreeing += int((labels["stored"] == labels["float32_full"]).sum())
            pixels += labels["stored"].size
    return {"images_all": len(all_ids), "stored_bytes": stored, "float32_full_bytes": float32_full,
            "fraction": round(stored / float32_full, 4), "images_compared": len(ids),
            "pseudo_mIoU_stored": matrices["stored"].mean_iou(),
            "pseudo_mIoU_float32_full": matrices["float32_full"].mean_iou(),
            "pixels_agreeing": agreeing / max(pixels, 1)}


def speed(cfg, profile: str) -> dict:
    from benchmarks import attention_speed, guide_crf_speed

    count = SPEED_IMAGES[profile]
    return {"attention": attention_speed.measure(cfg, count),
            "saliency": saliency_speed(cfg, count),
            "guide": guide_crf_speed.measure(cfg, "train", count, oracle=False, only_multi_class=True),
            "storage": storage_check(cfg, count)}


# ---- report -----------------------------------------------------------------------------------
def plot_gt_percentage(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((float(p), r["mIoU"]) for p, r in results["gt_percentage"].items())
    figure, axes = plt.subplots(figsize=(5, 3.2), dpi=100)
    axes.plot([p for p, _ in points], [m for _, m in points], marker="o")
    axes.set_xlabel("gt_percentage (% of training images with their real mask)")
    axes.set_ylabel("DeepLab mIoU, MSRC val")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _f(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _holds(value, target, higher_is_better: bool = True) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "not measured"
    return "holds" if (value >= target if higher_is_better else value <= target) else "MISSED"


def markdown(results: dict) -> str:
    base = results["base"]
    gt = results["gt_percentage"]
    speeds = results["speed"]
    ratio = results.get("weak_over_full")
    resumed = results.get("resumed", True)  # results.json written before the flag existed: unknown
    lines = [
        "# Benchmark: MSRC objects (real photos), saliency from DAVIS",
        "",
        f"Produced by `{results['command']}` ({results['profile']} profile) on {results['date']}, "
        f"{results['machine']}. Every number below was measured by that command on that day; ratios "
        "compare two ways of working on the same images in the same run. "
        + ("Stages that an interrupted earlier run of the same command had finished were reused, with "
           "that run's wall times. " if resumed else "")
        + "What the numbers say, and what limits them: docs/RESULTS.md.",
        "",
        "Data: `../shared/data/msrc_objects` (15 object classes + background; train 325, val 88) and "
        "`../shared/data/davis_saliency` (train 419 / val 141 frames). Backbones: EfficientNet-Lite0 "
        "with offline ImageNet weights everywhere; CPU. Settings: the `msrc` preset with "
        + ", ".join(f"`{k}={v}`" for k, v in results["settings"].items()) + ".",
        "",
        "## Quality",
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
        f"| saliency max F, davis_saliency/val | {_f(base['train_saliency'].get('max_F'))} | | |",
        f"| saliency MAE, davis_saliency/val | {_f(base['train_saliency'].get('MAE'))} | | |",
        f"| classifier mAP, MSRC val | {_f(base['train_seed'].get('mAP'))} | | |",
        f"| CAM seed mIoU, MSRC train (best background threshold "
        f"{_f(base['create_attention'].get('best_threshold'), 2)}) | {_f(base['create_attention'].get('seed_mIoU'))} | | |",
        f"| pseudo-label mIoU / precision / recall, MSRC train | {_f(base['create_guide'].get('mIoU'))} / "
        f"{_f(base['create_guide'].get('precision'))} / {_f(base['create_guide'].get('recall'))} | | |",
    ]
    for percentage, result in sorted(gt.items(), key=lambda kv: float(kv[0])):
        lines.append(f"| DeepLab mIoU, MSRC val, gt_percentage {percentage} | {_f(result['mIoU'])} | | |")
    lines += [f"| **weak/full ratio** = mIoU(0) / mIoU(100) | **{_f(ratio)}** | >= {TARGETS['weak_over_full']} "
              f"| {_holds(ratio, TARGETS['weak_over_full'])} |", "",
              "![DeepLab mIoU against gt_percentage](benchmark_gt_percentage.png)", "",
              "Per-class IoU on MSRC val (DeepLab):", "",
              "| class | " + " | ".join(f"gt {p}" for p in sorted(gt, key=float)) + " |",
              "|---|" + "---|" * len(gt)]
    names = next(iter(gt.values())).get("per_class_IoU", {})
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_f(gt[p].get("per_class_IoU", {}).get(name))
                                                  for p in sorted(gt, key=float)) + " |")
    lines += ["", "## The guide's rules (ablation)", "",
              "Same saliency maps and CAMs for every row; pseudo labels scored on MSRC train, DeepLab "
              "(gt_percentage 0) on MSRC val.", "",
              "| rule | pseudo-label mIoU | precision | recall | ignore pixels | DeepLab mIoU |",
              "|---|---|---|---|---|---|"]
    for name, result in results["ablations"].items():
        mark = " (default)" if result.get("default") else ""
        lines.append(f"| {name}{mark} | {_f(result.get('mIoU'))} | {_f(result.get('precision'))} | "
                     f"{_f(result.get('recall'))} | {_f(result.get('ignore_fraction'))} | "
                     f"{_f(result.get('deeplab_mIoU'))} |")
    if "saliency_thresholds" in results:
        lines += ["", "## The saliency threshold of the guide", "",
                  "The default rule at other `saliency.threshold` values, on the same saliency maps and "
                  "CAMs; pseudo labels on MSRC train (no DeepLab).", "",
                  "| saliency.threshold | pseudo-label mIoU | precision | recall |", "|---|---|---|---|"]
        for threshold, result in results["saliency_thresholds"].items():
            mark = " (default)" if result.get("default") else (" (original)" if float(threshold) == 0.5 else "")
            lines.append(f"| {threshold}{mark} | {_f(result.get('mIoU'))} | {_f(result.get('precision'))} | "
                         f"{_f(result.get('recall'))} |")
    attention, saliency, guide, storage = (speeds[k] for k in ("attention", "saliency", "guide", "storage"))
    lines += [
        "", "## Speed and storage", "",
        "| measure | ours | original's way | ratio | target | |",
        "|---|---|---|---|---|---|",
        f"| CREATE_ATTENTION, {attention['images']} images, {attention['class_maps']} class maps "
        f"(max difference to a per-class reference {attention['max_abs_difference_vs_reference']:.1e}) | "
        f"{attention['ours_seconds']} s | {attention['original_seconds']} s | {attention['speedup']}x | "
        f">= {TARGETS['attention_speedup']}x | {_holds(attention['speedup'], TARGETS['attention_speedup'])} |",
        f"| CREATE_SALIENCY network pass, {saliency['images']} images, batch {saliency['batch_size']} vs 1 | "
        f"{saliency['seconds_batched']} s | {saliency['seconds_batch_1']} s | {saliency['speedup']}x | "
        f">= {TARGETS['saliency_speedup']}x | {_holds(saliency['speedup'], TARGETS['saliency_speedup'])} |",
        f"| CREATE_GUIDE, {guide['images']} images with multi-class regions, box CRF vs whole-image CRF "
        f"(mIoU {_f(guide['mIoU_box'])} vs {_f(guide['mIoU_whole_image'])}) | {guide['seconds_box']} s | "
        f"{guide['seconds_whole_image']} s | {guide['speedup_all_images']}x | >= {TARGETS['guide_speedup']}x | "
        f"{_holds(guide['speedup_all_images'], TARGETS['guide_speedup'])} |",
        f"| stored CAMs vs float32 full-resolution maps, {storage['images_all']} images "
        f"(pseudo-label mIoU {_f(storage['pseudo_mIoU_stored'], 4)} vs {_f(storage['pseudo_mIoU_float32_full'], 4)} "
        f"on {storage['images_compared']}, {100 * storage['pixels_agreeing']:.2f} % of pixels equal) | "
        f"{storage['stored_bytes'] / 1e6:.2f} MB | {storage['float32_full_bytes'] / 1e6:.1f} MB | "
        f"{storage['fraction']} | <= {TARGETS['storage_fraction']} | "
        f"{_holds(storage['fraction'], TARGETS['storage_fraction'], higher_is_better=False)} |",
        "", "## Wall time", ""]
    limit = TIME_LIMIT_MINUTES[results["profile"]]
    if "seconds" in results:
        minutes = results["seconds"] / 60
        how = ("resumed from an earlier, interrupted run, so the total counts only this process"
               if resumed else "one process from an empty output folder")
        lines += [f"Whole benchmark: **{minutes:.1f} min** ({how}); target <= {limit} min: "
                  f"{_holds(minutes, limit, higher_is_better=False)}.", ""]
    lines += ["| part | seconds |", "|---|---|"]
    lines += [f"| {stage} | {summary['seconds']:.0f} |" for stage, summary in base.items()
              if isinstance(summary, dict)]
    lines += [f"| train_deeplab, gt_percentage {p} | {r['train_seconds']:.0f} |"
              for p, r in sorted(gt.items(), key=lambda kv: float(kv[0])) if "train_seconds" in r]
    lines += [f"| guide ablation: {name} | {r['seconds']:.0f} |" for name, r in results["ablations"].items()
              if "seconds" in r]
    if "seconds" in speeds:
        lines.append(f"| speed and storage ratios | {speeds['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def run_percentages(args, out: Path, base, results: dict, percentages) -> None:
    """DeepLab on the base run's pseudo labels with ``percentages`` % of real masks."""
    for percentage in percentages:
        variant = build(args, out, f"gt{percentage}", {"deeplab.gt_percentage": percentage})
        share_outputs(base, variant, ("saliency", "attention", "guide"))
        summary = run_variant(variant, ["train_deeplab", "eval_deeplab"])
        results["gt_percentage"][str(percentage)] = {**summary["eval_deeplab"],
                                                     "train_seconds": summary["train_deeplab"]["seconds"]}
    if "100" in results["gt_percentage"]:
        results["weak_over_full"] = results["gt_percentage"]["0"]["mIoU"] / results["gt_percentage"]["100"]["mIoU"]


def run_guide_variant(args, out: Path, base, results: dict, folder: str, settings: dict,
                      train_deeplab: bool) -> dict:
    """The guide (and, with ``train_deeplab``, DeepLab at gt_percentage 0) with ``settings`` on the
    base run's saliency maps and CAMs; the base run's own results when ``settings`` are its config."""
    if matches_config(base, settings):
        return {**results["base"]["create_guide"], "deeplab_mIoU": results["base"]["eval_deeplab"]["mIoU"],
                "default": True}
    variant = build(args, out, folder, {**settings, "deeplab.gt_percentage": 0})
    share_outputs(base, variant, ("saliency", "attention"))
    summary = run_variant(variant, ["create_guide"] + (["train_deeplab", "eval_deeplab"] if train_deeplab else []))
    return {**summary["create_guide"], "deeplab_mIoU": summary.get("eval_deeplab", {}).get("mIoU"),
            "seconds": summary["seconds"]}


def run_ablations(args, out: Path, base, results: dict) -> None:
    """Each guide rule on the base run's saliency maps and CAMs (and DeepLab on its labels)."""
    train = not (args.quick or args.guide_only_ablations)
    results["ablations"] = {name: run_guide_variant(args, out, base, results, f"guide{index}", settings, train)
                            for index, (name, settings) in enumerate(ABLATIONS.items())}


def run_threshold_sweep(args, out: Path, base, results: dict) -> None:
    """The default rule at each of SALIENCY_THRESHOLDS, pseudo labels only."""
    results["saliency_thresholds"] = {
        str(threshold): run_guide_variant(args, out, base, results, f"threshold{threshold}",
                                          {"saliency.threshold": threshold}, train_deeplab=False)
        for threshold in SALIENCY_THRESHOLDS}


def write_report(args, out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    plot_gt_percentage(results, docs / "benchmark_gt_percentage.png")
    (docs / "BENCHMARKS.md").write_text(markdown(results))


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter training, gt_percentage 0 and 100 only")
    parser.add_argument("--shared", default=str(PROJECT.parent / "shared"))
    parser.add_argument("--out", default=str(PROJECT / "bench" / "msrc"))
    parser.add_argument("--docs", default=None,
                        help="where BENCHMARKS.md and the plot go (default: docs/; with --quick, the "
                             "quick run's output folder, so it never replaces the full report)")
    parser.add_argument("--guide-only-ablations", action="store_true",
                        help="score the guide's rules on their pseudo labels only, without training a "
                             "DeepLab on each (always so with --quick)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md and the plot from <out>/results.json, running nothing")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    args.profile = "quick" if args.quick else "full"
    for part in ("data/msrc_objects", "data/davis_saliency/train", "data/davis_saliency/val"):
        if not (Path(args.shared) / part).exists():
            print(f"error: {Path(args.shared) / part} is missing (--shared names the shared folder)", file=sys.stderr)
            return 2
    out = Path(args.out).resolve() / args.profile
    if args.docs is None:
        args.docs = str(out if args.quick else PROJECT / "docs")
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        write_report(args, out, results)
        print(markdown(results))
        return 0
    started = time.time()
    results = {"command": "python -m benchmarks.msrc" + (" --quick" if args.quick else "")
               + (" --guide-only-ablations" if args.guide_only_ablations else "")
               + "".join(f" --set {o}" for o in args.overrides),
               "profile": args.profile, "date": time.strftime("%Y-%m-%d"),
               "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}",
               "settings": {**PROFILES[args.profile], **dict(o.split("=", 1) for o in args.overrides)}}

    base = build(args, out, "gt0", {"deeplab.gt_percentage": 0})
    results["resumed"] = (Layout(base).runs / "stage_seconds.json").exists()
    results["base"] = run_variant(base, main.STAGE_NAMES)
    results["gt_percentage"] = {"0": results["base"]["eval_deeplab"]}
    percentages = GT_PERCENTAGES[args.profile][1:]
    # the weak/full ratio, the ablations and the speeds first; then the points between 0 and 100,
    # with the report rewritten after each, so an interrupted benchmark still leaves one
    run_percentages(args, out, base, results, percentages[:1])
    run_ablations(args, out, base, results)
    run_threshold_sweep(args, out, base, results)
    started_speed = time.time()
    results["speed"] = speed(base, args.profile)
    results["speed"]["seconds"] = round(time.time() - started_speed, 1)
    results["seconds"] = round(time.time() - started, 1)
    write_report(args, out, results)
    for percentage in percentages[1:]:
        run_percentages(args, out, base, results, [percentage])
        results["seconds"] = round(time.time() - started, 1)
        write_report(args, out, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
