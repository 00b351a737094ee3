"""A tiny TRAIN_SEED + CREATE_ATTENTION run on the synthetic set, resume and rerun skipping."""

from __future__ import annotations

import os

import numpy as np
import torch

import datasets
import main
from attention import make_cam
from classifier import train_classifier
from common.layout import Layout

TINY = {
    "classifier.steps": 6,
    "classifier.val_every": 3,
    "classifier.batch_size": 4,
    "classifier.crop_size": 64,
    "attention.batch_size": 4,
}


def test_train_seed_then_attention_writes_every_output(tiny_cfg):
    cfg = tiny_cfg(**TINY)
    summaries = main.run_stages(cfg, ["train_seed", "create_attention"])
    layout = Layout(cfg)
    assert layout.checkpoint("classifier", "best").exists() and layout.checkpoint("classifier", "last").exists()
    assert 0.0 <= summaries["train_seed"]["mAP"] <= 1.0
    assert (layout.run_dir("train_seed") / "config.json").exists()
    assert any(p.name.startswith("events") for p in layout.run_dir("train_seed").iterdir())
    for split in ("train", "val"):
        image_set = datasets.build(cfg, split)
        for image_id in image_set.ids:
            cams = layout.read_cams(image_id)
            class_ids = image_set.class_ids(image_id)
            height, width = image_set.image_size(image_id)
            assert cams.class_ids.tolist() == class_ids  # the class ids travel inside the file
            assert cams.image_size == (height, width)
            assert cams.cams.shape == (len(class_ids), -(-height // 4), -(-width // 4))
            if len(class_ids):
                assert cams.cams.max() <= 1.0 and cams.cams.min() >= 0.0
                peaks = cams.cams.reshape(len(class_ids), -1).max(1)
                # normalised per map: peak 1, or an all-zero map where the class found no evidence
                assert np.all(np.isclose(peaks, 1.0, atol=1e-3) | (peaks == 0))
            for class_id, upsampled in zip(class_ids, cams.upsampled()):
                mask = layout.read_cam_mask(image_id, class_id)
                assert mask.shape == (height, width)
                assert np.array_equal(mask, upsampled >= cfg.attention.threshold)
    seed = summaries["create_attention"]
    assert 0.0 < seed["seed_mIoU"] <= 1.0
    assert seed["best_threshold"] in cfg.attention.seed_thresholds
    # storage: float16 at 1/4 resolution, far below float32 full-resolution maps per class
    image_set = datasets.build(cfg, "train")
    stored = sum(layout.cams(i).stat().st_size for i in image_set.ids)
    float32_full = sum(4 * np.prod(image_set.image_size(i)) * len(image_set.class_ids(i)) for i in image_set.ids)
    assert stored < float32_full / 10


def test_rerun_skips_finished_items_and_resumes_training(tiny_cfg):
    cfg = tiny_cfg(**TINY)
    main.run_stages(cfg, ["train_seed", "create_attention"])
    layout = Layout(cfg)
    image_set = datasets.build(cfg, "train")
    done = layout.cams(image_set.ids[0])
    os.utime(done, (1, 1))
    missing = layout.cams(image_set.ids[1])
    missing.unlink()
    summary = make_cam.run(cfg)
    assert done.stat().st_mtime == 1  # finished image untouched
    assert missing.exists()  # the missing one recomputed
    assert summary["seed_mIoU"] > 0
    # training already finished: a rerun trains nothing and reports the stored best
    before = layout.checkpoint("classifier", "last").stat().st_mtime
    again = train_classifier.run(cfg)
    assert layout.checkpoint("classifier", "last").stat().st_mtime == before
    # asking for more steps resumes from the last step instead of starting over
    cfg.classifier.steps = 9
    state_before = torch.load(layout.checkpoint("classifier", "last"), weights_only=False)
    assert state_before["step"] == 6
    train_classifier.run(cfg)
    state_after = torch.load(layout.checkpoint("classifier", "last"), weights_only=False)
    assert state_after["step"] == 9 and again["steps"] == 6
