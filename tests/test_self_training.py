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


def _fake_finished_stage(cfg, stage: str, path_of, corner, class_id: int, version: str) -> None:
    """A finished ``stage`` whose label maps (at ``path_of(layout, id)``) are the training masks
    with the square ``corner`` painted ``class_id``."""
    layout = Layout(cfg)
    image_set = datasets.build(cfg, "train")
    for image_id in image_set.ids:
        label = image_set.mask(image_id).copy()
        label[label == 255] = 0
        label[corner] = class_id
        files.write_label_png(path_of(layout, image_id), label)
    files.write_text(
        layout.record(BY_NAME[stage]),
        json.dumps({"stage": stage, "inputs": {"version": version}, "complete": True}),
    )


def _fake_predict_run(cfg, stray_class: int, version: str = "a") -> None:
    """A finished EVAL_DEEPLAB on the training split: a square of ``stray_class`` (a class most
    images are not tagged with) in each prediction's top-left corner."""
    _fake_finished_stage(cfg, "eval_deeplab", Layout.prediction, np.s_[:8, :8], stray_class, version)


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


def test_agreement_keeps_only_pixels_both_labels_give():
    prediction = np.array([[0, 1, 1], [2, 255, 0]], dtype=np.uint8)
    guide = np.array([[0, 1, 2], [2, 1, 1]], dtype=np.uint8)
    assert self_training.keep_agreement(prediction, guide).tolist() == [[0, 1, 255], [2, 255, 255]]
    with pytest.raises(ValueError, match="differ in size"):
        self_training.keep_agreement(prediction, guide[:, :2])


def _fake_guide_run(cfg, corner_class: int, version: str) -> None:
    """A finished CREATE_GUIDE: a square of ``corner_class`` in each label's bottom-right corner."""
    _fake_finished_stage(cfg, "create_guide", Layout.pseudo_label, np.s_[-8:, -8:], corner_class, version)


def test_labels_that_must_agree_with_the_guide(tiny_cfg):
    predict = tiny_cfg(**{"eval.split": "train", "paths.tmp": tiny_cfg().paths.tmp + "_predict"})
    guide = tiny_cfg(**{"paths.tmp": tiny_cfg().paths.tmp + "_guide"})
    retrain = tiny_cfg()
    _fake_predict_run(predict, stray_class=1)
    with pytest.raises(FileNotFoundError, match="run CREATE_GUIDE first"):
        self_training.write_labels(predict, retrain, agree_with=guide)
    _fake_guide_run(guide, corner_class=1, version="a")
    plain = self_training.write_labels(predict, tiny_cfg(**{"paths.tmp": tiny_cfg().paths.tmp + "_plain"}))
    agreed = self_training.write_labels(predict, retrain, agree_with=guide)
    layout = Layout(retrain)
    image_set = datasets.build(retrain, "train")
    tagged = next(i for i in image_set.ids if 1 in image_set.class_ids(i))
    label = files.read_label_png(layout.pseudo_label(tagged))
    mask = image_set.mask(tagged)
    # each corner: one label says class 1 and the other the mask's class; where they differ, ignore
    assert ((label[:8, :8] == 255) == (mask[:8, :8] != 1)).all()
    assert ((label[-8:, -8:] == 255) == (mask[-8:, -8:] != 1)).all()
    assert agreed["ignore_fraction"] > plain["ignore_fraction"] and agreed["precision"] >= plain["precision"]
    # the guide's labels are an input: new ones change the record
    digest = provenance.output_digest(retrain, "create_guide")
    _fake_guide_run(guide, corner_class=2, version="b")
    self_training.write_labels(predict, retrain, agree_with=guide)
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


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--base", "gt100"], "--base: 'gt100' is not a weakly supervised run"),
        (["--base", "gt0_seed7"], "gt0_seed7 does not exist"),
        (["--seeds", "0,x"], "--seeds"),
    ],
)
def test_the_command_line_names_a_bad_argument_before_any_work(tmp_path, capsys, argv, said):
    (tmp_path / "gt0").mkdir()
    with pytest.raises(SystemExit) as stopped:
        self_training.main_cli(["--from", str(tmp_path), "--shared", str(tmp_path), *argv])
    assert stopped.value.code == 2 and said in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt0"]  # nothing was made


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
    # fine-tuning the network that made the predictions, for a third of its steps
    tuning = self_training.retrain_settings(predict)
    assert tuning["deeplab.steps"] == 1 and tuning["deeplab.gt_percentage"] == 0
    assert tuning["deeplab.init_checkpoint"] == str(Layout(base).checkpoint("deeplab", "best").resolve())
    retrain = tiny_cfg(
        **{**small, **tuning},
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
    tuned = torch.load(Layout(retrain).checkpoint("deeplab", "last"), weights_only=False)
    assert tuned["step"] == 1 and tuned["extra"]["init_checkpoint"] == tuning["deeplab.init_checkpoint"]
