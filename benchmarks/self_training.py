"""One self-training round, at the boundary between stages: no stage changes.

1. A *predict* run evaluates the base run's DeepLab (its checkpoints/deeplab, linked) on the
   training split with the dense CRF (``PREDICT_SETTINGS``): tmp/deeplab/predictions/<id>.png,
   and its report scores them against the training masks.
2. :func:`write_labels` turns those predictions into a *retrain* run's pseudo labels
   (tmp/guide/labels/<id>.png, where TRAIN_DEEPLAB reads them, ``Layout.pseudo_label``): every
   pixel predicted as a class the image is not tagged with becomes ignore (255), so the image-level
   labels, the only supervision the pipeline has, correct the network's confusions instead of
   teaching them again. Background stays background.
3. The retrain run trains and evaluates DeepLab as usual.

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


def _sha1(payload) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def labels_inputs(predict_cfg) -> dict:
    """What the labels are made from: the predict run's complete EVAL_DEEPLAB record (its inputs)."""
    path = Layout(predict_cfg).record(BY_NAME["eval_deeplab"])
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"self-training: {path} is missing or unreadable ({err}); run EVAL_DEEPLAB on the training split first"
        ) from None
    if not record.get("complete"):
        raise FileNotFoundError(f"self-training: EVAL_DEEPLAB did not finish ({path})")
    if predict_cfg.eval.split != "train":
        raise ValueError(
            f"self-training: the predict run evaluates eval.split={predict_cfg.eval.split!r}; "
            f"its predictions must be of the training split (eval.split=train)"
        )
    return {"self_training_from": _sha1(record["inputs"]), "filter": FILTER_VERSION}


def write_labels(predict_cfg, retrain_cfg) -> dict:
    """Write the retrain run's pseudo labels from the predict run's predictions (module docstring)
    and their record; returns the scores of the labels against the training masks (as CREATE_GUIDE
    reports them: mIoU, precision, recall, ignore_fraction, ...). A rerun with the same predictions
    rewrites nothing and returns the stored scores."""
    from guide.make_guide import Scores

    source, target = Layout(predict_cfg), Layout(retrain_cfg)
    stage = BY_NAME["create_guide"]
    record_path = target.record(stage)
    scores_path = target.runs / "self_training_labels.json"
    inputs = labels_inputs(predict_cfg)
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
    image_set = datasets.build(retrain_cfg, "train")
    scores = Scores(image_set.class_names)
    missing = []
    for image_id in image_set.ids:
        prediction_path = source.prediction(image_id)
        if not prediction_path.exists():
            missing.append(image_id)
            continue
        label = filter_to_tags(files.read_label_png(prediction_path), image_set.class_ids(image_id))
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
