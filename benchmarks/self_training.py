"""One self-training round, at the boundary between stages: no stage changes.

1. A *predict* run evaluates the base run's DeepLab (its checkpoints/deeplab, linked) on the
   training split with the dense CRF (``PREDICT_SETTINGS``): tmp/deeplab/predictions/<id>.png,
   and its report scores them against the training masks.
2. :func:`write_labels` turns those predictions into a *retrain* run's pseudo labels
   (tmp/guide/labels/<id>.png, where TRAIN_DEEPLAB reads them, ``Layout.pseudo_label``): every
   pixel predicted as a class the image is not tagged with becomes ignore (255), so the image-level
   labels, the only supervision the pipeline has, correct the network's confusions instead of
   teaching them again. Background stays background. With ``agree_with`` (a run whose
   CREATE_GUIDE labels the base DeepLab learnt from), every pixel where the two labels differ
   becomes ignore too: what the network would not fit of the guide, and what the guide never
   said, are the pixels either of them is likeliest to have wrong.
3. The retrain run fine-tunes the predicting DeepLab on those labels (``deeplab.init_checkpoint``,
   a third of its steps, :func:`retrain_settings`) and evaluates it as usual. On MSRC val neither
   way wins over the base: trained anew from ImageNet 0.718 against the base's 0.748 (seed 0),
   fine-tuned 0.754 / 0.713 against 0.748 / 0.781 (seeds 0 / 1), at a third of the training time
   (docs/RESULTS.md).

Weak supervision holds: the predicting DeepLab learnt from pseudo labels only, the CRF uses the
image only, and the filter uses the image-level tags; training masks are read only to score.

Provenance (common/provenance.py): the retrain run's tmp/guide/record.json is written here, marked
complete, with inputs naming what the labels were made from (the predict run's EVAL_DEEPLAB record
and the filter's version), so TRAIN_DEEPLAB's own record changes, and it refuses to resume a
network trained on other labels, whenever the predictions change.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
from common import files, provenance  # noqa: E402
from common.layout import Layout  # noqa: E402
from common.metrics import IGNORE  # noqa: E402
from common.stages import BY_NAME  # noqa: E402

# EVAL_DEEPLAB on the training images, refined by the CRF; no overlay pictures
PREDICT_SETTINGS = {"eval.split": "train", "eval.use_crf": True, "eval.overlays": 0}
# bump when the way predictions become labels changes: the retrain run's record then changes
FILTER_VERSION = "untagged-classes-ignore/1"
AGREEMENT_VERSION = "disagreement-with-guide-ignore/1"
# the retrain run fine-tunes the predicting network for this share of its steps
FINE_TUNE_SHARE = 1 / 3


def retrain_settings(predict_cfg) -> dict:
    """The retrain run's DeepLab settings: pseudo labels only, starting from the checkpoint the
    predict run evaluated, for ``FINE_TUNE_SHARE`` of its steps (validated at each fifth)."""
    from deeplab.eval_deeplab import checkpoint_path

    steps = max(1, round(predict_cfg.deeplab.steps * FINE_TUNE_SHARE))
    return {
        "deeplab.gt_percentage": 0,
        "deeplab.init_checkpoint": str(checkpoint_path(predict_cfg).resolve()),
        "deeplab.steps": steps,
        "deeplab.val_every": max(1, steps // 5),
    }


def filter_to_tags(prediction: np.ndarray, class_ids) -> np.ndarray:
    """``prediction`` (H, W) class ids with every pixel of a class outside ``class_ids`` (and not
    background) set to ignore."""
    allowed = np.zeros(256, dtype=bool)
    allowed[0] = True
    allowed[IGNORE] = True
    allowed[list(class_ids)] = True
    label = np.asarray(prediction, dtype=np.uint8).copy()
    label[~allowed[label]] = IGNORE
    return label


def keep_agreement(label: np.ndarray, guide_label: np.ndarray) -> np.ndarray:
    """``label`` with every pixel where it differs from ``guide_label`` set to ignore."""
    if label.shape != guide_label.shape:
        raise ValueError(
            f"self-training: a prediction {label.shape} and its guide label {guide_label.shape} differ in size"
        )
    kept = label.copy()
    kept[label != guide_label] = IGNORE
    return kept


def _sha1(payload) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _complete_record(cfg, stage: str, what: str) -> dict:
    record = provenance.read_record(cfg, BY_NAME[stage])
    path = Layout(cfg).record(BY_NAME[stage])
    if record is None:
        raise FileNotFoundError(f"self-training: {path} is missing; {what}")
    if not record.get("complete"):  # an unreadable record reads as incomplete
        raise FileNotFoundError(f"self-training: {stage.upper()} did not finish ({path}); {what}")
    return record


def labels_inputs(predict_cfg, agree_with=None) -> dict:
    """What the labels are made from: the predict run's complete EVAL_DEEPLAB record (its inputs)
    and, with ``agree_with``, that run's complete CREATE_GUIDE record."""
    record = _complete_record(predict_cfg, "eval_deeplab", "run EVAL_DEEPLAB on the training split first")
    if predict_cfg.eval.split != "train":
        raise ValueError(
            f"self-training: the predict run evaluates eval.split={predict_cfg.eval.split!r}; "
            f"its predictions must be of the training split (eval.split=train)"
        )
    inputs = {"self_training_from": _sha1(record["inputs"]), "filter": FILTER_VERSION}
    if agree_with is not None:
        guide = _complete_record(agree_with, "create_guide", "run CREATE_GUIDE first")
        inputs.update(agree_with=_sha1(guide["inputs"]), agreement=AGREEMENT_VERSION)
    return inputs


