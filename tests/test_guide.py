"""The guide's rules on hand-made arrays (one test per rule)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import config as config_module
from guide.rules import IGNORE, GuideParams, connected_regions, make_pseudo_label

H, W = 40, 60  # 2400 pixels: 1% of the image is 24 pixels


def grey_image():
    return np.full((H, W, 3), 128, np.uint8)


def rect(y0, y1, x0, x1):
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def saliency_of(*masks):
    prob = np.full((H, W), 0.1, np.float32)
    for mask in masks:
        prob[mask] = 0.9
    return prob


def cams_of(masks: dict, value=1.0):
    return {c: (m * value).astype(np.float32) for c, m in masks.items()}


def red_blue_case():
    """Left half red, right half blue; one salient rectangle spanning both halves; two CAMs that
    each favour their side and overlap over columns 24-39. The CAMs cross near column 38, so a
    per-pixel argmax would put the split 8 pixels right of the colour edge (column 30)."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :30] = (220, 30, 30)
    image[:, 30:] = (30, 30, 220)
    salient = rect(8, 32, 10, 50)
    left = np.zeros((H, W), np.float32)
    right = np.zeros((H, W), np.float32)
    left[8:32, 10:40] = np.linspace(1.0, 0.7, 30)[None]
    right[8:32, 24:50] = np.linspace(0.35, 1.0, 26)[None]
    return image, saliency_of(salient), {1: left >= 0.4, 2: right >= 0.4}, {1: left, 2: right}


# ---- one saliency region and the classes overlapping it
def test_region_with_one_class_takes_it_whole_and_class_pixels_outside_stay_background():
    salient = rect(5, 30, 5, 30)
    class_mask = rect(20, 38, 20, 45)  # half inside the salient region, half outside
    label = make_pseudo_label(
        grey_image(), saliency_of(salient), {3: class_mask}, cams_of({3: class_mask}), GuideParams()
    )
    assert (label[salient] == 3).all()
    assert (label[~salient] == 0).all()


@pytest.mark.parametrize("setting, expected", [("background", 0), ("ignore", IGNORE)])
def test_region_without_class_is_unlabelled_foreground(setting, expected):
    salient = rect(5, 30, 5, 30)
    label = make_pseudo_label(grey_image(), saliency_of(salient), {}, {}, GuideParams(unlabelled_foreground=setting))
    assert (label[salient] == expected).all()
    assert (label[~salient] == 0).all()


def test_region_with_two_classes_is_split_by_the_crf_along_the_colour_edge():
    image, saliency, masks, cams = red_blue_case()
    argmax_edge = 10 + int(np.argmax(cams[2][20, 10:50] > cams[1][20, 10:50]))
    assert argmax_edge >= 36  # the CAMs alone put the split well off the colour edge
    label = make_pseudo_label(image, saliency, masks, cams, GuideParams())
    region = label[8:32, 10:50]
    assert set(np.unique(region).tolist()) == {1, 2}
    for row in region:
        edge = int(np.argmax(row == 2))  # first column of class 2
        assert abs(edge + 10 - 30) <= 2, row
        assert (row[:edge] == 1).all() and (row[edge:] == 2).all()
    assert (label[saliency < 0.5] == 0).all()


def test_the_crf_writes_only_the_regions_pixels():
    # an L-shaped salient region: its bounding box holds non-salient pixels the CAMs cover
    image, _, masks, cams = red_blue_case()
    salient = rect(8, 32, 10, 20) | rect(24, 32, 10, 50)
    cams = {c: np.where(rect(8, 32, 10, 50), m, 0).astype(np.float32) for c, m in cams.items()}
    label = make_pseudo_label(image, saliency_of(salient), masks, cams, GuideParams())
    assert {1, 2} <= set(np.unique(label[salient]).tolist())
    assert (label[~salient & ~(masks[1] | masks[2])] == 0).all()
    assert (label[8:24, 20:50] == 0).all()  # inside the box, outside the region


