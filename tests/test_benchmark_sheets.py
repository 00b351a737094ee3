"""The worst-class picture sheet (benchmarks/sheets.py) on a tiny synthetic run's outputs, written
with the layout's own writers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import datasets
from benchmarks import sheets
from common import files
from common.layout import Layout


def test_worst_classes_skip_background_and_unscored():
    per_class = {
        "background": 0.1,
        "cow": 0.5,
        "dog": None,
        "face": 0.2,
        "sheep": float("nan"),
        "car": 0.3,
        "book": 0.9,
    }
    assert sheets.worst_classes(per_class, 3) == [("face", 0.2), ("car", 0.3), ("cow", 0.5)]
    assert sheets.worst_classes({"background": 0.4}, 3) == []


def _fake_outputs(cfg, without_prediction: str) -> None:
    """Saliency and CAMs for every image, pseudo labels (train) and predictions (val) equal to the
    masks, but no prediction for ``without_prediction``."""
    layout = Layout(cfg)
    for split in ("train", "val"):
        image_set = datasets.build(cfg, split)
        for image_id in image_set.ids:
            mask = image_set.mask(image_id)
            height, width = mask.shape
            layout.write_saliency(image_id, ((mask > 0) & (mask < 255)).astype(np.float32))
            classes = image_set.class_ids(image_id)
            small = (
                np.stack([np.full(((height + 3) // 4, (width + 3) // 4), 0.5, np.float32) for _ in classes])
                if classes
                else np.zeros((0, (height + 3) // 4, (width + 3) // 4), np.float32)
            )
            layout.write_cams(image_id, classes, small, (height, width))
            if split == "train":
                files.write_label_png(layout.pseudo_label(image_id), mask)
            elif image_id != without_prediction:
                files.write_label_png(layout.prediction(image_id), mask)


def test_sheet_rows_hold_the_class_and_their_outputs(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    val = datasets.build(cfg, "val")
    names = val.class_names[:3]
    # the val image where the first class covers most of the image has no prediction: never picked
    first = 1
    largest = max((i for i in val.ids if first in val.class_ids(i)), key=lambda i: np.mean(val.mask(i) == first))
    _fake_outputs(cfg, without_prediction=largest)
    path = tmp_path / "sheet.png"
    rows = sheets.draw(cfg, names, path, val_images=2, train_images=1)
    assert [r["class"] for r in rows if r["split"] == "val"].count(names[0]) == 2
    assert all(largest != r["id"] for r in rows)
    train = datasets.build(cfg, "train")
    for row in rows:
        image_set = val if row["split"] == "val" else train
        assert names.index(row["class"]) + 1 in image_set.class_ids(row["id"])
    assert {r["split"] for r in rows} == {"val", "train"} and len(rows) <= 9
    with Image.open(path) as picture:
        width, height = picture.size
    assert width == pytest.approx(80 * 1.6 * 6, abs=2)
    assert height == pytest.approx(80 * (1.2 * len(rows) + 0.3), abs=2)


def test_row_tiles_say_what_the_run_lacks(tiny_cfg):
    cfg = tiny_cfg()
    _fake_outputs(cfg, without_prediction="")
    layout = Layout(cfg)
    train = datasets.build(cfg, "train")
    image_id = next(i for i in train.ids if train.class_ids(i))
    class_id = train.class_ids(image_id)[0]
    image, saliency, cam, pseudo, prediction, truth = sheets.row_tiles(layout, train, image_id, class_id)
    assert prediction is None  # a training image has no DeepLab prediction in the base run
    assert np.array_equal(pseudo, files.colorize(train.mask(image_id))) and np.array_equal(truth, pseudo)
    assert cam.shape == image.shape and not np.array_equal(cam, image)
    absent = next(c for c in range(1, train.num_classes + 1) if c not in train.class_ids(image_id))
    assert sheets.row_tiles(layout, train, image_id, absent)[2] is None  # no CAM of an untagged class


def test_unknown_class_is_named(tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match="no class 'unicorn'"):
        sheets.draw(tiny_cfg(), ["unicorn"], tmp_path / "x.png")
