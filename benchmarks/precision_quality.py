"""The benchmark's base pipeline at another precision: does the arithmetic change what it learns?

Runs every stage of the ``msrc`` preset with the profile's training lengths (the first run of
``make bench``: saliency on DUTS, classifier, CAMs, pseudo labels, DeepLab on them at seed 0,
scored on MSRC val) at ``--precision``, in its own folder, and sets its numbers beside those of a
finished ``make bench`` run (``--compare``, its results.json), which ran at the other precision.

    python -m benchmarks.precision_quality --precision fp32      # against bench/msrc/full (bf16 here)

Writes <out>/<precision>/comparison.json and prints a markdown table. One seed each: differences
below the seeds' spread of the benchmark (about 0.02 in DeepLab mIoU) are noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import msrc  # noqa: E402
from common.stages import NAMES  # noqa: E402

# (stage, summary key, label)
ROWS = [
    ("train_saliency", "max_F", "saliency max F, DUTS val"),
    ("train_seed", "mAP", "classifier mAP, MSRC val"),
    ("create_attention", "seed_mIoU", "CAM seed mIoU, MSRC train"),
    ("create_guide", "mIoU", "pseudo-label mIoU, MSRC train"),
    ("eval_deeplab", "mIoU", "DeepLab on pseudo labels, MSRC val (seed 0)"),
]


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--compare", default="bench/msrc/full", help="a make bench output folder (results.json)")
    parser.add_argument("--profile", default="full", choices=sorted(msrc.PROFILES))
    parser.add_argument("--shared", default=str(msrc.PROJECT.parent / "shared"))
    parser.add_argument("--out", default="bench/precision_quality")
    args = parser.parse_args(argv)
    args.overrides = []
    reference = json.loads((Path(args.compare) / "results.json").read_text())
    saved = Path(args.compare) / "gt0" / "runs" / "config.json"
    other = json.loads(saved.read_text())["runtime"]["precision"] if saved.exists() else "reference"
    cfg = msrc.build(
        args, Path(args.out), args.precision, {"runtime.precision": args.precision, "deeplab.gt_percentage": 0}
    )
    summaries = msrc.run_variant(cfg, list(NAMES))  # every stage, in pipeline order
    rows = []
    for stage, key, label in ROWS:
        rows.append(
            {
                "measure": label,
                args.precision: summaries[stage].get(key),
                "reference": reference["base"][stage].get(key),
                "seconds": summaries[stage]["seconds"],
                "reference_seconds": reference["base"][stage].get("seconds"),
            }
        )
    lines = [f"| measure | {args.precision} | {other} ({args.compare}) |", "|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['measure']} | {row[args.precision]:.4f} ({row['seconds']:.0f} s) | "
            f"{row['reference']:.4f} ({row['reference_seconds']:.0f} s) |"
        )
    out = Path(args.out) / args.precision
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps({"rows": rows, "minutes": summaries["seconds"] / 60}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli())
