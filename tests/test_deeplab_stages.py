"""TRAIN_DEEPLAB and EVAL_DEEPLAB as stages, on a tiny VOC-layout set made here (no generator)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_deeplab import ColourModel, paint

import datasets
import main
from common import files, provenance, training
from common.layout import Layout
from common.stages import BY_NAME
from deeplab import eval_deeplab, train_deeplab

torch.set_num_threads(2)
CLASSES = ["disc", "box"]
TINY = {
    "deeplab.steps": 4,
    "deeplab.val_every": 2,
    "deeplab.batch_size": 2,
    "deeplab.crop_size": 48,
    "deeplab.pretrained_backbone": False,
    "eval.overlays": 3,
    "runtime.num_workers": 0,
}


def make_voc(root: Path, num_train: int = 10, num_val: int = 5, val_without_masks: int = 0) -> Path:
    """A VOC-layout set of painted discs and boxes at odd sizes; the last ``val_without_masks``
    val images have no SegmentationClass file."""
    sizes = [(37, 53), (45, 45), (51, 39), (41, 61), (33, 47)]
    for offset, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        ids = [f"{split}{i:02d}" for i in range(count)]
        for index, image_id in enumerate(ids):
            image, mask = paint(*sizes[index % len(sizes)], seed=100 * offset + index)
            files.write_rgb(root / "JPEGImages" / f"{image_id}.png", image)
            if not (split == "val" and index >= count - val_without_masks):
                files.write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
        files.write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    files.write_text(root / "class_names.txt", "\n".join(CLASSES) + "\n")
    return root


@pytest.fixture
def voc_cfg(make_cfg, tmp_path):
    """``voc_cfg(**overrides)``: a config on a fresh tiny VOC set (``_val_without_masks`` = n)."""

    def build(_val_without_masks: int = 0, **overrides):
        root = make_voc(tmp_path / "voc", val_without_masks=_val_without_masks)
        return make_cfg("demo", **{"dataset.kind": "voc", "dataset.root": str(root), **TINY, **overrides})

    return build


def write_pseudo_labels(cfg, split: str = "train", skip: tuple[str, ...] = ()) -> None:
    """Pseudo labels where CREATE_GUIDE puts them: the mask with the box made ignore (so they differ)."""
    image_set = datasets.build(cfg, split)
    for image_id in image_set.ids:
        if image_id not in skip:
            label = image_set.mask(image_id).copy()
            label[label == 2] = 255
            files.write_label_png(Layout(cfg).pseudo_label(image_id), label)
    provenance.record_made_elsewhere(cfg, "create_guide", {"written_by": "tests", "skipped": list(skip)})


# ---- TRAIN_DEEPLAB + EVAL_DEEPLAB ----------------------------------------------------------------
def test_train_and_eval_end_to_end(voc_cfg):
    cfg = voc_cfg(**{"deeplab.gt_percentage": 30.0})
    write_pseudo_labels(cfg)
    summaries = main.run_stages(cfg, ["train_deeplab", "eval_deeplab"])
    layout = Layout(cfg)
    train = summaries["train_deeplab"]
    assert train["gt_images"] == 3 and train["pseudo_images"] == 7 and train["steps"] == 4
    assert 0 <= train["val_mIoU"] <= 1
    assert train["weakly_supervised"] is False  # 3 real masks were used
    labels = json.loads((layout.run_dir("train_deeplab") / "labels.json").read_text())
    assert len(labels["gt_images"]) == 3 and labels["skipped_without_label"] == []
    for which in ("best", "last"):
        assert layout.checkpoint("deeplab", which).is_file()

    result = summaries["eval_deeplab"]
    assert result["images"] == 5 and 0 <= result["mIoU"] <= 1 and 0 <= result["pixel_accuracy"] <= 1
    assert set(result["per_class_IoU"]) == {"background", "disc", "box"}
    val_set = datasets.build(cfg, "val")
    for image_id in val_set.ids:
        prediction = files.read_label_png(layout.prediction(image_id))
        assert prediction.shape == val_set.image_size(image_id)
        assert prediction.max() <= 2
    overlays = sorted(layout.overlay("x").parent.glob("*.jpg"))
    assert len(overlays) == 3
    height, width = val_set.image_size(val_set.ids[0])
    assert files.read_image(layout.overlay(val_set.ids[0])).shape == (height, 3 * width, 3)
    report = json.loads((layout.run_dir("eval_deeplab") / "report.json").read_text())
    assert report["mIoU"] == pytest.approx(result["mIoU"])
    assert report["weakly_supervised"] is False and "ground-truth mask" in report["not_weakly_supervised_because"][0]
    assert list(layout.run_dir("eval_deeplab").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(("ignore_hardest", "average_decay"), [(0.0, 0.0), (0.3, 0.0), (0.0, 0.9)])
def test_resume_gives_the_weights_of_an_uninterrupted_run(voc_cfg, tmp_path, ignore_hardest, average_decay):
    # with ignore_hardest the fraction left out follows the step, which a resumed run must pick up;
    # with a weight average, "model" is the average and the trained weights go on from "trained_model"
    cfg = voc_cfg(
        **{
            "deeplab.steps": 6,
            "deeplab.val_every": 4,
            "deeplab.ignore_hardest": ignore_hardest,
            "deeplab.average_decay": average_decay,
        }
    )
    write_pseudo_labels(cfg)
    whole = train_deeplab.run(cfg)
    layout = Layout(cfg)
    uninterrupted = torch.load(layout.checkpoint("deeplab", "last"), weights_only=False)

    cfg.paths.checkpoints = str(tmp_path / "other_checkpoints")
    cfg.paths.runs = str(tmp_path / "other_runs")
    stopped = train_deeplab.run(cfg, stop_after=3)
    layout = Layout(cfg)
    state = torch.load(layout.checkpoint("deeplab", "last"), weights_only=False)
    assert stopped["steps"] == 3 and state["step"] == 3 and state["optimizer"]["state"]
    assert state["scheduler"]["last_epoch"] == 3
    resumed = train_deeplab.run(cfg)
    final = torch.load(layout.checkpoint("deeplab", "last"), weights_only=False)
    assert resumed["steps"] == whole["steps"] == final["step"] == 6
    assert resumed["val_mIoU"] == whole["val_mIoU"]
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(tensor, final["model"][name]), name
    assert (training.TRAINED_MODEL in final) == bool(average_decay)
    for name, tensor in uninterrupted.get(training.TRAINED_MODEL, {}).items():
        assert torch.equal(tensor, final[training.TRAINED_MODEL][name]), name
    momentum = [s["momentum_buffer"] for s in final["optimizer"]["state"].values()]
    reference = [s["momentum_buffer"] for s in uninterrupted["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, reference))
    # a finished run is not trained again; changed settings are refused, not silently mixed
    assert train_deeplab.run(cfg)["steps"] == 6
    cfg.deeplab.gt_percentage = 50.0
    with pytest.raises(ValueError, match="gt_percentage.*runtime.overwrite"):
        train_deeplab.run(cfg)


def test_init_checkpoint_starts_from_a_trained_deeplab_and_carries_its_supervision(voc_cfg, tmp_path):
    """deeplab.init_checkpoint (a self-training round fine-tunes its base network): the run starts
    from those weights with a fresh schedule, is weakly supervised only if they were, is refused
    for another network, and its checkpoint resumes only from the same start."""
    cfg = voc_cfg(**{"deeplab.steps": 2, "deeplab.gt_percentage": 30.0})
    write_pseudo_labels(cfg)
    train_deeplab.run(cfg)
    base_path = Layout(cfg).checkpoint("deeplab", "last")
    base = torch.load(base_path, weights_only=False)["model"]

    def tuned(folder: str, **settings):
        cfg.paths.checkpoints, cfg.paths.runs = str(tmp_path / folder / "ck"), str(tmp_path / folder / "runs")
        for key, value in {"deeplab.steps": 1, "deeplab.gt_percentage": 0.0, "deeplab.lr": 1e-12, **settings}.items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        summary = train_deeplab.run(cfg)
        state = torch.load(Layout(cfg).checkpoint("deeplab", "last"), weights_only=False)
        return summary, state

    def parameters_close(state) -> bool:
        names = [n for n, _ in train_deeplab.build_from_config(cfg, 3).named_parameters()]
        return all(torch.allclose(state["model"][n], base[n], atol=1e-6) for n in names)

    summary, state = tuned("fresh", **{"deeplab.init_checkpoint": ""})
    assert not parameters_close(state) and summary["weakly_supervised"] is True
    summary, state = tuned("tuned", **{"deeplab.init_checkpoint": str(base_path)})
    assert parameters_close(state)  # one step at a negligible rate from the base's weights
    assert state["step"] == 1 and state["extra"]["init_checkpoint"] == str(base_path)
    assert state["extra"]["init_checkpoint_sha1"] == provenance.file_digest(base_path)
    # the base saw 3 real masks: so did everything fine-tuned from it
    assert summary["weakly_supervised"] is False
    report = json.loads((Layout(cfg).run_dir("train_deeplab") / "labels.json").read_text())
    assert any("deeplab.init_checkpoint" in reason for reason in report["not_weakly_supervised_because"])
    # its record holds the file's bytes, not only its name
    inputs = provenance.inputs_of(cfg, BY_NAME["train_deeplab"])
    assert inputs["settings"]["deeplab.init_checkpoint"]["sha1"] == provenance.file_digest(base_path)

    cfg.deeplab.output_stride = 8
    with pytest.raises(
        train_deeplab.CheckpointError,
        match=r"init_checkpoint .*last\.pt is another network \(output_stride: 16 there, 8 now\)",
    ):
        tuned("other", **{"deeplab.init_checkpoint": str(base_path)})
    cfg.deeplab.output_stride = 16
    # the same start at another path (a moved bench folder) resumes: the check compares the bytes
    moved_start = tmp_path / "moved_start.pt"
    moved_start.write_bytes(base_path.read_bytes())
    summary, state = tuned("tuned", **{"deeplab.init_checkpoint": str(moved_start), "deeplab.steps": 2})
    assert state["step"] == 2 and state["extra"]["init_checkpoint"] == str(moved_start)
    # a network fine-tuned from one start is not resumed from another
    other_start = tmp_path / "other_start.pt"
    other = torch.load(base_path, weights_only=False)
    other["model"] = {name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in base.items()}
    torch.save(other, other_start)
    with pytest.raises(ValueError, match="init_checkpoint_sha1.*runtime.overwrite"):
        tuned("tuned", **{"deeplab.init_checkpoint": str(other_start), "deeplab.steps": 3})
    # ImageNet's weights would be replaced at once: not loaded, so no file or download is needed
    cfg.deeplab.weights_path = str(tmp_path / "no_such_imagenet_file.pth")
    summary, state = tuned(
        "offline", **{"deeplab.init_checkpoint": str(base_path), "deeplab.pretrained_backbone": True}
    )
    assert parameters_close(state) and state["extra"]["pretrained_backbone"] is True


def test_backbone_from_classifier_starts_from_the_trained_classifier(voc_cfg):
    """deeplab.backbone_from_classifier: the backbone starts from TRAIN_SEED's classifier (image
    labels only, so still weak supervision), which becomes an upstream output of the stage; a
    classifier of another backbone is refused up front."""
    from classifier.models import build_classifier
    from common.checkpoint import save_training_state
    from config import ConfigError, validate

    cfg = voc_cfg(
        **{
            "deeplab.steps": 1,
            "deeplab.lr": 1e-12,
            "deeplab.backbone_from_classifier": True,
            "classifier.backbone": "efficientnet_lite0",
        }
    )
    write_pseudo_labels(cfg)
    with pytest.raises(FileNotFoundError, match="no trained classifier.*TRAIN_SEED"):
        train_deeplab.run(cfg)
    torch.manual_seed(1)
    classifier = build_classifier(backbone="efficientnet_lite0", num_classes=2, pretrained=False, output_stride=16)
    extra = {**classifier.describe(), "class_names": CLASSES}
    save_training_state(Layout(cfg).checkpoint("classifier", "best"), model=classifier, extra=extra)
    summary = train_deeplab.run(cfg)
    assert summary["weakly_supervised"] is True
    state = torch.load(Layout(cfg).checkpoint("deeplab", "last"), weights_only=False)
    # the two wrappers name the same layers differently: paired in order, the classifier's head left
    own_names = list(train_deeplab.build_from_config(cfg, 3).backbone.state_dict())
    pairs = dict(zip(classifier.features.state_dict(), own_names))
    learnt = dict(classifier.features.named_parameters())
    compared = [name for name in pairs if name in learnt]
    assert len(pairs) == len(own_names) and len(compared) > 100  # every DeepLab tensor has its pair
    # one step at a negligible rate from the classifier's weights
    assert all(torch.allclose(state["model"][f"backbone.{pairs[n]}"], learnt[n], atol=1e-6) for n in compared)
    assert "train_seed" in BY_NAME["train_deeplab"].upstream(cfg)
    assert state["extra"]["backbone_from_classifier"] is True

    cfg.classifier.backbone = "vgg16_bn"
    with pytest.raises(ConfigError, match="classifier.backbone is vgg16_bn, deeplab.backbone efficientnet_lite0"):
        validate(cfg)
    cfg.classifier.backbone = "efficientnet_lite0"
    cfg.deeplab.init_checkpoint = str(Layout(cfg).checkpoint("deeplab", "last"))
    with pytest.raises(
        ConfigError, match="deeplab.backbone_from_classifier and deeplab.init_checkpoint each give DeepLab's starting"
    ):
        validate(cfg)


def test_missing_and_partial_pseudo_labels(voc_cfg, capsys):
    cfg = voc_cfg(**{"deeplab.steps": 1})
    with pytest.raises(FileNotFoundError, match=r"tmp/guide/labels.*CREATE_GUIDE"):
        train_deeplab.run(cfg)
    train_ids = datasets.build(cfg, "train").ids
    write_pseudo_labels(cfg, skip=(train_ids[2], train_ids[5]))
    summary = train_deeplab.run(cfg)
    assert summary["pseudo_images"] == len(train_ids) - 2 and summary["weakly_supervised"] is True
    labels = json.loads((Layout(cfg).run_dir("train_deeplab") / "labels.json").read_text())
    assert labels["skipped_without_label"] == [train_ids[2], train_ids[5]]
    assert f"{train_ids[2]}, {train_ids[5]}" in capsys.readouterr().out
    # fully supervised needs no pseudo label at all
    cfg.deeplab.gt_percentage = 100.0
    cfg.runtime.overwrite = True
    summary = train_deeplab.run(cfg)
    assert summary["gt_images"] == len(train_ids) and summary["pseudo_images"] == 0


def test_segmentation_pretrained_is_flagged_in_training_and_eval(voc_cfg, monkeypatch):
    import torchvision
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    published = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).state_dict()

    class Weights:
        class COCO_WITH_VOC_LABELS_V1:
            @staticmethod
            def get_state_dict(progress=False):
                return published

    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: Weights)
    cfg = voc_cfg(
        **{
            "deeplab.backbone": "mobilenet_v3_large",
            "deeplab.segmentation_pretrained": True,
            "deeplab.pretrained_backbone": True,
            "deeplab.steps": 2,
        }
    )
    write_pseudo_labels(cfg)
    with pytest.warns(UserWarning, match="NOT weakly supervised"):
        summaries = main.run_stages(cfg, ["train_deeplab", "eval_deeplab"])
    assert summaries["train_deeplab"]["weakly_supervised"] is False
    assert summaries["eval_deeplab"]["weakly_supervised"] is False
    run_dir = Layout(cfg).run_dir("eval_deeplab")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["weakly_supervised"] is False
    assert "NOT weakly supervised" in report["not_weakly_supervised_because"][0]
    assert (run_dir / "report.md").read_text().count("NOT weakly supervised") >= 1


# ---- EVAL_DEEPLAB with a model whose answers are known ----------------------------------------------
def _use_model(monkeypatch, model, weakly: bool = True):
    extra = {
        "num_classes": 3,
        "backbone": "colour",
        "checkpoint": "colour.pt",
        "step": 0,
        "gt_percentage": 0.0,
        "weakly_supervised": weakly,
        "not_weakly_supervised_because": [] if weakly else ["test"],
    }
    monkeypatch.setattr(eval_deeplab, "load_trained", lambda cfg, device: (model, extra, "digest"))


class Background(ColourModel):
    """Says background everywhere."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, 0] = 1
        return logits