def write_labels(predict_cfg, retrain_cfg, agree_with=None) -> dict:
    """Write the retrain run's pseudo labels from the predict run's predictions (module docstring;
    ``agree_with``: the config of the run whose guide labels they must agree with) and their
    record; returns the scores of the labels against the training masks (as CREATE_GUIDE reports
    them: mIoU, precision, recall, ignore_fraction, ...). A rerun with the same predictions rewrites
    nothing and returns the stored scores."""
    from guide.make_guide import Scores

    source, target = Layout(predict_cfg), Layout(retrain_cfg)
    stage = BY_NAME["create_guide"]
    record_path = target.record(stage)
    scores_path = target.runs / "self_training_labels.json"
    inputs = labels_inputs(predict_cfg, agree_with)
    if record_path.exists() and scores_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("complete") and record.get("inputs") == inputs:
            return json.loads(scores_path.read_text(encoding="utf-8"))
    folder = target.folder("guide")
    if folder.is_symlink():
        raise ValueError(
            f"self-training: {folder} links to another run's pseudo labels; the retrain run needs a folder of its own"
        )
    if folder.exists():
        shutil.rmtree(folder)
    provenance.record_made_elsewhere(retrain_cfg, stage.name, inputs, complete=False)
    guide = Layout(agree_with) if agree_with is not None else None
    image_set = datasets.build(retrain_cfg, "train")
    scores = Scores(image_set.class_names)
    missing = []
    for image_id in image_set.ids:
        prediction_path = source.prediction(image_id)
        if not prediction_path.exists():
            missing.append(image_id)
            continue
        label = filter_to_tags(files.read_label_png(prediction_path), image_set.class_ids(image_id))
        if guide is not None:
            label = keep_agreement(label, files.read_label_png(guide.pseudo_label(image_id)))
        files.write_label_png(target.pseudo_label(image_id), label)
        scores.update(label, image_set.mask(image_id) if image_set.has_mask(image_id) else None)
    if missing:
        raise FileNotFoundError(
            f"self-training: {len(missing)} training images have no prediction in "
            f"{source.prediction('x').parent} (e.g. {missing[0]}): EVAL_DEEPLAB must "
            f"segment the whole training split"
        )
    result = {k: v for k, v in scores.result().items() if k != "per_class"}
    files.write_text(scores_path, json.dumps(result, indent=2, default=float))
    provenance.record_made_elsewhere(retrain_cfg, stage.name, inputs)
    return result


def main_cli(argv=None) -> int:
    """Self-training rounds from a finished ``make bench`` run, at several seeds, with labels that
    keep only what the predictions and the guide agree on (``--agree-with-guide``) or the plain
    round's; one row per seed appended to <out>/rows.jsonl."""
    import argparse

    from benchmarks import msrc

    parser = argparse.ArgumentParser(prog="python -m benchmarks.self_training", description=main_cli.__doc__)
    parser.add_argument(
        "--from", dest="source", required=True, help="the bench run's profile folder, e.g. bench/s10/full"
    )
    parser.add_argument("--shared", default=str(msrc.PROJECT.parent / "shared"))
    parser.add_argument("--profile", choices=sorted(msrc.PROFILES), default="full")
    parser.add_argument(
        "--base",
        default="gt0",
        help="the run whose DeepLab predicts and is fine-tuned: gt0 (seed 0, as make bench) or gt0_seed1",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated runtime.seed values of the retrained DeepLabs")
    parser.add_argument("--agree-with-guide", action="store_true", help="pixels where the labels differ become ignore")
    parser.add_argument("--out", default="bench/self_training")
    args = parser.parse_args(argv)
    args.overrides = []
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError as err:
        parser.error(f"--seeds: {err}")
    source, out = Path(args.source), Path(args.out)
    match = re.fullmatch(r"gt0(?:_seed(\d+))?", args.base)
    if match is None:
        parser.error(f"--base: {args.base!r} is not a weakly supervised run of the benchmark (gt0, gt0_seed1, ...)")
    if not (source / args.base).is_dir():
        parser.error(f"--base: {source / args.base} does not exist")
    base = msrc.build(args, source, args.base, {"runtime.seed": int(match.group(1) or 0)})
    other_seed = "" if args.base == "gt0" else args.base.removeprefix("gt0_")  # "seed1"
    predict, _ = msrc.self_training_predictions(
        args, source, base, "selftrain_predict" + (f"_{other_seed}" if other_seed else "")
    )
    kind = "agreement" if args.agree_with_guide else "predictions"
    prefix = f"{other_seed}_" if other_seed else ""
    for seed in seeds:
        retrain = msrc.build(args, out, f"{prefix}{kind}_s{seed}", {**retrain_settings(predict), "runtime.seed": seed})
        msrc.share_outputs(base, retrain, ("saliency", "attention"))
        labels = write_labels(predict, retrain, agree_with=base if args.agree_with_guide else None)
        summary = msrc.run_variant(retrain, ["train_deeplab", "eval_deeplab"])
        row = {
            "base": args.base,
            "labels_from": kind,
            "seed": seed,
            "labels": labels,
            "mIoU": summary["eval_deeplab"]["mIoU"],
            "per_class": summary["eval_deeplab"].get("per_class_IoU"),
            "train_seconds": summary["train_deeplab"]["seconds"],
        }
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "rows.jsonl", "a", encoding="utf-8") as rows:
            rows.write(json.dumps(row, default=float) + "\n")
        print(
            f"{kind}, seed {seed}: labels {labels['mIoU']:.3f} (ignore {labels['ignore_fraction']:.3f}), "
            f"DeepLab {row['mIoU']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
