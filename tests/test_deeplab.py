"""DeepLab: label selection, models, own-size evaluation, CRF post-processing, the two stages."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import datasets
import main
from common import files
from common.crf import CrfParams
from common.layout import Layout
from deeplab import eval_deeplab, train_deeplab
from deeplab.data import select_gt_images
from deeplab.inference import class_probabilities, crf_refine
from deeplab.models import build_deeplab

IDS = [f"img{i:03d}" for i in range(40)]


def test_gt_selection_is_a_real_percentage():
    assert select_gt_images(IDS, 0, seed=1) == set()
    assert select_gt_images(IDS, 100, seed=1) == set(IDS)
    assert len(select_gt_images(IDS, 25, seed=1)) == 10
    assert len(select_gt_images(IDS, 10, seed=1)) == 4
    assert len(select_gt_images(IDS, 11.3, seed=1)) == 5  # 4.52 rounds to 5
    assert select_gt_images(IDS, 25, seed=1) == select_gt_images(list(reversed(IDS)), 25, seed=1)
    assert select_gt_images(IDS, 25, seed=1) != select_gt_images(IDS, 25, seed=2)
    previous = set()
    for percentage in (0, 10, 25, 50, 100):  # nested: more masks only add images
        chosen = select_gt_images(IDS, percentage, seed=3)
        assert previous <= chosen
        previous = chosen
    with pytest.raises(ValueError, match="not a percentage"):
        select_gt_images(IDS, 101, seed=0)


@pytest.mark.parametrize("backbone, output_stride", [("efficientnet_lite0", 16), ("efficientnet_lite0", 8),
                                                     ("mobilenet_v3_large", 16), ("resnet50", 16),
                                                     ("resnet50", 8)])
def test_models_give_logits_at_input_size(backbone, output_stride):
    model = build_deeplab(backbone=backbone, num_classes=5, output_stride=output_stride,
                          pretrained_backbone=False).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 65, 71))
        features = model.backbone(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 5, 65, 71)
    assert features.shape[-1] == 64 // output_stride


def test_segmentation_pretrained_weights_are_never_requested_by_default(monkeypatch):
    import torchvision

    def forbidden(*args, **kwargs):
        raise AssertionError("COCO/VOC DeepLab weights requested")

    monkeypatch.setattr(torchvision.models, "get_model_weights", forbidden)
    build_deeplab(backbone="resnet50", num_classes=3, pretrained_backbone=False)

    calls = []

    class FakeWeights:
        COCO_WITH_VOC_LABELS_V1 = None

    def fake_get(name):
        calls.append(name)

        class Holder:
            class COCO_WITH_VOC_LABELS_V1:
                @staticmethod
                def get_state_dict(progress=False):
                    return {}
        return Holder

    monkeypatch.setattr(torchvision.models, "get_model_weights", fake_get)
    with pytest.warns(UserWarning, match="NOT weakly supervised"):
        model = build_deeplab(backbone="resnet50", num_classes=3, segmentation_pretrained=True)
    assert calls == ["deeplabv3_resnet50"]
    assert model.describe()["segmentation_pretrained"] is True


def test_prediction_has_the_images_own_size():
    model = build_deeplab(backbone="efficientnet_lite0", num_classes=4, pretrained_backbone=False).eval()
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3)).astype(np.uint8)
    probs = class_probabilities(model, image, scales=(1.0, 0.75), flip=True)
    assert probs.shape == (4, 37, 53)
    assert torch.allclose(probs.sum(0), torch.ones(37, 53), atol=1e-5)


def test_crf_post_processing_snaps_labels_to_a_colour_edge():
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, :20] = (230, 20, 20)
    image[:, 20:] = (20, 20, 230)
    prediction = np.zeros((30, 40), np.uint8)
    prediction[:, 17:] = 1  # boundary three pixels off the colour edge
    refined = crf_refine(image, prediction, 2, 0.6, CrfParams(bilateral_sxy=121, bilateral_srgb=5,
                                                             bilateral_compat=4))
    assert (refined[:, :19] == 0).mean() > 0.95 and (refined[:, 21:] == 1).all()


def _pseudo_labels_from_masks(cfg, image_set):
    layout = Layout(cfg)
    for image_id in image_set.ids:
        files.write_label_png(layout.pseudo_label(image_id), image_set.mask(image_id))


TINY = {"deeplab.steps": 4, "deeplab.val_every": 2, "deeplab.batch_size": 4, "deeplab.crop_size": 64,
        "deeplab.pretrained_backbone": False, "eval.overlays": 3}


def test_train_and_eval_end_to_end_with_reports(tiny_cfg):
    cfg = tiny_cfg(**TINY)
    train_set = datasets.build(cfg, "train")
    _pseudo_labels_from_masks(cfg, train_set)
    summaries = main.run_stages(cfg, ["train_deeplab", "eval_deeplab"])
    layout = Layout(cfg)
    assert summaries["train_deeplab"]["pseudo_images"] == len(train_set)
    assert summaries["train_deeplab"]["gt_images"] == 0
    result = summaries["eval_deeplab"]
    assert 0 <= result["mIoU"] <= 1 and result["weakly_supervised"] is True
    val_set = datasets.build(cfg, "val")
    for image_id in val_set.ids:
        prediction = files.read_label_png(layout.prediction(image_id))
        assert prediction.shape == val_set.image_size(image_id)
    assert len(list(layout.overlay("x").parent.glob("*.jpg"))) == 3
    report = json.loads((layout.run_dir("eval_deeplab") / "report.json").read_text())
    assert report["mIoU"] == pytest.approx(result["mIoU"])
    assert np.array(report["confusion_matrix"]).shape == (7, 7)
    assert "| disc |" in (layout.run_dir("eval_deeplab") / "report.md").read_text()
    labels = json.loads((layout.run_dir("train_deeplab") / "labels.json").read_text())
    assert labels["gt_percentage"] == 0


def test_training_resumes_from_the_last_step(tiny_cfg):
    cfg = tiny_cfg(**TINY)
    _pseudo_labels_from_masks(cfg, datasets.build(cfg, "train"))
    train_deeplab.run(cfg)
    layout = Layout(cfg)
    state = torch.load(layout.checkpoint("deeplab", "last"), weights_only=False)
    assert state["step"] == 4 and state["optimizer"]["state"]
    cfg.deeplab.steps = 6
    train_deeplab.run(cfg)
    assert torch.load(layout.checkpoint("deeplab", "last"), weights_only=False)["step"] == 6
    cfg.deeplab.gt_percentage = 50.0
    with pytest.raises(ValueError, match="gt_percentage"):
        train_deeplab.run(cfg)


def test_missing_pseudo_labels_and_unlabelled_images(tiny_cfg):
    cfg = tiny_cfg(**TINY)
    with pytest.raises(FileNotFoundError, match="CREATE_GUIDE"):
        train_deeplab.run(cfg)
    train_set = datasets.build(cfg, "train")
    _pseudo_labels_from_masks(cfg, train_set)
    Layout(cfg).pseudo_label(train_set.ids[0]).unlink()
    summary = train_deeplab.run(cfg)
    labels = json.loads((Layout(cfg).run_dir("train_deeplab") / "labels.json").read_text())
    assert labels["skipped_without_label"] == [train_set.ids[0]]
    assert summary["pseudo_images"] == len(train_set) - 1
    # fully supervised needs no pseudo label at all
    cfg.deeplab.gt_percentage = 100.0
    cfg.runtime.overwrite = True
    assert train_deeplab.run(cfg)["gt_images"] == len(train_set)


def test_images_without_masks_get_predictions_only(tiny_cfg, tmp_path):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        files.write_rgb(root / "images" / f"{name}.png", rng.integers(0, 255, (40, 50, 3)))
    (root / "labels.csv").write_text("a,disc\nb,box\n")
    cfg = tiny_cfg(**TINY)
    _pseudo_labels_from_masks(cfg, datasets.build(cfg, "train"))
    train_deeplab.run(cfg)
    cfg.dataset.kind, cfg.dataset.root = "folder", str(root)
    cfg.class_names = ["disc", "box", "triangle", "star", "ring", "cross"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = eval_deeplab.run(cfg)
    assert "mIoU" not in summary and summary["images"] == 2
    assert files.read_label_png(Layout(cfg).prediction("a")).shape == (40, 50)