def test_eval_reports_the_metrics_of_its_predictions(voc_cfg, monkeypatch):
    cfg = voc_cfg(_val_without_masks=2, **{"eval.batch_size": 2, "eval.overlays": -1})
    _use_model(monkeypatch, Background())
    summary = eval_deeplab.run(cfg)
    val_set = datasets.build(cfg, "val")
    masks = [val_set.mask(i) for i in val_set.ids if val_set.has_mask(i)]
    assert summary["images"] == 5 and summary["images_scored"] == 3
    truth = np.concatenate([m[m != 255] for m in masks])
    background = (truth == 0).sum()
    assert summary["per_class_IoU"]["background"] == pytest.approx(background / truth.size)
    assert summary["per_class_IoU"]["disc"] == 0.0
    assert summary["mIoU"] == pytest.approx(background / truth.size / 3)
    assert summary["pixel_accuracy"] == pytest.approx(background / truth.size)
    run_dir = Layout(cfg).run_dir("eval_deeplab")
    report = json.loads((run_dir / "report.json").read_text())
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == truth.size and (matrix[:, 1:] == 0).all()
    assert np.array_equal(matrix[:, 0], np.bincount(truth, minlength=3))
    markdown = (run_dir / "report.md").read_text()
    assert "| disc | 0.0000 |" in markdown and f"mIoU: {summary['mIoU']:.4f}" in markdown
    assert len(list(Layout(cfg).overlay("x").parent.glob("*.jpg"))) == 5
    for image_id in val_set.ids:
        assert not files.read_label_png(Layout(cfg).prediction(image_id)).any()