def test_a_shared_region_is_split_by_the_split_passed_in_and_only_it():
    # the split the comparisons pass (benchmarks/cluster_split.py) replaces the CRF for shared
    # regions only; single-class regions and the rest of the image keep the rule
    image, saliency, masks, cams = red_blue_case()
    lone = rect(34, 39, 52, 59)
    saliency[lone] = 0.9
    masks[3], cams[3] = lone, lone.astype(np.float32)
    calls = []

    def all_second_class(image, region, box, class_ids, cams, params):
        calls.append(list(class_ids))
        return (slice(0, H), slice(0, W)), np.full((H, W), class_ids[1], np.uint8)

    label = make_pseudo_label(image, saliency, masks, cams, GuideParams(), split=all_second_class)
    assert calls == [[1, 2]]
    assert (label[8:32, 10:50] == 2).all()
    assert (label[lone] == 3).all()
    default = make_pseudo_label(image, saliency, masks, cams, GuideParams())
    assert set(np.unique(default[8:32, 10:50]).tolist()) == {1, 2}
    assert (label[(saliency < 0.5)] == default[(saliency < 0.5)]).all()


@pytest.mark.parametrize("background_channel", [False, True])
def test_crf_background_channel(background_channel):
    # the salient rectangle overshoots the two objects into grey surroundings where no CAM fires:
    # without a background channel those pixels must take a class, with one they become background
    image = grey_image()
    image[8:32, 10:30] = (220, 30, 30)
    image[8:32, 30:42] = (30, 30, 220)
    _, saliency, masks, cams = red_blue_case()
    cams = {c: np.where(rect(8, 32, 10, 42), m, 0).astype(np.float32) for c, m in cams.items()}
    label = make_pseudo_label(image, saliency, masks, cams, GuideParams(crf_background_channel=background_channel))
    assert (label[8:32, 10:28] == 1).all() and (label[8:32, 32:42] == 2).all()
    overshoot = label[8:32, 44:50]
    if background_channel:
        assert (overshoot == 0).all()
    else:
        assert set(np.unique(overshoot).tolist()) <= {1, 2}


def test_bounding_box_crf_matches_whole_image_crf_on_a_simple_case():
    image, saliency, masks, cams = red_blue_case()
    # a second, single-class object elsewhere, so the whole image is larger than the box
    other = rect(34, 40, 52, 60)
    saliency[other] = 0.9
    masks[3], cams[3] = other, other.astype(np.float32)
    box = make_pseudo_label(image, saliency, masks, cams, GuideParams(crf_margin=4))
    whole = make_pseudo_label(image, saliency, masks, cams, GuideParams(crf_whole_image=True))
    assert {1, 2, 3} <= set(np.unique(box).tolist())
    assert np.array_equal(box, whole)


# ---- size filters and overlap
@pytest.mark.parametrize("pixels, kept", [(23, False), (24, True), (25, True)])
def test_saliency_regions_under_one_percent_are_dropped(pixels, kept):
    salient = np.zeros((H, W), bool)
    salient[10, 5 : 5 + pixels] = True  # one row: an 8-connected segment of ``pixels`` pixels
    label = make_pseudo_label(grey_image(), saliency_of(salient), {}, {}, GuideParams(unlabelled_foreground="ignore"))
    assert (label[salient] == (IGNORE if kept else 0)).all()


def test_saliency_area_is_configurable():
    salient = rect(10, 15, 10, 15)  # 25 px, about 1.04% of the image
    params = GuideParams(unlabelled_foreground="ignore", min_saliency_area=0.02)
    assert (make_pseudo_label(grey_image(), saliency_of(salient), {}, {}, params) == 0).all()


@pytest.mark.parametrize("pixels, kept", [(25, False), (26, True)])
def test_class_regions_of_25_pixels_or_fewer_are_dropped(pixels, kept):
    salient = rect(5, 35, 5, 55)
    class_mask = np.zeros((H, W), bool)
    class_mask[20:22, 10:23] = True  # 26 px
    class_mask[21, 22] = pixels == 26
    assert class_mask.sum() == pixels
    label = make_pseudo_label(
        grey_image(), saliency_of(salient), {2: class_mask}, cams_of({2: class_mask}), GuideParams()
    )
    assert (label[salient] == (2 if kept else 0)).all()


