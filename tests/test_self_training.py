"""The self-training round's boundary (benchmarks/self_training.py): predictions on the training
split become the next DeepLab's pseudo labels, filtered by the image-level tags, with a record the
provenance checks accept and that changes when the predictions do."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import datasets
from benchmarks import self_training
from common import files, provenance
from common.layout import Layout
from common.stages import BY_NAME


def test_filter_keeps_tagged_classes_and_background():
    prediction = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    assert self_training.filter_to_tags(prediction, [1, 3]).tolist() == [[0, 1, 255], [3, 255, 1]]
    assert self_training.filter_to_tags(prediction, []).tolist() == [[0, 255, 255], [255, 255, 255]]


def _fake_predict_run(cfg, stray_class: int, version: str = "a") -> None:
    """A finished EVAL_DEEPLAB on the training split: each prediction is the mask with a square of
    ``stray_class`` painted in its corner (a class most images are not tagged with)."""
    layout = Layout(cfg)
    image_set = datasets.build(cfg, "train")
    for image_id in image_set.ids:
        prediction = image_set.mask(image_id).copy()
        prediction[prediction == 255] = 0
        prediction[:8, :8] = stray_class
        files.write_label_png(layout.prediction(image_id), prediction)
    files.write_text(
        layout.record(BY_NAME["eval_deeplab"]),
        json.dumps({"stage": "eval_deeplab", "inputs": {"version": version}, "complete": True}),
    )


def test_labels_record_and_rerun(tiny_cfg):
    predict = tiny_cfg(**{"eval.split": "train", "paths.tmp": tiny_cfg().paths.tmp + "_predict"})
    retrain = tiny_cfg()
    _fake_predict_run(predict, stray_class=1)
    scores = self_training.write_labels(predict, retrain)
    layout = Layout(retrain)
    image_set = datasets.build(retrain, "train")
    untagged = next(i for i in image_set.ids if 1 not in image_set.class_ids(i))
    label = files.read_label_png(layout.pseudo_label(untagged))
    assert (label[:8, :8] == 255).all()  # the stray class where the image has no such tag: ignore
    tagged = next(i for i in image_set.ids if 1 in image_set.class_ids(i))
    assert (files.read_label_png(layout.pseudo_label(tagged))[:8, :8] == 1).all()
    assert 0 < scores["ignore_fraction"] < 0.5 and 0.5 < scores["mIoU"] <= 1.0
    # TRAIN_DEEPLAB's preflight and record accept the folder as CREATE_GUIDE's finished output
    digest = provenance.output_digest(retrain, "create_guide")
    from deeplab.data import label_sources

    sources, report = label_sources(retrain, image_set, layout)
    assert report["pseudo_images"] == len(image_set.ids) and not report["skipped_without_label"]
    # the same predictions: nothing rewritten, the same record
    stamp = os.stat(layout.pseudo_label(untagged)).st_mtime_ns
    assert self_training.write_labels(predict, retrain) == scores
    assert os.stat(layout.pseudo_label(untagged)).st_mtime_ns == stamp
    assert provenance.output_digest(retrain, "create_guide") == digest
    # new predictions: labels rewritten, and the record (so TRAIN_DEEPLAB's inputs) changes
    _fake_predict_run(predict, stray_class=2, version="b")
    self_training.write_labels(predict, retrain)
    assert provenance.output_digest(retrain, "create_guide") != digest


def test_refuses_what_is_not_train_predictions(tiny_cfg):
    predict = tiny_cfg(**{"eval.split": "train", "paths.tmp": tiny_cfg().paths.tmp + "_predict"})
    with pytest.raises(FileNotFoundError, match="run EVAL_DEEPLAB on the training split"):
        self_training.write_labels(predict, tiny_cfg())
    _fake_predict_run(predict, stray_class=1)
    os.remove(Layout(predict).prediction(datasets.build(predict, "train").ids[3]))
    with pytest.raises(FileNotFoundError, match="no prediction"):
        self_training.write_labels(predict, tiny_cfg())
    on_val = tiny_cfg(**{"paths.tmp": predict.paths.tmp})
    with pytest.raises(ValueError, match="eval.split=train"):
        self_training.write_labels(on_val, tiny_cfg())


@pytest.mark.slow
def test_round_through_the_real_stages(tiny_cfg, tmp_path):
    """EVAL_DEEPLAB (train split, CRF) of a random-weight DeepLab in a linked checkpoints folder,
    the labels, then two TRAIN_DEEPLAB steps and EVAL_DEEPLAB on them, as benchmarks.msrc does."""
    import torch

    import main
    from benchmarks.msrc import share_checkpoints
    from common.checkpoint import save_training_state
    from deeplab.models import build_deeplab

    torch.set_num_threads(1)
    small = {
        "deeplab.steps": 2,
        "deeplab.val_every": 2,
        "deeplab.crop_size": 64,
        "deeplab.batch_size": 2,
        "deeplab.pretrained_backbone": False,
        "eval.overlays": 0,
        "runtime.device": "cpu",
    }
    base = tiny_cfg(**small, **{"paths.checkpoints": str(tmp_path / "base_checkpoints")})
    image_set = datasets.build(base, "train")
    model = build_deeplab(
        backbone="efficientnet_lite0", num_classes=image_set.num_classes + 1, pretrained_backbone=False
    )
    save_training_state(
        Layout(base).checkpoint("deeplab", "best"),
        model=model,
        extra={
            **model.describe(),
            "class_names": image_set.class_names,
            "gt_percentage": 0.0,
            "weakly_supervised": True,
            "not_weakly_supervised_because": [],
        },
    )
    predict = tiny_cfg(
        **{**small, **self_training.PREDICT_SETTINGS},
        **{
            "paths.tmp": str(tmp_path / "predict" / "tmp"),
            "paths.runs": str(tmp_path / "predict" / "runs"),
            "paths.checkpoints": str(tmp_path / "predict" / "checkpoints"),
        },
    )
    share_checkpoints(base, predict, ("deeplab",))
    evaluated = main.run_stages(predict, ["eval_deeplab"])["eval_deeplab"]
    assert evaluated["images"] == len(image_set.ids)
    retrain = tiny_cfg(
        **small,
        **{
            "paths.tmp": str(tmp_path / "retrain" / "tmp"),
            "paths.runs": str(tmp_path / "retrain" / "runs"),
            "paths.checkpoints": str(tmp_path / "retrain" / "checkpoints"),
        },
    )
    labels = self_training.write_labels(predict, retrain)
    assert labels["images"] == len(image_set.ids)
    summaries = main.run_stages(retrain, ["train_deeplab", "eval_deeplab"])
    assert summaries["train_deeplab"]["pseudo_images"] == len(image_set.ids)
    assert summaries["train_deeplab"]["weakly_supervised"] and 0 <= summaries["eval_deeplab"]["mIoU"] <= 1