def test_eval_is_exact_with_a_perfect_model_and_multi_scale_flip(voc_cfg, monkeypatch):
    cfg = voc_cfg(**{"eval.batch_size": 3, "eval.flip": True})
    model = ColourModel()
    _use_model(monkeypatch, model)
    summary = eval_deeplab.run(cfg)
    assert summary["mIoU"] == 1.0 and summary["pixel_accuracy"] == 1.0
    assert all(shape[0] <= 3 for shape in model.calls)
    # a rerun with the same checkpoint and settings reuses the predictions; other settings redo them
    calls = len(model.calls)
    assert eval_deeplab.run(cfg)["mIoU"] == 1.0 and len(model.calls) == calls
    cfg.eval.scales = [1.0, 0.5]
    summary = eval_deeplab.run(cfg)
    assert len(model.calls) > calls and 0.8 < summary["mIoU"] <= 1.0  # half scale blurs edges


def test_eval_crf_option_runs_on_every_image(voc_cfg, monkeypatch):
    cfg = voc_cfg(**{"eval.use_crf": True, "eval.overlays": 0, "eval.crf.iterations": 5})
    _use_model(monkeypatch, ColourModel())
    kernels = []
    real_refine = eval_deeplab.crf_refine

    def counting_refine(image, prediction, num_classes, confidence, params, probabilities=None):
        kernels.append(params)
        return real_refine(image, prediction, num_classes, confidence, params, probabilities)

    monkeypatch.setattr(eval_deeplab, "crf_refine", counting_refine)
    summary = eval_deeplab.run(cfg)
    assert summary["mIoU"] > 0.9  # the CRF keeps a right answer on flat colours
    assert len(kernels) == summary["images"] > 0
    assert all(k == cfg.eval.crf and k.iterations == 5 and k.bilateral_sxy == 121.0 for k in kernels)
    assert not Layout(cfg).overlay("x").parent.exists()  # eval.overlays = 0


