"""EVAL_DEEPLAB variants (test-time scales, flip, the dense CRF) on the DeepLabs of a ``make bench`` run.

Each variant is a name and eval.* settings. For every DeepLab the run trained (gt0, gt100 and their
``_seed<N>`` twins: pseudo labels and every real mask), it evaluates that network on MSRC val with the
variant's settings, and reports mIoU per network, the mean over seeds of each kind of supervision and
the weak/full ratio (mean over seeds of gt0 / gt100, as the benchmark's report computes it). No network
is trained: evaluation changes only how a trained DeepLab is read, so the pseudo-label and the
fully supervised networks get the same treatment and the ratio stays a like-for-like comparison.

    python -m benchmarks.eval_variants base= flip="eval.flip=true" \\
        ms_flip="eval.scales=[0.75,1.0,1.25] eval.flip=true" crf="eval.use_crf=true"

Outputs under ``--out`` (default bench/eval_variants), one folder per network and variant; rows
appended to <out>/rows.jsonl and printed as a markdown table. Reruns skip finished evaluations.

``--rescore NAME`` writes variant NAME's scores into the bench run's results.json (every DeepLab
figure, the ratio, the self-training round's DeepLab) and rewrites its report, saying so in it: for
when the evaluation's defaults change after a benchmark whose networks stay valid.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import msrc  # noqa: E402

RUN_NAME = re.compile(r"^gt(?P<percentage>\d+)(?:_seed(?P<seed>\d+))?$")
# the self-training round's DeepLab: gt_percentage 0, seed 0, its own labels
SELF_TRAINING = "selftrain"


def parse_variant(text: str) -> tuple[str, dict]:
    # not the split: the scores are always MSRC val's
    return msrc.parse_variant(text, ("eval.",), "an eval setting this benchmark varies", refused=("eval.split",))


def trained_runs(folder: Path) -> list[tuple[str, int, int]]:
    """(name, gt_percentage, seed) of each DeepLab a bench profile folder trained, gt0 first."""
    runs = []
    for path in sorted(folder.iterdir()):
        match = RUN_NAME.match(path.name)
        if not (path / "checkpoints" / "deeplab").is_dir():
            continue
        if match:
            runs.append((path.name, int(match["percentage"]), int(match["seed"] or 0)))
        elif path.name == SELF_TRAINING:
            runs.append((path.name, 0, 0))
    return sorted(runs, key=lambda run: (run[0] == SELF_TRAINING, run[1], run[2]))


def evaluate(args, run: tuple[str, int, int], name: str, settings: dict) -> dict:
    folder, percentage, seed = run
    source = msrc.build(args, Path(args.source), folder, {"deeplab.gt_percentage": percentage, "runtime.seed": seed})
    target = msrc.build(
        args,
        Path(args.out),
        f"{folder}__{name}",
        {"deeplab.gt_percentage": percentage, "runtime.seed": seed, "eval.overlays": 0, **settings},
    )
    msrc.share_checkpoints(source, target, ("deeplab",))
    summary = msrc.run_variant(target, ["eval_deeplab"])["eval_deeplab"]
    return {
        "mIoU": summary["mIoU"],
        "pixel_accuracy": summary.get("pixel_accuracy"),
        "per_class_IoU": summary.get("per_class_IoU"),
        "seconds": summary["seconds"],
        "evaluation": msrc.evaluation_settings(target),
    }


def summarise(row: dict) -> None:
    """Means over seeds of gt0 and gt100 and the weak/full ratio (mean of the per-seed ratios), as
    the benchmark's report computes them."""
    seeds: dict[str, dict] = {}
    for folder, result in row["networks"].items():
        match = RUN_NAME.match(folder)
        if match and match["percentage"] in ("0", "100"):
            key = "weak" if match["percentage"] == "0" else "full"
            seeds.setdefault(match["seed"] or "0", {})[key] = result["mIoU"]
    summary = msrc.seed_summary({"seeds": seeds})
    row.update({key: summary[key] for key in ("weak_mean", "full_mean", "ratio_mean")})


