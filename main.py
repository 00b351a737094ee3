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
from common.stages import NAMES, STAGES
from common.stages import get as get_stage

STAGE_NAMES = list(NAMES)


def flagged_stages() -> list[str]:
    return [stage.name for stage in STAGES if globals()[stage.flag]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages, in order:\n  "
        + "\n  ".join(STAGE_NAMES)
        + "\n\npresets:\n"
        + config_module.preset_help()
        + "\n\nsettings (--set SECTION.KEY=VALUE or SECTION.GROUP.KEY=VALUE; lists as a,b,c):\n"
        + config_module.settings_help()
        + "\n\nexample: python main.py --preset demo --stages train_seed,create_attention "
        "--set classifier.steps=200",
    )
    parser.add_argument("--stages", default=None, help="comma-separated stages to run instead of the flags in main.py")
    parser.add_argument("--preset", default="demo", choices=list(config_module.PRESETS))
    parser.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help="start from a saved config.json (e.g. runs/config.json) instead of a preset",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable)",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error instead of its one-line message"
    )
    return parser.parse_args(argv)


def select_stages(text: str | None) -> list[str]:
    if text is None:
        return flagged_stages()
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGE_NAMES]
    if unknown:
        raise config_module.ConfigError(f"--stages: unknown {', '.join(unknown)} (stages: {', '.join(STAGE_NAMES)})")
    return [s for s in STAGE_NAMES if s in wanted]


def data_splits(cfg, stages: list[str]) -> list[str]:
    """The splits the selected stages read ("train"/"val" mean the configured training and
    validation splits, as datasets.build takes them)."""
    wanted: list[str] = []
    if {"train_seed", "train_deeplab", "create_saliency"} & set(stages):
        wanted += ["train", "val"]
    if "create_attention" in stages:
        wanted += list(cfg.attention.splits)
    if "create_guide" in stages:
        wanted += list(cfg.guide.splits)
    if "eval_deeplab" in stages:
        wanted.append(cfg.eval.split)
    return list(dict.fromkeys(wanted))


def check_data(cfg, stages: list[str]) -> dict:
    """The data check (datasets/check.py) over every split the stages read: stops with the full list
    of problems, or with ``dataset.on_bad_image=skip`` lists the dropped images in runs/."""
    from common.layout import Layout
    from datasets import check

    splits = data_splits(cfg, stages)
    if not splits:
        return {}
    started = time.time()
    result = check.check_data(cfg, splits)
    check.write_report(result, Layout(cfg).data_check())
    dropped = check.enforce(cfg, result)
    count = sum(len(ids) for ids in dropped.values()) if isinstance(dropped, dict) else len(dropped or ())
    print(
        f"data check: {len(result.problems)} problems in {time.time() - started:.1f} s"
        + (f"; {count} images skipped (listed in {Layout(cfg).data_check()})" if count else ""),
        flush=True,
    )
    return {"skipped_images": count}


def preflight(cfg, stages: list[str]) -> dict:
    """Everything that can refuse a run before any work: the data check, each stage's own checks,
    and the inputs that earlier stages must have made."""
    from common import provenance

    if cfg.dataset.kind == "synthetic" and stages:
        from datasets import synthetic

        synthetic.ensure_generated(cfg)
    for stage in stages:
        check = getattr(importlib.import_module(get_stage(stage).module), "preflight", None)
        if check is not None:
            check(cfg, stages)
    provenance.check_inputs(cfg, stages)
    return check_data(cfg, stages) if stages else {}


# the stage now running, named in the one-line message of an error it raises
_running: dict = {"stage": None}


def describe_arithmetic(cfg) -> str:
    """One line: the device, precision and memory format a run uses (resolved), and why a CPU runs
    fp32: the benchmark's stages took 2-2.7x as long on such a CPU as on the AVX512-BF16 kind at
    bf16 before channels_last (the quick profile: 13.3 against 6.5 min since; docs/RESULTS.md),
    which is worth knowing before reading any wall time."""
    from common.runtime import select_device

    runtime = cfg.runtime
    device = select_device(runtime.device)
    line = f"device {device}, precision {runtime.precision}, memory format {runtime.memory_format}"
    if device.type == "cpu" and runtime.precision == "fp32" and not config_module.cpu_has_native_bf16():
        line += " (this CPU has no native bf16, so fp32: expect about twice the wall times of an AVX512-BF16 CPU)"
    return line