def test_new_photos_get_predictions_only(make_cfg, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for index, name in enumerate(("a", "b")):
        files.write_rgb(root / "images" / f"{name}.png", paint(40 + index, 50, index)[0])
    (root / "labels.csv").write_text("a,disc\nb,box\n")
    cfg = make_cfg("demo", **{"dataset.kind": "folder", "dataset.root": str(root), "eval.overlays": 1})
    cfg.class_names = CLASSES
    _use_model(monkeypatch, ColourModel())
    summary = eval_deeplab.run(cfg)
    assert "mIoU" not in summary and summary["images"] == 2 and summary["images_scored"] == 0
    assert files.read_label_png(Layout(cfg).prediction("b")).shape == (41, 50)
    assert not (Layout(cfg).run_dir("eval_deeplab") / "report.json").exists()
    assert Layout(cfg).overlay("a").exists() and not Layout(cfg).overlay("b").exists()


def test_eval_without_a_checkpoint_says_what_to_run(voc_cfg):
    cfg = voc_cfg()
    with pytest.raises(FileNotFoundError, match="TRAIN_DEEPLAB"):
        eval_deeplab.run(cfg)
    with pytest.raises(FileNotFoundError, match="checkpoints/deeplab"):
        main.preflight(cfg, ["eval_deeplab"])
    write_pseudo_labels(cfg)  # TRAIN_DEEPLAB reads CREATE_GUIDE's labels
    main.preflight(cfg, ["train_deeplab", "eval_deeplab"])  # it will be trained first


@pytest.mark.parametrize("chosen, other", [("last", "best"), ("best", "last")])
def test_eval_scores_the_chosen_checkpoint_else_the_other(voc_cfg, chosen, other):
    # last by default: best.pt was picked on the very val masks EVAL_DEEPLAB scores
    cfg = voc_cfg(**{"deeplab.steps": 2, "deeplab.val_every": 1, "eval.checkpoint": chosen})
    write_pseudo_labels(cfg)
    train_deeplab.run(cfg)
    layout = Layout(cfg)
    report_path = layout.run_dir("eval_deeplab") / "report.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eval_deeplab.run(cfg)
        assert json.loads(report_path.read_text())["checkpoint"].endswith(f"{chosen}.pt")
        # the record of what EVAL_DEEPLAB read names that same file
        chosen_digest = provenance.file_digest(layout.checkpoint("deeplab", chosen))
        assert provenance.output_digest(cfg, "train_deeplab") == chosen_digest
        layout.checkpoint("deeplab", chosen).unlink()
        summary = eval_deeplab.run(cfg)
    assert summary["images"] == 5
    report = json.loads(report_path.read_text())
    assert report["checkpoint"].endswith(f"{other}.pt") and report["weakly_supervised"] is True


class Speckled(ColourModel):
    """The colour model with a tenth of its pixels tipped to background by a small margin, the same
    ones at every call of one image size: isolated, unsure errors that the dense CRF smooths away."""

    def forward(self, x):
        logits = super().forward(x)
        generator = torch.Generator().manual_seed(x.shape[-1] * 1000 + x.shape[-2])
        speckles = torch.rand(x.shape[-2:], generator=generator) < 0.1
        tipped = logits.max(1).values + 1.0
        logits[:, 0] = torch.where(speckles, tipped, logits[:, 0])
        return logits


def test_eval_crf_in_a_worker_pool_gives_the_predictions_of_one_process(voc_cfg, monkeypatch):
    # torch's OpenMP threads have run in this process: forked workers would hang, spawned must not
    torch.nn.functional.interpolate(torch.rand(1, 8, 256, 256), scale_factor=2.0, mode="bilinear")
    cfg = voc_cfg(**{"eval.use_crf": True, "eval.overlays": 0, "eval.batch_size": 2})
    _use_model(monkeypatch, Speckled())
    layout = Layout(cfg)
    ids = datasets.build(cfg, "val").ids

    def predictions(**settings) -> tuple[float, dict]:
        for key, value in settings.items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        cfg.runtime.overwrite = True
        summary = eval_deeplab.run(cfg)
        return summary["mIoU"], {i: files.read_label_png(layout.prediction(i)) for i in ids}

    raw_score, raw = predictions(**{"eval.use_crf": False, "runtime.num_workers": 0})
    one_score, one = predictions(**{"eval.use_crf": True, "runtime.num_workers": 0})
    pool_score, pooled = predictions(**{"eval.use_crf": True, "runtime.num_workers": 2})
    assert one_score > raw_score  # the CRF ran and mended speckles
    assert sum(int((one[i] != raw[i]).sum()) for i in ids) > 0
    assert pool_score == one_score and all(np.array_equal(pooled[i], one[i]) for i in ids)
    manifest = json.loads((layout.run_dir("eval_deeplab") / "predictions.json").read_text())
    assert manifest["ids"] == sorted(ids)
