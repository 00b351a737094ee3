"""DeepLab training variants on the pseudo labels of a benchmark run, against full supervision.

Each variant is a name and deeplab.* / eval.* settings. For each seed, each variant's DeepLab
trains on the run's pseudo labels (gt_percentage 0, the profile's recipe plus the variant's
settings) and is scored on MSRC val by EVAL_DEEPLAB; with ``--full`` a DeepLab on every real mask
(gt_percentage 100, the profile's recipe) is trained once per seed beside them, so each variant
gets its weak/full ratio from trainings of the same code on the same machine.

    python -m benchmarks.deeplab_variants --from bench/s5/full/gt0 --seeds 0,1 --full \\
        base= ignore20="deeplab.ignore_hardest=0.2"
    python -m benchmarks.deeplab_variants --report-only --out bench/deeplab_variants

Outputs under ``--out`` (default bench/deeplab_variants), one folder per training; one row per
training appended to <out>/rows.jsonl (several processes may append to it, one per seed), and a
markdown table of them printed. Reruns skip finished trainings (their records match).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import msrc  # noqa: E402

FULL = "full supervision"


def parse_variant(text: str) -> tuple[str, dict]:
    return msrc.parse_variant(
        text, ("deeplab.", "eval."), "a deeplab or eval setting", refused=("deeplab.gt_percentage",)
    )


def train(args, name: str, seed: int, settings: dict) -> dict:
    """Train and score one DeepLab; its row."""
    percentage = 100 if name == FULL else 0
    folder = f"full_s{seed}" if name == FULL else f"{name}_s{seed}"
    cfg = msrc.build(
        args, Path(args.out), folder, {"deeplab.gt_percentage": percentage, "runtime.seed": seed, **settings}
    )
    if percentage < 100:
        msrc.share_outputs(args.source, cfg, ("saliency", "attention", "guide"))
    if cfg.deeplab.backbone_from_classifier:
        msrc.share_checkpoints(args.source, cfg, ("classifier",))
    summary = msrc.run_variant(cfg, ["train_deeplab", "eval_deeplab"])
    curve = msrc.stage_curves(cfg, "train_deeplab")
    return {
        "variant": name,
        "seed": seed,
        "settings": settings,
        "mIoU": summary["eval_deeplab"]["mIoU"],
        "per_class": summary["eval_deeplab"]["per_class_IoU"],
        "plateau": msrc.plateau(msrc.metric_curve(curve, "mIoU")) if curve else None,
        "train_seconds": summary["train_deeplab"]["seconds"],
        "eval_seconds": summary["eval_deeplab"]["seconds"],
    }


def table(rows: list[dict]) -> str:
    """One line per variant: mIoU per seed and their mean, and (where the seed's full-supervision
    DeepLab is there) the weak/full ratio per seed and the mean of those ratios."""
    latest = {(row["variant"], row["seed"]): row for row in rows}  # a rerun's row replaces the earlier one
    full = {seed: row["mIoU"] for (name, seed), row in latest.items() if name == FULL}
    names = list(dict.fromkeys(name for name, _ in latest))
    lines = [
        "| variant | mIoU per seed | mean | weak/full per seed | mean ratio | gain over the last 20 % |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(names, key=lambda n: n == FULL):
        seeds = sorted(seed for variant, seed in latest if variant == name)
        scores = [latest[(name, seed)]["mIoU"] for seed in seeds]
        ratios = [latest[(name, seed)]["mIoU"] / full[seed] for seed in seeds if seed in full and name != FULL]
        gains = [
            f"{latest[(name, seed)]['plateau']['gain']:+.3f}" if latest[(name, seed)].get("plateau") else "-"
            for seed in seeds
        ]
        mean_ratio = msrc._mean(ratios)
        lines.append(
            f"| {name} | "
            + " / ".join(f"s{seed} {score:.3f}" for seed, score in zip(seeds, scores))
            + f" | {msrc._mean(scores):.3f} | "
            + (" / ".join(f"{r:.3f}" for r in ratios) or "-")
            + f" | {'-' if mean_ratio is None else f'{mean_ratio:.3f}'} | {' / '.join(gains)} |"
        )
    return "\n".join(lines)


def read_rows(out: Path) -> list[dict]:
    path = out / "rows.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help='name="key=value key=value" (name= for the profile as it is)')
    parser.add_argument("--shared", default=str(msrc.PROJECT.parent / "shared"))
    parser.add_argument("--from", dest="base", default="bench/msrc/full/gt0", help="a benchmark run folder")
    parser.add_argument("--profile", choices=sorted(msrc.PROFILES), default="full")
    parser.add_argument("--out", default="bench/deeplab_variants")
    parser.add_argument("--seeds", default="0", help="comma-separated runtime.seed values")
    parser.add_argument("--full", action="store_true", help="also DeepLab on every real mask, per seed")
    parser.add_argument("--report-only", action="store_true", help="print the table of <out>/rows.jsonl")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.report_only:
        print(table(read_rows(out)))
        return 0
    try:
        variants = [parse_variant(text) for text in args.variants]
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError as err:
        parser.error(str(err))
    if not variants and not args.full:
        parser.error("name at least one variant, or --full")
    names = [name for name, _ in variants]
    for name in names:
        if name in ("full", FULL) or names.count(name) > 1:
            parser.error(f"variant name {name!r} is taken (full supervision, or another variant): choose another")
    if any(o.startswith("deeplab.gt_percentage") for o in args.overrides):
        parser.error("--set deeplab.gt_percentage: variants train on pseudo labels, --full on every mask")
    base_folder = Path(args.base).resolve()
    if not (base_folder / "tmp" / "guide" / "record.json").is_file():
        print(
            f"error: {base_folder / 'tmp' / 'guide'} holds no pseudo labels of a finished run (--from)", file=sys.stderr
        )
        return 2
    # the run's own config (msrc.build puts its tmp/ under the folder): what the variants link to
    args.source = msrc.build(args, base_folder.parent, base_folder.name, {"deeplab.gt_percentage": 0})
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        jobs = [*variants, *([(FULL, {})] if args.full else [])]
        for name, settings in jobs:
            row = train(args, name, seed, settings)
            with open(out / "rows.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(table(read_rows(out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