def table(rows: list[dict]) -> str:
    networks = list(rows[0]["networks"]) if rows else []
    head = ["variant", *networks, "pseudo labels: mean", "real masks: mean", "weak/full", "seconds per network"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        settings = " ".join(f"{k}={v}" for k, v in row["settings"].items()) or "preset"
        seconds = [result["seconds"] for result in row["networks"].values()]
        cells = [f"{row['variant']} ({settings})"]
        cells += [f"{row['networks'][n]['mIoU']:.4f}" for n in networks]
        cells += [msrc._f(row["weak_mean"], 4), msrc._f(row["full_mean"], 4), msrc._f(row["ratio_mean"], 3)]
        cells.append(f"{sum(seconds) / len(seconds):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rescore(results: dict, row: dict, command: str) -> dict:
    """``results`` (a bench run's results.json) with every DeepLab figure replaced by ``row``'s."""
    for folder, result in row["networks"].items():
        scores = {k: result[k] for k in ("mIoU", "pixel_accuracy", "per_class_IoU")}
        if folder == SELF_TRAINING:
            if "self_training" in results:
                results["self_training"].update(deeplab_mIoU=result["mIoU"], per_class_IoU=result["per_class_IoU"])
            continue
        match = RUN_NAME.match(folder)
        percentage, seed = match["percentage"], match["seed"] or "0"
        if seed == "0" and percentage in results.get("gt_percentage", {}):
            results["gt_percentage"][percentage].update(scores)
            if percentage == "0":
                results["base"]["eval_deeplab"].update(scores)
        pair = results.get("seeds", {}).get(seed)
        if pair is not None and percentage in ("0", "100"):
            key = "weak" if percentage == "0" else "full"
            pair.update({key: result["mIoU"], f"{key}_per_class": result["per_class_IoU"]})
    if results.get("seeds"):
        summary = msrc.seed_summary(results)
        results["weak_over_full"] = summary["ratio_mean"]
        results["weak_over_full_of_means"] = summary["ratio_of_means"]
    for ablation in (results.get("ablations") or {}).values():
        if ablation.get("default"):
            ablation["deeplab_mIoU"] = results["base"]["eval_deeplab"]["mIoU"]
    per_class = results["gt_percentage"]["0"].get("per_class_IoU") or {}
    for worst in results.get("worst_classes") or []:  # the sheet's classes stay those it shows
        worst["IoU"] = per_class.get(worst["name"], worst["IoU"])
    results["evaluation"] = next(iter(row["networks"].values()))["evaluation"]
    results["rescored"] = {"date": time.strftime("%Y-%m-%d"), "command": command, "variant": row["variant"]}
    return results


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help='name="eval.key=value ..." (name= for the preset)')
    parser.add_argument("--shared", default=str(msrc.PROJECT.parent / "shared"))
    parser.add_argument("--from", dest="source", default="bench/msrc/full", help="a make bench profile folder")
    parser.add_argument("--out", default="bench/eval_variants")
    parser.add_argument("--profile", choices=sorted(msrc.PROFILES), default="full", help="the bench run's profile")
    parser.add_argument("--rescore", default="", help="write this variant's scores into the run's report")
    parser.add_argument("--docs", default=str(msrc.PROJECT / "docs"), help="where --rescore writes the report")
    args = parser.parse_args(argv)
    args.overrides = []
    args.source = str(Path(args.source).resolve())
    runs = trained_runs(Path(args.source))
    if not runs:
        parser.error(f"--from {args.source}: no gt<N>[_seed<M>]/checkpoints/deeplab there; run make bench first")
    variants = [parse_variant(text) for text in args.variants]
    if args.rescore and args.rescore not in [name for name, _ in variants]:
        parser.error(f"--rescore {args.rescore}: not one of the variants given")
    rows = []
    for name, settings in variants:
        row = {"variant": name, "settings": settings, "networks": {}}
        for run in runs:
            row["networks"][run[0]] = evaluate(args, run, name, settings)
        summarise(row)
        rows.append(row)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "rows.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
    print(table(rows))
    if args.rescore:
        results_path = Path(args.source) / "results.json"
        results = json.loads(results_path.read_text())
        row = next(row for row in rows if row["variant"] == args.rescore)
        command = "python -m benchmarks.eval_variants " + shlex.join(argv if argv is not None else sys.argv[1:])
        msrc.write_report(args, Path(args.source), rescore(results, row, command))
        print(f"rescored {results_path} with {args.rescore}; report in {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli())
