"""Weakly supervised semantic segmentation from image-level labels, stage by stage.

Switch stages on or off below and run ``python main.py``; settings live in config.py.
Enabled stages run in pipeline order; each one reads its inputs from tmp/ and skips work already done.
"""
# ---- stages (pipeline order) -------------------------------------------------------------------
TRAIN_SALIENCY = True  # train PiCANet (skipped when saliency.checkpoint names a ready network)
CREATE_SALIENCY = True  # class-agnostic foreground probability per image
TRAIN_SEED = True  # multi-label classifier on image-level labels
CREATE_ATTENTION = True  # Grad-CAM per ground-truth class: raw maps + binary masks
CREATE_GUIDE = True  # saliency regions + class regions -> pseudo labels
TRAIN_DEEPLAB = True  # DeepLab on pseudo labels (or a percentage of real masks)
EVAL_DEEPLAB = True  # segment, score (mIoU) where masks exist, write predictions
# -------------------------------------------------------------------------------------------------

import argparse
import importlib
import json
import math
import sys
import time

import config as config_module

# flag name -> (stage name, module with run(cfg))
STAGES = {
    "TRAIN_SALIENCY": ("train_saliency", "saliency.train_saliency"),
    "CREATE_SALIENCY": ("create_saliency", "saliency.make_saliency"),
    "TRAIN_SEED": ("train_seed", "classifier.train_classifier"),
    "CREATE_ATTENTION": ("create_attention", "attention.make_cam"),
    "CREATE_GUIDE": ("create_guide", "guide.make_guide"),
    "TRAIN_DEEPLAB": ("train_deeplab", "deeplab.train_deeplab"),
    "EVAL_DEEPLAB": ("eval_deeplab", "deeplab.eval_deeplab"),
}
STAGE_NAMES = [name for name, _ in STAGES.values()]


def flagged_stages() -> list[str]:
    return [name for flag, (name, _) in STAGES.items() if globals()[flag]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages, in order:\n  " + "\n  ".join(STAGE_NAMES)
        + "\n\npresets:\n" + config_module.preset_help()
        + "\n\nexample: python main.py --preset demo --stages train_seed,create_attention "
          "--set classifier.steps=200")
    parser.add_argument("--stages", default=None,
                        help="comma-separated stages to run instead of the flags in main.py")
    parser.add_argument("--preset", default="demo", choices=list(config_module.PRESETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    return parser.parse_args(argv)


def select_stages(text: str | None) -> list[str]:
    if text is None:
        return flagged_stages()
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGE_NAMES]
    if unknown:
        raise config_module.ConfigError(f"--stages: unknown {', '.join(unknown)} "
                                        f"(stages: {', '.join(STAGE_NAMES)})")
    return [s for s in STAGE_NAMES if s in wanted]


def preflight(cfg, stages: list[str]) -> None:
    """Let every selected stage refuse to start (e.g. a missing network) before any work is done."""
    modules = {name: module for name, module in STAGES.values()}
    for stage in stages:
        check = getattr(importlib.import_module(modules[stage]), "preflight", None)
        if check is not None:
            check(cfg, stages)


def run_stages(cfg, stages: list[str]) -> dict[str, dict]:
    """Run ``stages`` in pipeline order; returns each stage's summary and wall time."""
    from common import files
    from common.layout import Layout
    from common.runtime import seed_everything

    layout = Layout(cfg)
    files.write_text(layout.runs / "config.json", cfg.to_json())
    summaries: dict[str, dict] = {}
    modules = {name: module for name, module in STAGES.values()}
    for stage in stages:
        seed_everything(cfg.runtime.seed)
        print(f"\n=== {stage} ===", flush=True)
        started = time.time()
        summary = importlib.import_module(modules[stage]).run(cfg) or {}
        summary["seconds"] = round(time.time() - started, 1)
        summaries[stage] = summary
        print(f"=== {stage} done in {summary['seconds']:.0f} s", flush=True)
    return summaries


# what the closing table shows: (stage, summary key, label)
TABLE_ROWS = [
    ("train_saliency", "max_F", "saliency max F (val)"),
    ("train_saliency", "MAE", "saliency MAE (val)"),
    ("train_seed", "mAP", "classifier mAP (val)"),
    ("create_attention", "seed_mIoU", "CAM seed mIoU (train)"),
    ("create_guide", "mIoU", "pseudo-label mIoU (train)"),
    ("train_deeplab", "val_mIoU", "DeepLab best val mIoU while training"),
    ("eval_deeplab", "mIoU", "DeepLab mIoU (val)"),
]


def summary_table(summaries: dict[str, dict]) -> str:
    lines = ["| stage output | value | seconds |", "|---|---|---|"]
    for stage, key, label in TABLE_ROWS:
        value = summaries.get(stage, {}).get(key)
        if isinstance(value, (int, float)) and not math.isnan(value):
            lines.append(f"| {label} | {value:.3f} | {summaries[stage]['seconds']:.0f} |")
    for stage, summary in summaries.items():
        if not any(row[0] == stage for row in TABLE_ROWS if row[1] in summary):
            lines.append(f"| {stage} | (no score) | {summary['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        stages = select_stages(args.stages)
        cfg = config_module.build_config(args.preset, args.overrides)
        config_module.validate(cfg, stages)
        preflight(cfg, stages)
    except (config_module.ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not stages:
        print("no stage selected: switch a flag on in main.py or pass --stages")
        return 0
    summaries = run_stages(cfg, stages)
    table = summary_table(summaries)
    print("\n" + table)
    from common import files
    from common.layout import Layout
    runs = Layout(cfg).runs
    files.write_text(runs / "summary.md", table + "\n")
    files.write_text(runs / "summary.json", json.dumps(summaries, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
