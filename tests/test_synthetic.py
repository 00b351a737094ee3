"""The generated default data set: deterministic, exact, and hard to solve by colour alone."""
from __future__ import annotations

import os

import numpy as np
import pytest

import datasets
from common import files
from datasets import synthetic


def _cfg(make_cfg, root, **overrides):
    return make_cfg("demo", **{"dataset.root": str(root), "synthetic.num_train": 30, "synthetic.num_val": 6,
                               "synthetic.saliency_num_train": 6, "synthetic.saliency_num_val": 4, **overrides})


def test_deterministic_from_the_seed(make_cfg, tmp_path):
    a = synthetic.ensure_generated(_cfg(make_cfg, tmp_path / "a"))
    b = synthetic.ensure_generated(_cfg(make_cfg, tmp_path / "b"))
    c = synthetic.ensure_generated(_cfg(make_cfg, tmp_path / "c", **{"synthetic.seed": 7}))
    name = "SegmentationClass/syn_train_0003.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "JPEGImages/syn_train_0003.jpg").read_bytes() == (b / "JPEGImages/syn_train_0003.jpg").read_bytes()
    assert not np.array_equal(files.read_image(a / "JPEGImages/syn_train_0003.jpg"),
                              files.read_image(c / "JPEGImages/syn_train_0003.jpg"))


def test_second_call_is_a_no_op_and_new_settings_regenerate(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path / "s")
    root = synthetic.ensure_generated(cfg)
    probe = root / "JPEGImages" / "syn_train_0000.jpg"
    os.utime(probe, (1, 1))
    synthetic.ensure_generated(cfg)
    assert probe.stat().st_mtime == 1
    bigger = _cfg(make_cfg, tmp_path / "s", **{"synthetic.num_train": 31})
    synthetic.ensure_generated(bigger)
    assert probe.stat().st_mtime != 1
    assert len(datasets.build(bigger, "train")) == 31


def test_layout_labels_and_exact_masks(tiny_cfg):
    cfg = tiny_cfg()
    train, val = datasets.build(cfg, "train"), datasets.build(cfg, "val")
    assert (len(train), len(val)) == (48, 16)
    assert train.class_names == synthetic.CLASS_NAMES and len(synthetic.CLASS_NAMES) >= 5
    assert not set(train.ids) & set(val.ids)
    for image_id in train.ids:
        mask = train.mask(image_id)
        assert mask.shape == train.image(image_id).shape[:2] == train.image_size(image_id)
        present = set(np.unique(mask).tolist())
        assert present <= set(range(len(synthetic.CLASS_NAMES) + 1))  # exact: no 255 band
        assert train.class_ids(image_id) == sorted(present - {0})
        assert 128 <= min(mask.shape) and max(mask.shape) <= 160


def test_saliency_set_marks_every_object(tiny_cfg):
    cfg = tiny_cfg()
    train_dir, val_dir = synthetic.saliency_roots(cfg)
    masks = sorted((train_dir / "masks").glob("*.png"))
    assert len(masks) == 24 and len(list((val_dir / "images").glob("*.jpg"))) == 8
    values = set()
    for path in masks:
        values |= set(np.unique(files.read_label_png(path)).tolist())
    assert values == {0, 255}


def test_scene_statistics_meet_the_design():
    rng = np.random.default_rng(0)
    scenes = [synthetic.make_scene(rng, 128, 160) for _ in range(300)]
    classes = [set(np.unique(s.mask).tolist()) - {0} for s in scenes]
    assert np.mean([len(c) >= 2 for c in classes]) >= 0.30
    assert np.mean([s.touching for s in scenes]) >= 0.10
    assert np.mean([s.distractors > 0 for s in scenes]) >= 0.30
    assert 0 < np.mean([not c for c in classes]) < 0.2
    # distractors are salient but not a class: some salient pixels are background in the mask
    assert any((s.salient & (s.mask == 0)).any() for s in scenes if s.distractors)
    # every class pixel is salient
    assert all(not ((s.mask > 0) & ~s.salient).any() for s in scenes)


def test_classes_are_not_separable_by_colour():
    """Nearest class centroid on each object's mean RGB stays near chance (1/6); shape and texture
    carry the class. Held-out objects, centroids from the first half."""
    rng = np.random.default_rng(1)
    features, labels = [], []
    for _ in range(300):
        scene = synthetic.make_scene(rng, 128, 160)
        for class_id in set(np.unique(scene.mask).tolist()) - {0}:
            features.append(scene.image[scene.mask == class_id].mean(0))
            labels.append(class_id)
    features, labels = np.array(features), np.array(labels)
    half = len(labels) // 2
    centroids = np.stack([features[:half][labels[:half] == c].mean(0) for c in range(1, 7)])
    predicted = np.argmin(((features[half:, None] - centroids[None]) ** 2).sum(-1), 1) + 1
    accuracy = float((predicted == labels[half:]).mean())
    assert accuracy < 0.30, accuracy  # chance is 0.17; a colour-coded set would be near 1.0


def test_backgrounds_are_textured():
    rng = np.random.default_rng(2)
    for _ in range(20):
        scene = synthetic.make_scene(rng, 128, 160)
        grey = scene.image.astype(np.float32).mean(-1)
        background = ~scene.salient
        # not a flat colour: some channel varies well beyond the sensor noise (std ~4)
        assert scene.image[background].astype(np.float32).std(0).max() > 6.0
        gradient = np.abs(np.diff(grey, axis=1))[background[:, 1:]]
        assert gradient.mean() > 0.5
