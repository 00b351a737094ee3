"""The guide's rules on hand-made arrays, and the stage over files in tmp/."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import datasets
from common import files
from common.layout import Layout
from guide import make_guide
from guide.rules import IGNORE, GuideParams, make_pseudo_label

H, W = 40, 60


def blank():
    return np.full((H, W, 3), 128, np.uint8), np.zeros((H, W), np.float32)


def rect(y0, y1, x0, x1):
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_salient_region_with_one_class_takes_it_whole():
    image, saliency = blank()
    saliency[5:30, 5:30] = 0.9
    class_masks = {3: rect(10, 20, 10, 20)}
    label = make_pseudo_label(image, saliency, class_masks, {3: class_masks[3].astype(np.float32)}, GuideParams())
    assert (label[5:30, 5:30] == 3).all()
    assert (label[saliency < 0.5] == 0).all()


@pytest.mark.parametrize("setting, expected", [("background", 0), ("ignore", IGNORE)])
def test_salient_region_without_class_is_unlabelled_foreground(setting, expected):
    image, saliency = blank()
    saliency[5:30, 5:30] = 0.9
    params = GuideParams(unlabelled_foreground=setting)
    label = make_pseudo_label(image, saliency, {}, {}, params)
    assert (label[5:30, 5:30] == expected).all() and (label[35:, 40:] == 0).all()


def test_two_classes_split_along_the_colour_edge():
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :30] = (220, 30, 30)  # red left half
    image[:, 30:] = (30, 30, 220)  # blue right half
    saliency = np.zeros((H, W), np.float32)
    saliency[8:32, 10:50] = 0.95  # one salient object spanning both halves
    left = np.zeros((H, W), np.float32)
    right = np.zeros((H, W), np.float32)
    left[8:32, 10:36] = np.linspace(1.0, 0.35, 26)[None]  # favours the left, bleeds past the edge
    right[8:32, 24:50] = np.linspace(0.35, 1.0, 26)[None]
    masks = {1: left >= 0.4, 2: right >= 0.4}
    label = make_pseudo_label(image, saliency, masks, {1: left, 2: right}, GuideParams())
    region = label[8:32, 10:50]
    assert set(np.unique(region).tolist()) == {1, 2}
    boundary = [int(np.argmax(row == 2)) + 10 for row in region]
    assert all(abs(b - 30) <= 2 for b in boundary), boundary
    assert (label[:8] == 0).all()


def test_bounding_box_crf_equals_whole_image_crf_on_a_simple_case():
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :30] = (200, 40, 40)
    image[:, 30:] = (40, 200, 40)
    saliency = np.zeros((H, W), np.float32)
    saliency[10:30, 15:45] = 1.0
    left, right = np.zeros((H, W), np.float32), np.zeros((H, W), np.float32)
    left[10:30, 15:33] = 0.9
    right[10:30, 27:45] = 0.9
    args = (image, saliency, {4: left > 0.4, 7: right > 0.4}, {4: left, 7: right})
    box = make_pseudo_label(*args, GuideParams())
    whole = make_pseudo_label(*args, GuideParams(crf_whole_image=True))
    assert np.array_equal(box, whole)
    assert {4, 7} <= set(np.unique(box).tolist())


def test_size_filters():
    image, saliency = blank()
    area = H * W  # 2400 px: 1% = 24 px
    saliency[0:4, 0:6] = 0.9  # 24 px: exactly 1%, kept
    saliency[20:23, 40:47] = 0.9  # 21 px: under 1%, dropped
    label = make_pseudo_label(image, saliency, {}, {}, GuideParams(unlabelled_foreground="ignore"))
    assert (label[0:4, 0:6] == IGNORE).all()
    assert (label[20:23, 40:47] == 0).all()
    assert area == 2400
    # class regions of 25 px or less are dropped, 26 kept
    saliency = np.zeros((H, W), np.float32)
    saliency[5:35, 5:55] = 0.9
    small = rect(10, 15, 10, 15)  # 25 px
    big = np.zeros((H, W), bool)
    big[20:22, 20:33] = True  # 26 px
    label = make_pseudo_label(image, saliency, {2: small}, {2: small.astype(np.float32)}, GuideParams())
    assert (label[5:35, 5:55] == 0).all()  # no class left: unlabelled foreground = background
    label = make_pseudo_label(image, saliency, {2: big}, {2: big.astype(np.float32)}, GuideParams())
    assert (label[5:35, 5:55] == 2).all()


def test_minimum_overlap():
    image, saliency = blank()
    saliency[5:20, 5:20] = 0.9
    touching = rect(18, 30, 18, 30)  # 144 px, 4 of them inside the salient region
    cams = {5: touching.astype(np.float32)}
    assert (make_pseudo_label(image, saliency, {5: touching}, cams, GuideParams())[5:20, 5:20] == 5).all()
    label = make_pseudo_label(image, saliency, {5: touching}, cams, GuideParams(min_overlap_pixels=5))
    assert (label[5:18, 5:18] == 0).all()


def test_isolated_class_regions():
    image, saliency = blank()
    saliency[2:12, 2:12] = 0.9
    far_a = rect(20, 35, 20, 40)
    far_b = rect(25, 38, 35, 55)  # overlaps far_a in rows 25-34, columns 35-39
    cam_a, cam_b = far_a * 0.6, far_b * 0.9
    masks, cams = {1: far_a, 2: far_b}, {1: cam_a.astype(np.float32), 2: cam_b.astype(np.float32)}
    painted = make_pseudo_label(image, saliency, masks, cams, GuideParams())
    assert (painted[20:25, 20:35] == 1).all()
    assert (painted[26:34, 36:39] == 2).all()  # overlap: the higher CAM wins
    assert (painted[2:12, 2:12] == 0).all()  # the salient region has no class: background
    ignored = make_pseudo_label(image, saliency, masks, cams, GuideParams(isolated_class_regions="ignore"))
    assert (ignored[far_a | far_b] == IGNORE).all()


def test_pixel_rule():
    image, saliency = blank()
    saliency[5:35, 5:55] = 0.9
    a = np.zeros((H, W), np.float32)
    b = np.zeros((H, W), np.float32)
    a[:, :30] = 0.8
    b[:, 25:45] = 0.9
    label = make_pseudo_label(image, saliency, {1: a > 0.4, 2: b > 0.4}, {1: a, 2: b}, GuideParams(rule="pixel"))
    assert (label[5:35, 5:25] == 1).all()
    assert (label[5:35, 25:45] == 2).all()  # higher CAM
    assert (label[5:35, 45:55] == IGNORE).all()  # salient, no class
    assert (label[:5] == 0).all()


def _write_inputs(cfg, image_set):
    """Saliency = the ground-truth objects; class masks and CAMs = the true class regions."""
    layout = Layout(cfg)
    for image_id in image_set.ids:
        mask = image_set.mask(image_id)
        layout.write_saliency(image_id, ((mask > 0) & (mask < 255)).astype(np.float32))
        class_ids = image_set.class_ids(image_id)
        cams = np.stack([(mask == c).astype(np.float32) for c in class_ids]) if class_ids else \
            np.zeros((0, *mask.shape), np.float32)
        layout.write_cams(image_id, class_ids, cams[:, ::4, ::4] if len(cams) else cams[:, ::4, ::4],
                          mask.shape)
        for class_id, cam in zip(class_ids, cams):
            layout.write_cam_mask(image_id, class_id, cam > 0.5)


def test_stage_over_files_scores_and_skips_on_rerun(tiny_cfg):
    cfg = tiny_cfg(**{"guide.workers": 2})
    image_set = datasets.build(cfg, "train")
    _write_inputs(cfg, image_set)
    summary = make_guide.run(cfg)
    layout = Layout(cfg)
    for image_id in image_set.ids:
        label = files.read_label_png(layout.pseudo_label(image_id))
        assert label.shape == image_set.image_size(image_id)
    assert summary["mIoU"] > 0.6  # near-perfect inputs give good pseudo labels
    assert 0 <= summary["ignore_fraction"] < 0.05
    assert (layout.run_dir("create_guide") / "pseudo_labels_train.json").exists()
    assert layout.guide_preview(image_set.ids[0]).exists()
    first = layout.pseudo_label(image_set.ids[0])
    os.utime(first, (1, 1))
    again = make_guide.run(dataclasses.replace(cfg, guide=dataclasses.replace(cfg.guide, workers=1)))
    assert first.stat().st_mtime == 1
    assert again["mIoU"] == pytest.approx(summary["mIoU"])


def test_missing_inputs_name_the_file_and_the_stage(tiny_cfg):
    cfg = tiny_cfg(**{"guide.workers": 1})
    with pytest.raises(FileNotFoundError, match="tmp/saliency/prob/.*CREATE_SALIENCY"):
        make_guide.run(cfg)