def test_class_pixel_filter_is_configurable():
    salient = rect(5, 35, 5, 55)
    class_mask = rect(20, 25, 10, 16)  # 30 px
    args = (grey_image(), saliency_of(salient), {2: class_mask}, cams_of({2: class_mask}))
    assert (make_pseudo_label(*args, GuideParams(min_class_pixels=29))[salient] == 2).all()
    assert (make_pseudo_label(*args, GuideParams(min_class_pixels=30))[salient] == 0).all()


@pytest.mark.parametrize("min_overlap, expected", [(1, 5), (4, 5), (5, 0)])
def test_minimum_overlap(min_overlap, expected):
    salient = rect(5, 20, 5, 20)
    touching = rect(18, 30, 18, 30)  # 144 px, 4 of them inside the salient region
    label = make_pseudo_label(
        grey_image(),
        saliency_of(salient),
        {5: touching},
        cams_of({5: touching}),
        GuideParams(min_overlap_pixels=min_overlap),
    )
    assert (label[salient] == expected).all()
    # the class region touches a saliency region, so it is not isolated: its outside part is background
    assert (label[touching & ~salient] == 0).all()


def test_overlap_is_counted_per_region():
    first, second = rect(2, 12, 2, 12), rect(2, 12, 40, 55)
    class_a, class_b = rect(4, 8, 4, 12), rect(5, 10, 42, 50)
    label = make_pseudo_label(
        grey_image(),
        saliency_of(first, second),
        {1: class_a, 2: class_b},
        cams_of({1: class_a, 2: class_b}),
        GuideParams(),
    )
    assert (label[first] == 1).all() and (label[second] == 2).all()


# ---- class regions touching no saliency region
def test_isolated_class_regions_are_painted_and_the_higher_cam_wins_where_they_overlap():
    salient = rect(2, 12, 2, 12)
    far_a = rect(20, 35, 20, 40)
    far_b = rect(25, 38, 35, 55)  # overlaps far_a over rows 25-34, columns 35-39
    cams = {1: (far_a * 0.6).astype(np.float32), 2: (far_b * 0.9).astype(np.float32)}
    cams[1][30:35, 35:40] = 0.95  # class 1 stronger in part of the overlap
    label = make_pseudo_label(grey_image(), saliency_of(salient), {1: far_a, 2: far_b}, cams, GuideParams())
    assert (label[far_a & ~far_b] == 1).all() and (label[far_b & ~far_a] == 2).all()
    assert (label[25:30, 35:40] == 2).all() and (label[30:35, 35:40] == 1).all()
    assert (label[salient] == 0).all()  # the salient region has no class: background
    assert (label[~(far_a | far_b)] == 0).all()


def test_isolated_class_regions_can_be_ignored():
    salient = rect(2, 12, 2, 12)
    far = rect(20, 35, 20, 40)
    label = make_pseudo_label(
        grey_image(), saliency_of(salient), {1: far}, cams_of({1: far}), GuideParams(isolated_class_regions="ignore")
    )
    assert (label[far] == IGNORE).all() and (label[~far] == 0).all()


@pytest.mark.parametrize("rule", ["region", "pixel"])
def test_uncertain_saliency_becomes_ignore_whatever_the_rule_gave(rule):
    salient = rect(5, 30, 5, 30)
    prob = saliency_of(salient)
    prob[5:30, 5:8] = 0.45  # a hesitant edge inside the region
    prob[0:3, :] = 0.3  # and one outside it
    masks = {2: rect(5, 30, 5, 30)}
    params = GuideParams(rule=rule, saliency_threshold=0.4)
    plain = make_pseudo_label(grey_image(), prob, masks, cams_of(masks), params)
    label = make_pseudo_label(
        grey_image(), prob, masks, cams_of(masks), dataclasses.replace(params, uncertain_saliency=(0.25, 0.5))
    )
    hesitant = (prob >= 0.25) & (prob < 0.5)
    assert (label[hesitant] == IGNORE).all() and hesitant.sum() == 25 * 3 + 3 * W
    assert np.array_equal(label[~hesitant], plain[~hesitant]) and (plain[5:30, 5:8] == 2).all()
    with pytest.raises(ValueError, match="guide.uncertain_saliency"):
        GuideParams(uncertain_saliency=(0.5, 0.2))
    with pytest.raises(config_module.ConfigError, match="guide.uncertain_saliency"):
        config_module.validate(config_module.build_config("demo", ["guide.uncertain_saliency=[0.5]"]))


