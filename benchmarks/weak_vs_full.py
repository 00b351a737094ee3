"""Weak against full supervision: the whole pipeline (DeepLab on pseudo labels, gt_percentage 0)
and DeepLab trained on every real mask (gt_percentage 100), same data, settings and seed.
Prints both final mIoUs and their ratio, and writes them to <out>/weak_vs_full.json.

    python -m benchmarks.weak_vs_full [--preset demo] [--out bench/weak_vs_full] [--set k=v ...]
    make bench-weak-full
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config as config_module  # noqa: E402
import main  # noqa: E402


def configured(preset: str, overrides: list[str], out: Path, name: str, extra: list[str]):
    cfg = config_module.build_config(preset, overrides + extra)
    cfg.paths.tmp = str(out / name / "tmp")
    cfg.paths.runs = str(out / name / "runs")
    cfg.paths.checkpoints = str(out / name / "checkpoints")
    return config_module.validate(cfg)


def run(preset: str, overrides: list[str], out: Path) -> dict:
    started = time.time()
    weak = configured(preset, overrides, out, "weak", ["deeplab.gt_percentage=0"])
    weak_summary = main.run_stages(weak, main.STAGE_NAMES)
    full = configured(preset, overrides, out, "full", ["deeplab.gt_percentage=100"])
    full_summary = main.run_stages(full, ["train_deeplab", "eval_deeplab"])
    result = {
        "preset": preset,
        "overrides": overrides,
        "weak_mIoU": weak_summary["eval_deeplab"]["mIoU"],
        "full_mIoU": full_summary["eval_deeplab"]["mIoU"],
        "pseudo_label_mIoU": weak_summary["create_guide"].get("mIoU"),
        "seconds": round(time.time() - started, 1),
        "stage_seconds": {
            **{f"weak/{k}": v["seconds"] for k, v in weak_summary.items()},
            **{f"full/{k}": v["seconds"] for k, v in full_summary.items()},
        },
    }
    result["weak_over_full"] = result["weak_mIoU"] / result["full_mIoU"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "weak_vs_full.json").write_text(json.dumps(result, indent=2))
    return result


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--out", default="bench/weak_vs_full")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    result = run(args.preset, args.overrides, Path(args.out).resolve())
    print(f"\nfinal mIoU, pseudo labels (gt_percentage 0): {result['weak_mIoU']:.3f}")
    print(f"final mIoU, all real masks (gt_percentage 100): {result['full_mIoU']:.3f}")
    print(f"weak/full ratio: {result['weak_over_full']:.3f}   ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
