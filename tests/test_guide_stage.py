"""CREATE_GUIDE over files: a tiny VOC-layout set in tmp_path, inputs written with the Layout writers."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

import datasets
from attention.make_cam import storage_size
from common import files, metrics
from common.layout import Layout
from common.stages import BY_NAME
from config import ConfigError
from guide import clusters, make_guide
from guide.rules import IGNORE, GuideParams

H, W = 48, 64
CLASS_NAMES = ["red_thing", "blue_thing", "green_thing"]
STRIDE = 4


def _scene(objects):
    """Grey noisy image and its mask from (class id, y0, y1, x0, x1, colour) boxes."""
    rng = np.random.default_rng(len(objects))
    image = np.clip(rng.normal(128, 6, (H, W, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    for class_id, y0, y1, x0, x1, colour in objects:
        image[y0:y1, x0:x1] = colour
        mask[y0:y1, x0:x1] = class_id
    return image, mask


# id -> objects; "pair" has two classes in one salient region (the CRF case), "empty" has no label
SCENES = {
    "pair": [(1, 10, 38, 6, 30, (210, 40, 40)), (2, 10, 38, 30, 56, (40, 40, 210))],
    "single": [(3, 12, 36, 20, 44, (40, 200, 40))],
    "empty": [],
    "nomask": [(1, 8, 30, 8, 28, (210, 40, 40))],
}
EMPTY_BLOB = (slice(20, 30), slice(20, 30))  # something salient in the image without labels


@pytest.fixture
def voc_cfg(make_cfg, tmp_path):
    """``voc_cfg(**overrides)``: a config on a 4-image VOC-layout set whose saliency, CAMs and
    class masks (from the true masks, blurred like real CAMs) are already in tmp/."""
    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    (root / "class_names.txt").write_text("background\n" + "\n".join(CLASS_NAMES) + "\n")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(SCENES) + "\n")
    scenes = {}
    for image_id, objects in SCENES.items():
        image, mask = _scene(objects)
        scenes[image_id] = (image, mask)
        files.write_rgb(root / "JPEGImages" / f"{image_id}.png", image)
        if image_id == "nomask":
            names = "".join(f"<object><name>{CLASS_NAMES[c - 1]}</name></object>" for c, *_ in objects)
            (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{names}</annotation>")
        else:
            files.write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)

    def build(**overrides):
        cfg = make_cfg("demo", **{"dataset.kind": "voc", "dataset.root": str(root), **overrides})
        write_inputs(cfg, scenes)
        return cfg

    return build


def write_inputs(cfg, scenes) -> None:
    layout = Layout(cfg)
    for image_id, (_image, mask) in scenes.items():
        salient = (mask > 0).astype(np.float32)
        if image_id == "empty":
            salient[EMPTY_BLOB] = 1.0
        layout.write_saliency(image_id, cv2.GaussianBlur(salient, (5, 5), 1.0))
        class_ids = sorted(int(c) for c in np.unique(mask) if c)
        small = storage_size((H, W), STRIDE)
        cams = []
        for class_id in class_ids:
            blurred = cv2.GaussianBlur((mask == class_id).astype(np.float32), (0, 0), 4.0)
            cams.append(cv2.resize(blurred / blurred.max(), small[::-1], interpolation=cv2.INTER_AREA))
        layout.write_cams_and_masks(
            image_id, class_ids, np.array(cams, np.float32).reshape(-1, *small), (H, W), cfg.attention.threshold
        )


def stored_labels(cfg) -> dict[str, np.ndarray]:
    layout = Layout(cfg)
    return {i: files.read_label_png(layout.pseudo_label(i)) for i in SCENES}


def test_stage_writes_pseudo_labels_and_reports_metrics(voc_cfg):
    cfg = voc_cfg(**{"guide.workers": 1})
    summary = make_guide.run(cfg)
    labels = stored_labels(cfg)
    image_set = datasets.build(cfg, "train")
    layout = Layout(cfg)

    assert all(label.shape == (H, W) for label in labels.values())
    # the CRF splits the shared region along the colour edge at column 30
    assert (labels["pair"][12:36, 8:28] == 1).all() and (labels["pair"][12:36, 32:54] == 2).all()
    assert (labels["single"][14:34, 22:42] == 3).all() and (labels["single"][:8] == 0).all()
    assert (labels["empty"] == 0).all()  # unlabelled foreground = background by default
    assert set(np.unique(labels["nomask"]).tolist()) == {0, 1}

    # the metrics: what a confusion matrix over the stored files and the masks says
    matrix = metrics.ConfusionMatrix(len(CLASS_NAMES) + 1)
    for image_id in ("pair", "single", "empty"):
        matrix.update(image_set.mask(image_id), labels[image_id])
    assert summary["mIoU"] == pytest.approx(matrix.mean_iou())
    assert summary["mIoU"] > 0.85
    assert summary["precision"] == pytest.approx(np.nanmean(matrix.precision()))
    assert summary["recall"] == pytest.approx(np.nanmean(matrix.recall()))
    assert summary["images"] == 4 and summary["images_with_masks"] == 3
    assert summary["ignore_fraction"] == 0.0

    report = json.loads((layout.run_dir("create_guide") / "pseudo_labels_train.json").read_text())
    assert report["mIoU"] == pytest.approx(summary["mIoU"])
    assert set(report["per_class"]) == {"background", *CLASS_NAMES}
    assert report["per_class"]["blue_thing"]["recall"] == pytest.approx(matrix.recall()[2])
    assert any(p.name.startswith("events.out.tfevents") for p in layout.run_dir("create_guide").iterdir())
    preview = files.read_image(layout.guide_preview("pair"))
    assert preview.shape == (H, 5 * W, 3)


def test_ignore_fraction_and_ignored_pixels_count_as_misses(voc_cfg):
    cfg = voc_cfg(**{"guide.workers": 1, "guide.unlabelled_foreground": "ignore"})
    summary = make_guide.run(cfg)
    labels = stored_labels(cfg)
    salient = Layout(cfg).read_saliency("empty") >= cfg.saliency.threshold
    assert salient.sum() > 64
    assert np.array_equal(labels["empty"] == IGNORE, salient)
    ignored = sum(int((label == IGNORE).sum()) for label in labels.values())
    assert ignored == salient.sum()  # the other images have classes for every salient region
    assert summary["ignore_fraction"] == pytest.approx(ignored / (len(SCENES) * H * W))
    # the blob is background in the truth: ignoring it costs background recall
    report = json.loads((Layout(cfg).run_dir("create_guide") / "pseudo_labels_train.json").read_text())
    assert report["per_class"]["background"]["recall"] < 1.0


def test_rerun_skips_finished_images_and_reports_the_same(voc_cfg):
    cfg = voc_cfg(**{"guide.workers": 1})
    first = make_guide.run(cfg)
    layout = Layout(cfg)
    kept, removed = layout.pseudo_label("pair"), layout.pseudo_label("single")
    os.utime(kept, (1, 1))
    removed.unlink()
    again = make_guide.run(cfg)
    assert kept.stat().st_mtime == 1  # not recomputed
    assert removed.exists()  # recomputed
    assert again == pytest.approx(first, nan_ok=True)
    cfg.runtime.overwrite = True
    make_guide.run(cfg)
    assert kept.stat().st_mtime > 1


def test_worker_pool_gives_the_labels_of_one_process(voc_cfg):
    # torch's OpenMP threads have run in this process (as after the stages before CREATE_GUIDE):
    # forked workers would hang here, the pool must not
    torch.nn.functional.interpolate(torch.rand(1, 8, 256, 256), scale_factor=2.0, mode="bilinear")
    cfg = voc_cfg(**{"guide.workers": 2})
    make_guide.run(cfg)
    pooled = stored_labels(cfg)
    in_process = dict(
        make_guide.compute_pseudo_labels(cfg, "train", list(SCENES), GuideParams.from_config(cfg), workers=1)
    )
    assert all(np.array_equal(pooled[i], in_process[i]) for i in SCENES)


def test_whole_image_crf_switch_gives_the_same_labels_here(voc_cfg, monkeypatch):
    from guide import rules

    windows: dict[str, list[tuple[int, int]]] = {"box": [], "whole": [], "swapped": []}
    kernels = []
    variant = {"name": "box"}
    real_crf = rules.dense_crf

    def counting_crf(image, probabilities, params):
        windows[variant["name"]].append(image.shape[:2])
        kernels.append(params)
        marginals = real_crf(image, probabilities, params)
        return marginals[::-1] if variant["name"] == "swapped" else marginals

    monkeypatch.setattr(rules, "dense_crf", counting_crf)
    # a margin small enough that the box is smaller than these small test images
    cfg = voc_cfg(**{"guide.workers": 1, "guide.crf_margin": 2, "guide.crf.bilateral_sxy": 60.0})
    ids = list(SCENES)
    box = dict(make_guide.compute_pseudo_labels(cfg, "train", ids, GuideParams.from_config(cfg), 1))
    variant["name"] = "whole"
    whole = dict(
        make_guide.compute_pseudo_labels(cfg, "train", ids, GuideParams.from_config(cfg, crf_whole_image=True), 1)
    )
    # the CRF split a shared region in both variants, on a box smaller than the whole image
    assert windows["box"] and len(windows["box"]) == len(windows["whole"])
    assert any(b[0] * b[1] < w[0] * w[1] for b, w in zip(windows["box"], windows["whole"]))
    assert all(np.array_equal(box[i], whole[i]) for i in ids)
    # with the kernels of guide.crf
    assert kernels and all(k == cfg.guide.crf and k.bilateral_sxy == 60.0 for k in kernels)
    # and the CRF's answer decides the labels: its marginals handed back in reversed class order swap the pair
    variant["name"] = "swapped"
    swapped = dict(make_guide.compute_pseudo_labels(cfg, "train", ["pair"], GuideParams.from_config(cfg), 1))
    assert windows["swapped"] and {1, 2} <= set(np.unique(box["pair"]).tolist())
    assert np.array_equal(swapped["pair"], np.choose(box["pair"], [0, 2, 1]))


def test_pixel_rule_through_the_stage(voc_cfg):
    cfg = voc_cfg(**{"guide.workers": 1, "guide.rule": "pixel"})
    make_guide.run(cfg)
    labels = stored_labels(cfg)
    salient = {i: Layout(cfg).read_saliency(i) >= cfg.saliency.threshold for i in SCENES}
    assert np.array_equal(labels["empty"] == IGNORE, salient["empty"])  # salient, no class
    assert all((labels[i][~salient[i]] == 0).all() for i in SCENES)
    assert (labels["pair"][12:36, 8:24] == 1).all() and (labels["pair"][12:36, 36:54] == 2).all()


@pytest.mark.parametrize(
    "remove, stage",
    [
        (lambda layout: layout.saliency_prob("pair"), "CREATE_SALIENCY"),
        (lambda layout: layout.cams("pair"), "CREATE_ATTENTION"),
        (lambda layout: layout.cam_mask("pair", 2), "CREATE_ATTENTION"),
    ],
)
def test_missing_inputs_name_the_file_and_the_stage(voc_cfg, remove, stage):
    cfg = voc_cfg(**{"guide.workers": 1})
    path = remove(Layout(cfg))
    path.unlink()
    with pytest.raises(FileNotFoundError) as error:
        make_guide.run(cfg)
    assert str(path) in str(error.value) and stage in str(error.value)


def test_image_without_labels_needs_no_cam_file(voc_cfg):
    cfg = voc_cfg(**{"guide.workers": 1})
    Layout(cfg).cams("empty").unlink()
    make_guide.run(cfg)
    assert (stored_labels(cfg)["empty"] == 0).all()


def test_cam_file_of_other_classes_is_refused(voc_cfg):
    cfg = voc_cfg(**{"guide.workers": 1})
    layout = Layout(cfg)
    layout.write_cams("single", [1], np.zeros((1, *storage_size((H, W), STRIDE)), np.float32), (H, W))
    with pytest.raises(ValueError, match="CREATE_ATTENTION"):
        make_guide.run(cfg)


# ---- guide.split clusters (guide/clusters.py)
def write_classifier(cfg) -> None:
    from classifier.models import build_classifier
    from common.checkpoint import save_training_state

    torch.manual_seed(0)
    class_names = datasets.build(cfg, "train").class_names
    model = build_classifier(backbone="efficientnet_lite0", num_classes=len(class_names), pretrained=False)
    save_training_state(
        Layout(cfg).checkpoint("classifier", "best"),
        model=model,
        extra={**model.describe(), "class_names": class_names},
    )


CLUSTERS = {"guide.split": "clusters", "guide.workers": 1, "classifier.backbone": "efficientnet_lite0"}


def test_the_stage_splits_shared_regions_by_clusters_and_keeps_its_models(voc_cfg, monkeypatch):
    cfg = voc_cfg(**CLUSTERS)
    with pytest.raises(FileNotFoundError, match="TRAIN_SEED"):
        make_guide.run(cfg)
    write_classifier(cfg)
    summary = make_guide.run(cfg)
    labels = stored_labels(cfg)
    pair = labels["pair"][12:36, 8:54]
    left, right = labels["pair"][12:36, 8:28], labels["pair"][12:36, 32:54]
    assert (left == 1).mean() > 0.9 and (right == 2).mean() > 0.9
    assert set(np.unique(pair).tolist()) <= {1, 2}
    assert (labels["single"][14:34, 22:42] == 3).all()
    assert summary["mIoU"] > 0.8
    layout = Layout(cfg)
    path = layout.cluster_models("train")
    models = clusters.load_namers(path)
    assert list(models) == [(1, 2)] and len(models[(1, 2)]) == len(cfg.guide.cluster_counts)

    # a resumed run labels with the kept models: no refit, the same label
    def no_refit(*args, **kwargs):
        raise AssertionError("refitted")

    monkeypatch.setattr(clusters, "gather_and_fit", no_refit)
    layout.pseudo_label("pair").unlink()
    make_guide.run(cfg)
    assert np.array_equal(stored_labels(cfg)["pair"], labels["pair"])


def test_pool_and_one_process_give_the_same_cluster_labels(voc_cfg):
    cfg = voc_cfg(**{**CLUSTERS, "guide.workers": 2})
    write_classifier(cfg)
    make_guide.run(cfg)
    pooled = stored_labels(cfg)
    models = clusters.load_namers(Layout(cfg).cluster_models("train"))
    params = GuideParams.from_config(cfg)
    in_process = dict(make_guide.compute_pseudo_labels(cfg, "train", list(SCENES), params, 1, models))
    assert all(np.array_equal(pooled[i], in_process[i]) for i in SCENES)


def test_only_the_cluster_split_reads_the_classifier(voc_cfg):
    # the record's inputs then hold the trained classifier's digest: a retrained one redoes the guide
    stage = BY_NAME["create_guide"]
    assert "train_seed" not in stage.upstream(voc_cfg(**{"guide.workers": 1}))
    assert "train_seed" in stage.upstream(voc_cfg(**CLUSTERS))


def test_the_cluster_split_needs_the_region_rule(make_cfg):
    with pytest.raises(ConfigError, match="guide.split clusters.*guide.rule is pixel"):
        make_cfg("demo", **{"guide.split": "clusters", "guide.rule": "pixel"})