def test_class_region_touching_only_a_dropped_saliency_region_is_isolated():
    speck = rect(30, 33, 30, 33)  # 9 px salient: under 1%, dropped
    class_mask = rect(28, 38, 28, 40)
    label = make_pseudo_label(
        grey_image(), saliency_of(speck), {4: class_mask}, cams_of({4: class_mask}), GuideParams()
    )
    assert (label[class_mask] == 4).all()


# ---- pixel rule
def test_pixel_rule_takes_the_strongest_cam_above_the_class_threshold():
    salient = rect(5, 35, 5, 55)
    a = np.zeros((H, W), np.float32)
    b = np.zeros((H, W), np.float32)
    a[:, :30] = 0.8
    b[:, 25:45] = 0.9
    b[:, 45:50] = 0.3  # under the class threshold 0.4
    speck = rect(0, 2, 0, 2)  # a tiny salient region: the pixel rule keeps it
    label = make_pseudo_label(
        grey_image(), saliency_of(salient, speck), {1: a >= 0.4, 2: b >= 0.4}, {1: a, 2: b}, GuideParams(rule="pixel")
    )
    assert (label[5:35, 5:25] == 1).all()
    assert (label[5:35, 25:45] == 2).all()
    assert (label[5:35, 45:55] == IGNORE).all()
    assert (label[speck] == 1).all()
    assert (label[~(salient | speck)] == 0).all()


def test_pixel_rule_without_classes_ignores_salient_pixels():
    salient = rect(5, 35, 5, 55)
    label = make_pseudo_label(grey_image(), saliency_of(salient), {}, {}, GuideParams(rule="pixel"))
    assert (label[salient] == IGNORE).all() and (label[~salient] == 0).all()


# ---- helpers and parameters
def test_connected_regions_use_8_connectivity_and_boxes():
    mask = np.zeros((H, W), bool)
    mask[5, 5] = mask[6, 6] = mask[7, 7] = True  # diagonal: one 8-connected region
    mask[20:23, 30:34] = True
    regions = connected_regions(mask, min_pixels=3)
    assert regions.count == 2
    assert sorted(map(tuple, regions.boxes.tolist())) == [(5, 5, 3, 3), (30, 20, 4, 3)]
    assert connected_regions(mask, min_pixels=4).count == 1


def test_params_come_from_the_config():
    cfg = config_module.build_config(
        "demo",
        [
            "guide.rule=pixel",
            "saliency.threshold=0.3",
            "attention.threshold=0.6",
            "guide.crf.bilateral_srgb=7",
            "guide.min_overlap_pixels=9",
        ],
    )
    params = GuideParams.from_config(cfg, crf_whole_image=True)
    assert (params.rule, params.saliency_threshold, params.cam_threshold) == ("pixel", 0.3, 0.6)
    assert params.crf.bilateral_srgb == 7 and params.min_overlap_pixels == 9 and params.crf_whole_image
    assert params.crf == cfg.guide.crf  # the whole group, the other kernels at their defaults
    cfg.guide.crf.iterations = 1  # the parameters are detached from the settings they came from
    assert params.crf.iterations == 10
    with pytest.raises(ValueError, match="guide.rule"):
        GuideParams(rule="pixels")


def test_mismatched_inputs_are_refused():
    salient = rect(5, 30, 5, 30)
    with pytest.raises(ValueError, match="no CAM"):
        make_pseudo_label(grey_image(), saliency_of(salient), {1: salient}, {}, GuideParams())
    with pytest.raises(ValueError, match="class mask of class 1"):
        make_pseudo_label(grey_image(), saliency_of(salient), {1: salient[:10]}, cams_of({1: salient}), GuideParams())