def run_stages(cfg, stages: list[str]) -> dict[str, dict]:
    """Run ``stages`` in pipeline order; returns each stage's summary and wall time. Under torchrun
    every process runs every stage (each takes its share); rank 0 alone keeps the records."""
    from common import board, distributed, files, provenance
    from common.errors import InputError
    from common.layout import Layout
    from common.runtime import seed_everything, select_device

    # the backend follows the configured device (NCCL for CUDA, gloo for the CPU), not the machine
    distributed.init_process_group_if_needed(select_device(cfg.runtime.device))
    layout = Layout(cfg)
    if distributed.is_main():
        files.write_text(layout.runs / "config.json", cfg.to_json())
        print(describe_arithmetic(cfg), flush=True)
    summaries: dict[str, dict] = {}
    for stage in stages:
        _running["stage"] = stage
        seed_everything(cfg.runtime.seed)
        print(f"\n=== {stage} ===", flush=True)
        started = time.time()
        failure = None
        if distributed.is_main():
            try:
                provenance.begin(cfg, stage)
            except Exception as error:  # told to every process below, then raised here as it came
                failure = error
        # a broadcast, not a barrier: the other processes must learn that rank 0 stopped, not wait for it
        stopped = distributed.broadcast_object(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if stopped is not None:
            raise InputError(f"process 0 stopped before this stage: {stopped}")
        summary = importlib.import_module(get_stage(stage).module).run(cfg) or {}
        distributed.barrier()
        summary["seconds"] = round(time.time() - started, 1)
        summaries[stage] = summary
        if distributed.is_main():
            provenance.finish(cfg, stage)
            board.write_hparams(cfg, stage, summary)
        print(f"=== {stage} done in {summary['seconds']:.0f} s", flush=True)
    _running["stage"] = None
    return summaries


def summary_table(summaries: dict[str, dict], data_report: dict | None = None) -> str:
    lines = ["| stage output | value | seconds |", "|---|---|---|"]
    for stage in STAGES:
        for key, label in stage.table:
            value = summaries.get(stage.name, {}).get(key)
            if isinstance(value, (int, float)) and not math.isnan(value):
                lines.append(f"| {label} | {value:.3f} | {summaries[stage.name]['seconds']:.0f} |")
    for name, summary in summaries.items():
        if not any(key in summary for key, _ in get_stage(name).table):
            lines.append(f"| {name} | (no score) | {summary['seconds']:.0f} |")
    if data_report and data_report.get("skipped_images"):
        lines.append(f"| images skipped by the data check (runs/data_check.json) | {data_report['skipped_images']} | |")
    return "\n".join(lines)


def user_errors() -> tuple[type, ...]:
    """Errors a user can cause and fix (a setting, a file, an earlier stage to run): printed as one
    line naming the stage and the file, not as a traceback."""
    from common import provenance

    kinds: list[type] = [config_module.ConfigError, OSError, provenance.StaleOutputs]
    for module, name in (
        ("datasets.check", "DataError"),
        ("common.training", "TrainingError"),
        ("common.errors", "InputError"),
    ):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    errors = user_errors()
    stage = "configuration"
    _running["stage"] = None
    try:
        stages = select_stages(args.stages)
        if args.config:
            cfg = config_module.load_config(args.config, args.overrides)
        else:
            cfg = config_module.build_config(args.preset, args.overrides)
        config_module.validate(cfg, stages)
        stage = "preflight"
        data_report = preflight(cfg, stages)
        if not stages:
            print("no stage selected: switch a flag on in main.py or pass --stages")
            return 0
        stage = "run"
        summaries = run_stages(cfg, stages)
    except errors as err:
        if args.traceback:
            raise
        print(f"error ({_running['stage'] or stage}): {err}", file=sys.stderr)
        return 2
    from common import distributed, files
    from common.layout import Layout

    table = summary_table(summaries, data_report)
    if distributed.is_main():
        print("\n" + table)
        runs = Layout(cfg).runs
        files.write_text(runs / "summary.md", table + "\n")
        files.write_text(
            runs / "summary.json", json.dumps({**summaries, "data_check": data_report}, indent=2, default=float)
        )
    distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
