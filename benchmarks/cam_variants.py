"""CAM and guide variants on the networks of a ``make bench`` run: pseudo labels, and DeepLab on them.

Each variant is a name and settings (attention.*, guide.*, saliency.threshold); it reruns
CREATE_ATTENTION (when it changes an attention setting) and CREATE_GUIDE on MSRC train with the base
run's saliency maps and classifier, and scores the pseudo labels against MSRC's masks. For classes
whose labels always come together (datasets/label_stats.py: MSRC's face with body), it also says how
well the CAMs tell their pixels apart: the AUC of CAM(a) - CAM(b) between the truth pixels of a and
of b (0.5: no better than chance). With ``--deeplab-seeds`` each variant's pseudo labels also train
a DeepLab (gt_percentage 0, the profile's recipe) per seed, scored on MSRC val.

    python -m benchmarks.cam_variants base= ms_flip="attention.scales=[0.5,1.0,1.5,2.0] attention.flip=true"
    python -m benchmarks.cam_variants --deeplab-seeds 0,1 ms_flip="attention.scales=[0.5,1,1.5,2] attention.flip=true"

Outputs under ``--out`` (default bench/cam_variants), one folder per variant; rows appended to
<out>/rows.jsonl and printed as a markdown table. Reruns skip finished stages (their records match).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
from benchmarks import msrc  # noqa: E402
from common.layout import Layout  # noqa: E402
from datasets.label_stats import companions, label_matrix  # noqa: E402

# the attention stage covers MSRC train only: the guide reads nothing else
BASE_SETTINGS = {"deeplab.gt_percentage": 0, "attention.splits": "[train]"}


def parse_variant(text: str) -> tuple[str, dict]:
    return msrc.parse_variant(
        text, ("attention.", "guide.", "saliency.threshold"), "an attention, guide or saliency.threshold setting"
    )


def separability(cfg, image_set, first: int, second: int) -> dict:
    """AUC of CAM(first) - CAM(second) separating the truth pixels of ``first`` from those of
    ``second``, per image holding both (masks and both labels), averaged."""
    from scipy.stats import mannwhitneyu

    layout = Layout(cfg)
    scores = []
    for image_id in image_set.ids:
        truth = image_set.mask(image_id)
        if truth is None or not ((truth == first).any() and (truth == second).any()):
            continue
        cams = layout.read_cams(image_id)
        ids = list(cams.class_ids)
        if first not in ids or second not in ids:
            continue
        maps = cams.upsampled()
        difference = maps[ids.index(first)] - maps[ids.index(second)]
        inside_first, inside_second = difference[truth == first], difference[truth == second]
        statistic = mannwhitneyu(inside_first, inside_second).statistic
        scores.append(statistic / (inside_first.size * inside_second.size))
    return {"images": len(scores), "auc": float(np.mean(scores)) if scores else None}


def run_variant(args, base, name: str, settings: dict) -> dict:
    cfg = msrc.build(args, Path(args.out), name, {**BASE_SETTINGS, **settings})
    msrc.share_outputs(base, cfg, ("saliency",))
    msrc.share_checkpoints(base, cfg, ("classifier",))
    redo_attention = any(key.startswith("attention.") for key in settings)
    if not redo_attention:
        msrc.share_outputs(base, cfg, ("attention",))
    summary = msrc.run_variant(cfg, (["create_attention"] if redo_attention else []) + ["create_guide"])
    guide = summary["create_guide"]
    report = json.loads((Layout(cfg).run_dir("create_guide") / "pseudo_labels_train.json").read_text())
    image_set = datasets.build(cfg, "train")
    row = {
        "variant": name,
        "settings": settings,
        "pseudo_mIoU": guide["mIoU"],
        "precision": guide["precision"],
        "recall": guide["recall"],
        "per_class": {k: v["IoU"] for k, v in report["per_class"].items()},
        "attention_seconds": summary.get("create_attention", {}).get("seconds"),
        "entangled": {},
    }
    names = ["background", *image_set.class_names]
    for pair in companions(label_matrix(image_set), image_set.class_names):
        row["entangled"][f"{pair.name}/{pair.partner}"] = separability(
            cfg, image_set, names.index(pair.name), names.index(pair.partner)
        )
    row["deeplab"] = {}
    for seed in args.deeplab_seeds:
        trained = msrc.build(
            args, Path(args.out), f"{name}_deeplab_s{seed}", {**BASE_SETTINGS, **settings, "runtime.seed": seed}
        )
        for stage in ("saliency", "attention", "guide"):
            msrc._link(Layout(trained).folder(stage), Layout(cfg).folder(stage).resolve())
        result = msrc.run_variant(trained, ["train_deeplab", "eval_deeplab"])
        row["deeplab"][str(seed)] = {
            "val_mIoU": result["eval_deeplab"]["mIoU"],
            "per_class": result["eval_deeplab"]["per_class_IoU"],
            "curve": msrc.stage_curves(trained, "train_deeplab"),
        }
    return row


def table(rows: list[dict]) -> str:
    pairs = sorted({pair for row in rows for pair in row["entangled"]})
    seeds = sorted({seed for row in rows for seed in row["deeplab"]})
    head = (
        ["variant", "pseudo mIoU (P / R)"]
        + [f"{p} IoU" for p in pairs]
        + [f"{p} AUC" for p in pairs]
        + [f"DeepLab seed {s}" for s in seeds]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            f"{row['variant']} ({' '.join(f'{k}={v}' for k, v in row['settings'].items()) or 'preset'})",
            f"{row['pseudo_mIoU']:.4f} ({row['precision']:.3f} / {row['recall']:.3f})",
        ]
        for pair in pairs:
            a, b = pair.split("/")
            cells.append(f"{row['per_class'].get(a, float('nan')):.3f} / {row['per_class'].get(b, float('nan')):.3f}")
        for pair in pairs:
            auc = row["entangled"].get(pair, {}).get("auc")
            cells.append("-" if auc is None else f"{auc:.3f}")
        cells += [f"{row['deeplab'][s]['val_mIoU']:.4f}" if s in row["deeplab"] else "-" for s in seeds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help='name="key=value key=value" (name= for the preset)')
    parser.add_argument("--shared", default=str(msrc.PROJECT.parent / "shared"))
    parser.add_argument("--from", dest="base", default="bench/msrc/full/gt0", help="a make bench run folder")
    parser.add_argument("--out", default="bench/cam_variants")
    parser.add_argument("--deeplab-seeds", default="", help="comma-separated seeds; empty: pseudo labels only")
    args = parser.parse_args(argv)
    args.profile, args.overrides = "full", []
    args.deeplab_seeds = [int(s) for s in args.deeplab_seeds.split(",") if s]
    base_folder = Path(args.base).resolve()
    if not (base_folder / "checkpoints" / "classifier").is_dir():
        parser.error(f"--from {args.base}: no checkpoints/classifier there; run make bench first")
    base = msrc.build(args, base_folder.parent, base_folder.name, {})
    rows = []
    for text in args.variants:
        name, settings = parse_variant(text)
        rows.append(run_variant(args, base, name, settings))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "rows.jsonl", "a") as handle:
            handle.write(json.dumps(rows[-1]) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli())
