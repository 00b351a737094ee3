"""The per-image stages at each precision: images per second and what each computes, on MSRC.

CREATE_SALIENCY, CREATE_ATTENTION and EVAL_DEEPLAB run as main.py runs them (data loading, the
network under ``runtime.autocast``, everything after it in float32, the files written), on the
networks a ``make bench`` run trained (``--from``, default bench/msrc/full/gt0), once per precision
per round; the precisions take turns, so a machine that slows down during the run slows both.
Each run writes into its own folder under ``--out`` and reads the base run's upstream outputs.

    python -m benchmarks.stage_precision                    # fp32 vs bf16, 2 rounds
    python -m benchmarks.stage_precision --rounds 3 --precisions fp32,bf16

Prints a markdown table (median images/s, the speed-up over the first precision, and each stage's
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


def run_once(args, base, stage: str, precision: str, round_index: int) -> dict:
    folders, checkpoints, score = STAGES[stage]
    name = f"{stage}_{precision}_{round_index}"
    shutil.rmtree(Path(args.out) / name, ignore_errors=True)
    cfg = msrc.build(args, Path(args.out), name, {"runtime.precision": precision})
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
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args(argv)
    args.profile, args.overrides = "full", []
    base_folder = Path(args.base).resolve()
    if not (base_folder / "checkpoints").is_dir():
        parser.error(f"--from {args.base}: no checkpoints/ there; run make bench first")
    base = msrc.build(args, base_folder.parent, base_folder.name, {})
    precisions = args.precisions.split(",")
    stages = args.stages.split(",")
    runs: dict = {stage: {p: [] for p in precisions} for stage in stages}
    for round_index in range(args.rounds):
        for stage in stages:
            for precision in precisions:
                runs[stage][precision].append(run_once(args, base, stage, precision, round_index))
    table = ["| stage | precision | images | images/s (median) | speed-up | score |", "|---|---|---|---|---|---|"]
    results = {"rounds": args.rounds, "base": str(args.base), "stages": {}}
    for stage in stages:
        first = statistics.median(r["images_per_second"] for r in runs[stage][precisions[0]])
        results["stages"][stage] = {}
        for precision in precisions:
            rows = runs[stage][precision]
            speed = statistics.median(r["images_per_second"] for r in rows)
            scores = [r["score"] for r in rows]
            results["stages"][stage][precision] = {"images_per_second": speed, "speedup": speed / first, "runs": rows}
            score_text = ", ".join("-" if s is None else f"{s:.4f}" for s in scores)
            table.append(
                f"| {stage} | {precision} | {rows[0]['images']} | {speed:.1f} | {speed / first:.2f}x | "
                f"{STAGES[stage][2]} {score_text} |"
            )
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage_precision.json").write_text(json.dumps({**results, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli())
