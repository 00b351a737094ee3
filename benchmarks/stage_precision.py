"""The per-image stages at each precision and memory format: images per second and what each
computes, on MSRC.

CREATE_SALIENCY, CREATE_ATTENTION and EVAL_DEEPLAB run as main.py runs them (data loading, the
network under ``runtime.autocast``, everything after it in float32, the files written), on the
networks a ``make bench`` run trained (``--from``, default bench/msrc/full/gt0), once per precision
per round; the precisions take turns, so a machine that slows down during the run slows both.
Each run writes into its own folder under ``--out`` and reads the base run's upstream outputs.

    python -m benchmarks.stage_precision                    # fp32 vs bf16, 2 rounds
    python -m benchmarks.stage_precision --rounds 3 --precisions fp32,bf16
    python -m benchmarks.stage_precision --precisions fp32 --memory-formats contiguous,channels_last \
        --stages create_attention,eval_deeplab --set "attention.scales=[1.0]" --set attention.flip=false

Every (precision, memory format) pair is one variant. Prints a markdown table (median images/s,
the speed-up over the first variant, and each stage's
own score: dataset max F of the saliency maps, the CAM seed mIoU, DeepLab's val mIoU) and writes it
as JSON to <out>/stage_precision.json. The scores show whether the cheaper arithmetic changes the
outputs, not whether the trainings would reach the same networks at that precision.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import msrc  # noqa: E402

# stage -> (upstream tmp/ folders it reads, checkpoint folders it reads, its score in the summary)
STAGES = {
    "create_saliency": ((), ("saliency",), "dataset_max_F"),
    "create_attention": ((), ("classifier",), "seed_mIoU"),
    "eval_deeplab": ((), ("deeplab",), "mIoU"),
}


def count_images(summary: dict, stage: str, cfg) -> int:
    """Images the stage processed (its summary names them, or the splits it covers)."""
    if "images" in summary:
        return int(summary["images"])
    import datasets

    return sum(len(datasets.build(cfg, split).ids) for split in cfg.attention.splits)


def run_once(args, base, stage: str, variant: tuple[str, str], round_index: int) -> dict:
    folders, checkpoints, score = STAGES[stage]
    precision, memory_format = variant
    name = f"{stage}_{precision}_{memory_format}_{round_index}"
    shutil.rmtree(Path(args.out) / name, ignore_errors=True)
    cfg = msrc.build(
        args, Path(args.out), name, {"runtime.precision": precision, "runtime.memory_format": memory_format}
    )
    msrc.share_outputs(base, cfg, folders)
    msrc.share_checkpoints(base, cfg, checkpoints)
    summary = msrc.main.run_stages(cfg, [stage])[stage]
    images = count_images(summary, stage, cfg)
    return {
        "seconds": summary["seconds"],
        "images": images,
        "images_per_second": images / summary["seconds"],
        "score": summary.get(score),
    }


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(msrc.PROJECT.parent / "shared"))
    parser.add_argument(
        "--from", dest="base", default="bench/msrc/full/gt0", help="a make bench run folder (its checkpoints/ and tmp/)"
    )
    parser.add_argument("--out", default="bench/stage_precision")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument(
        "--memory-formats",
        default="contiguous",
        help="runtime.memory_format values (default contiguous: precisions compared in one layout)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    args = parser.parse_args(argv)
    args.profile = "full"
    varied = [o for o in args.overrides if o.split("=", 1)[0] in ("runtime.precision", "runtime.memory_format")]
    if varied:
        parser.error(f"--set {varied[0]}: use --precisions / --memory-formats, which name each variant")
    if "auto" in args.memory_formats.split(","):
        parser.error("--memory-formats auto: name the formats (contiguous, channels_last)")
    base_folder = Path(args.base).resolve()
    if not (base_folder / "checkpoints").is_dir():
        parser.error(f"--from {args.base}: no checkpoints/ there; run make bench first")
    base = msrc.build(args, base_folder.parent, base_folder.name, {})
    variants = [(p, m) for p in args.precisions.split(",") for m in args.memory_formats.split(",")]
    stages = args.stages.split(",")
    runs: dict = {stage: {v: [] for v in variants} for stage in stages}
    for round_index in range(args.rounds):
        for stage in stages:
            for variant in variants:
                runs[stage][variant].append(run_once(args, base, stage, variant, round_index))
    table = [
        "| stage | precision | memory format | images | images/s (median) | speed-up | score |",
        "|---|---|---|---|---|---|---|",
    ]
    results = {"rounds": args.rounds, "base": str(args.base), "overrides": args.overrides, "stages": {}}
    for stage in stages:
        first = statistics.median(r["images_per_second"] for r in runs[stage][variants[0]])
        results["stages"][stage] = {}
        for variant in variants:
            rows = runs[stage][variant]
            speed = statistics.median(r["images_per_second"] for r in rows)
            scores = [r["score"] for r in rows]
            results["stages"][stage]["_".join(variant)] = {
                "images_per_second": speed,
                "speedup": speed / first,
                "runs": rows,
            }
            score_text = ", ".join("-" if s is None else f"{s:.4f}" for s in scores)
            table.append(
                f"| {stage} | {variant[0]} | {variant[1]} | {rows[0]['images']} | {speed:.1f} | {speed / first:.2f}x | "
                f"{STAGES[stage][2]} {score_text} |"
            )
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage_precision.json").write_text(json.dumps({**results, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli())
