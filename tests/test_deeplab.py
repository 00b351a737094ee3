"""DeepLab building blocks: gt selection, models, initialisation guard, own-size inference, CRF,
resumable batches, frozen BatchNorm."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from common import backbones, imagenet, runtime
from common.crf import CrfParams
from deeplab.data import SegmentationSamples, StepBatches, select_gt_images
from deeplab.inference import batch_probabilities, class_probabilities, crf_refine, evaluate
from deeplab.models import build_deeplab

torch.set_num_threads(2)
IDS = [f"img{i:03d}" for i in range(40)]


# ---- gt_percentage ---------------------------------------------------------------------------
def test_gt_selection_ends_and_rounding():
    assert select_gt_images(IDS, 0, seed=1) == set()
    assert select_gt_images(IDS, 100, seed=1) == set(IDS)
    assert len(select_gt_images(IDS, 25, seed=1)) == 10
    assert len(select_gt_images(IDS, 11.3, seed=1)) == 5  # 4.52 images round to 5
    assert len(select_gt_images(IDS, 11.2, seed=1)) == 4  # 4.48 round to 4
    assert len(select_gt_images(IDS[:10], 25, seed=1)) == 3  # 2.5: halves round up
    assert len(select_gt_images(IDS[:10], 4, seed=1)) == 0  # 0.4 image rounds to none
    assert select_gt_images(IDS, 25, seed=1) <= set(IDS)
    with pytest.raises(ValueError, match="not a percentage"):
        select_gt_images(IDS, 100.5, seed=0)
    with pytest.raises(ValueError, match="not a percentage"):
        select_gt_images(IDS, -1, seed=0)


def test_gt_selection_is_reproducible_and_seeded():
    assert select_gt_images(IDS, 30, seed=1) == select_gt_images(list(reversed(IDS)), 30, seed=1)
    assert select_gt_images(IDS, 30, seed=1) != select_gt_images(IDS, 30, seed=2)
    # not simply the first ids in sorted order
    assert select_gt_images(IDS, 30, seed=1) != set(sorted(IDS)[:12])


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_gt_selection_is_nested(seed):
    previous = set()
    for percentage in np.linspace(0, 100, 41):
        chosen = select_gt_images(IDS, float(percentage), seed=seed)
        assert previous <= chosen
        assert len(chosen) == math.floor(len(IDS) * percentage / 100 + 0.5)
        previous = chosen


# ---- models ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "backbone, output_stride",
    [
        ("efficientnet_lite0", 16),
        ("efficientnet_lite0", 8),
        ("mobilenet_v3_large", 16),
        ("mobilenet_v3_large", 8),
        ("resnet50", 16),
        ("resnet50", 8),
        ("resnet101", 16),
        ("resnet101", 8),
    ],
)
def test_models_give_logits_at_input_size(backbone, output_stride):
    torch.manual_seed(0)
    model = build_deeplab(
        backbone=backbone, num_classes=5, output_stride=output_stride, pretrained_backbone=False
    ).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 65, 65))
        features = model.backbone(torch.randn(1, 3, 64, 48))
    assert logits.shape == (1, 5, 65, 65)
    assert features.shape[-2:] == (64 // output_stride, 48 // output_stride)
    assert (model.mean, model.std) == backbones.normalisation(backbone)


def test_lite0_deeplab_gets_the_offline_imagenet_weights():
    import timm

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    imagenet.load_lite0_imagenet(reference)
    model = build_deeplab(backbone="efficientnet_lite0", num_classes=3, output_stride=8)
    expected = reference.state_dict()
    loaded = model.backbone.body.state_dict()
    assert len(loaded) > 100
    for name, tensor in loaded.items():
        assert torch.equal(tensor, expected[name]), name


def _offline(names: list):
    def get_model_weights(name):
        names.append(name)
        raise OSError("network is unreachable")

    return get_model_weights


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v3_large"])
def test_missing_imagenet_weights_are_a_clear_error(monkeypatch, backbone):
    import torchvision

    names = []
    monkeypatch.setattr(torchvision.models, "get_model_weights", _offline(names))
    with pytest.raises(imagenet.WeightsUnavailable, match="weights_path.*pretrained = False"):
        build_deeplab(backbone=backbone, num_classes=3)
    assert names == [backbone]  # ImageNet classification weights, never the COCO DeepLab ones


def test_segmentation_weights_are_never_requested_without_the_option(monkeypatch):
    import torchvision

    names = []
    monkeypatch.setattr(torchvision.models, "get_model_weights", _offline(names))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not weakly supervised" warning either
        for backbone in ("resnet50", "mobilenet_v3_large"):
            model = build_deeplab(backbone=backbone, num_classes=3, pretrained_backbone=False)
            assert model.describe()["segmentation_pretrained"] is False
    assert names == []


def test_segmentation_pretrained_loads_coco_deeplab_and_warns(monkeypatch, capsys):
    import torchvision
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(3)
    published = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    ).state_dict()
    names = []

    class Weights:
        class COCO_WITH_VOC_LABELS_V1:
            @staticmethod
            def get_state_dict(progress=False):
                return published

    def get_model_weights(name):
        names.append(name)
        return Weights

    monkeypatch.setattr(torchvision.models, "get_model_weights", get_model_weights)
    with pytest.warns(UserWarning, match="NOT weakly supervised"):
        model = build_deeplab(backbone="mobilenet_v3_large", num_classes=3, segmentation_pretrained=True)
    assert names == ["deeplabv3_mobilenet_v3_large"]  # and not the ImageNet weights
    assert "NOT weakly supervised" in capsys.readouterr().out
    state = model.state_dict()
    assert torch.equal(state["backbone.body.4.block.1.0.weight"], published["backbone.4.block.1.0.weight"])
    assert torch.equal(state["head.0.convs.1.0.weight"], published["classifier.0.convs.1.0.weight"])
    assert state["head.4.weight"].shape[0] == 3  # a new last layer for our classes
    with pytest.raises(ValueError, match="COCO DeepLab weights"):
        build_deeplab(backbone="efficientnet_lite0", num_classes=3, segmentation_pretrained=True)


# ---- own-size inference ------------------------------------------------------------------------
COLOURS = np.array([(40, 120, 40), (220, 30, 30), (30, 30, 220)], np.uint8)


class ColourModel(nn.Module):
    """Nearest palette colour per pixel: each output pixel depends on its input pixel alone, so
    any misplaced padding, crop or flip shows in the prediction. Refuses inputs whose sides are not
    a multiple of its output stride."""

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        self.mean, self.std = backbones.LITE0_MEAN, backbones.LITE0_STD
        self.output_stride = output_stride
        self.register_buffer("colours", torch.from_numpy(COLOURS / 255.0 * 2 - 1).float())
        self.calls: list[tuple[int, ...]] = []
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % self.output_stride == 0 and x.shape[-2] % self.output_stride == 0
        self.calls.append(tuple(x.shape))
        return -20 * ((x[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)


def paint(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of flat palette colours (plus a little noise) and its mask (255 on a ring)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), np.uint8)
    cy, cx, radius = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4), height // 4
    distance = np.hypot(yy - cy, xx - cx)
    mask[distance < radius] = 1
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 3)
    mask[top : top + height // 3, left : left + width // 4] = 2
    image = COLOURS[mask].astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
    mask[np.abs(distance - radius) < 1.0] = 255  # VOC-style ignore border
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("output_stride", [8, 16])
def test_batched_padded_prediction_is_exact_at_each_images_own_size(output_stride):
    model = ColourModel(output_stride)
    pictures = [paint(h, w, seed) for seed, (h, w) in enumerate([(37, 53), (65, 71), (16, 16), (50, 29)])]
    probabilities = batch_probabilities(model, [image for image, _ in pictures], flip=True)
    assert len(model.calls) == 2  # one padded batch, and its flip
    assert model.calls[0] == (
        4,
        3,
        math.ceil(65 / output_stride) * output_stride,
        math.ceil(71 / output_stride) * output_stride,
    )
    for (image, mask), probs in zip(pictures, probabilities):
        assert probs.shape == (3, *image.shape[:2])
        assert torch.allclose(probs.sum(0), torch.ones(image.shape[:2]), atol=1e-5)
        prediction = probs.argmax(0).numpy()
        keep = mask != 255
        assert (prediction[keep] == mask[keep]).all()


class _Images:
    """A minimal ImageSet of painted images (ids a, b, c; c without a mask)."""

    class_names = ["disc", "box"]
    num_classes = 2

    def __init__(self) -> None:
        self.pictures = {"a": paint(37, 53, 1), "b": paint(65, 71, 2), "c": paint(30, 30, 3)}
        self.ids = list(self.pictures)

    def image(self, image_id):
        return self.pictures[image_id][0]

    def mask(self, image_id):
        return None if image_id == "c" else self.pictures[image_id][1]

    def has_mask(self, image_id):
        return image_id != "c"

    def image_size(self, image_id):
        return self.pictures[image_id][0].shape[:2]


def test_evaluation_scores_exactly_the_images_pixels():
    images = _Images()
    matrix = evaluate(ColourModel(), images, images.ids, batch_size=3)
    masks = [images.mask(i) for i in ("a", "b")]
    valid = np.concatenate([m[m != 255] for m in masks])
    # every labelled pixel once, no padded pixel, nothing from the image without a mask
    assert matrix.matrix.sum() == valid.size
    assert np.array_equal(np.diag(matrix.matrix), np.bincount(valid, minlength=3))
    assert matrix.mean_iou() == 1.0


def test_real_model_prediction_has_the_images_own_size():
    torch.manual_seed(0)
    model = build_deeplab(backbone="efficientnet_lite0", num_classes=4, pretrained_backbone=False).eval()
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3)).astype(np.uint8)
    probs = class_probabilities(model, image, scales=(1.0, 0.75), flip=True)
    assert probs.shape == (4, 37, 53)
    assert torch.allclose(probs.sum(0), torch.ones(37, 53), atol=1e-5)
    # padded into a batch beside a larger image, it still comes back at its own size
    other = np.random.default_rng(1).integers(0, 255, (70, 61, 3)).astype(np.uint8)
    batched = batch_probabilities(model, [image, other])
    assert batched[0].shape == (4, 37, 53) and batched[1].shape == (4, 70, 61)


# ---- CRF post-processing -------------------------------------------------------------------------
def _two_colours():
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, :20] = (230, 20, 20)
    image[:, 20:] = (20, 20, 230)
    prediction = np.zeros((30, 40), np.uint8)
    prediction[:, 17:] = 1  # boundary three pixels off the colour edge
    return image, prediction


def test_crf_snaps_a_label_map_to_the_colour_edge():
    image, prediction = _two_colours()
    refined = crf_refine(image, prediction, 2, 0.6, CrfParams(bilateral_sxy=121, bilateral_srgb=5, bilateral_compat=4))
    assert (refined[:, :20] == 0).mean() > 0.95 and (refined[:, 20:] == 1).all()
    assert (prediction[:, :20] == 0).mean() < 0.9  # it was not there before


def test_crf_from_softmax_unaries():
    image, prediction = _two_colours()
    probabilities = np.where(prediction[None] == np.arange(2)[:, None, None], 0.6, 0.4).astype(np.float32)
    refined = crf_refine(
        image, prediction, 2, 0.9, CrfParams(bilateral_sxy=121, bilateral_srgb=5, bilateral_compat=4), probabilities
    )
    assert (refined[:, :20] == 0).mean() > 0.95 and (refined[:, 20:] == 1).all()


# ---- training data -------------------------------------------------------------------------------
class _Sources:
    def __init__(self, images):
        self.images = images

    def __call__(self):
        return self.images.mask("a")


def test_batches_depend_only_on_seed_and_step():
    images = _Images()
    samples = SegmentationSamples(
        images,
        {"a": _Sources(images), "b": lambda: images.mask("b")},
        crop_size=48,
        scale_min=0.5,
        scale_max=1.5,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        seed=4,
    )
    whole = list(DataLoader(samples, batch_sampler=StepBatches(2, 3, seed=4, start=0, total=6)))
    resumed = list(DataLoader(samples, batch_sampler=StepBatches(2, 3, seed=4, start=4, total=6)))
    assert len(whole) == 6 and len(resumed) == 2
    for (image_a, label_a), (image_b, label_b) in zip(whole[4:], resumed):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)
    assert whole[0][0].shape == (3, 3, 48, 48) and whole[0][1].dtype == torch.int64
    assert not torch.equal(whole[0][0], whole[1][0])
    # padding: 37x53 scaled by <= 1.5 is under 48 on one side somewhere; ignore fills it
    labels = torch.cat([batch[1] for batch in whole])
    assert set(labels.unique().tolist()) <= {0, 1, 2, 255}


def test_batches_are_the_same_with_worker_processes():
    images = _Images()
    samples = SegmentationSamples(
        images,
        {"a": _Sources(images)},
        crop_size=32,
        scale_min=0.7,
        scale_max=1.3,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        seed=1,
    )
    batches = StepBatches(1, 2, seed=1, start=0, total=3)
    serial = list(DataLoader(samples, batch_sampler=batches))
    parallel = list(DataLoader(samples, batch_sampler=batches, num_workers=2, worker_init_fn=runtime.worker_seed))
    for (image_a, label_a), (image_b, label_b) in zip(serial, parallel):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)


def test_frozen_backbone_batchnorm_keeps_its_statistics():
    torch.manual_seed(0)
    model = build_deeplab(backbone="efficientnet_lite0", num_classes=3, pretrained_backbone=False)
    model.train()
    model.freeze_backbone_batchnorm()
    backbone_bn = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    head_bn = [m for m in model.head.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in backbone_bn]
    head_before = head_bn[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    model.eval()
    model.train()  # train() again must not thaw them (validation toggles the mode)
    assert all(not m.training for m in backbone_bn) and all(m.training for m in head_bn)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, backbone_bn))
    assert not torch.equal(head_before, head_bn[0].running_mean)
    assert backbone_bn[0].weight.grad is not None  # the BN scale still learns


# ---- the loss: ignoring the hardest pixels -----------------------------------------------------
class _FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, images):
        return self.logits


def _loss_case():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, 6, generator=generator)
    labels = torch.randint(0, 3, (2, 5, 6), generator=generator)
    labels[0, :2] = 255
    return logits, labels


def test_loss_without_ignoring_is_the_mean_over_labelled_pixels():
    from deeplab.train_deeplab import pixel_loss

    logits, labels = _loss_case()
    loss = pixel_loss(_FixedLogits(logits), (torch.zeros(2, 3, 5, 6), labels), torch.device("cpu"))
    expected = nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_loss_leaves_out_exactly_the_hardest_labelled_pixels(fraction):
    from deeplab.train_deeplab import pixel_loss

    logits, labels = _loss_case()
    network = _FixedLogits(logits)
    loss = pixel_loss(network, (torch.zeros(2, 3, 5, 6), labels), torch.device("cpu"), ignore_hardest=fraction)
    per_pixel = nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    labelled = per_pixel[labels != 255]
    kept = labelled.sort().values[: labelled.numel() - int(labelled.numel() * fraction)]
    assert loss.item() == pytest.approx(kept.mean().item(), rel=1e-6)
    # the left-out pixels get no gradient: the ones with the highest loss
    loss.backward()
    touched = network.logits.grad.abs().sum(1) > 0
    hardest = per_pixel >= labelled.sort().values[kept.numel()]
    assert not (touched & hardest & (labels != 255)).any()
    assert touched.sum() == kept.numel()


def test_ignoring_rises_over_the_warmup_then_holds():
    from types import SimpleNamespace

    from deeplab.train_deeplab import ignore_hardest_at

    settings = SimpleNamespace(ignore_hardest=0.2, ignore_hardest_warmup=0.25, steps=400)
    assert [ignore_hardest_at(settings, s) for s in (0, 50, 100, 399)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    settings.ignore_hardest_warmup = 0.0
    assert ignore_hardest_at(settings, 0) == 0.2


@pytest.mark.parametrize(
    "backbone, output_stride, stride, first_trained",
    [
        ("efficientnet_lite0", 16, 4, "blocks.2.0.conv_dw.weight"),
        ("efficientnet_lite0", 16, 8, "blocks.3.0.conv_dw.weight"),
        # blocks 5-6 are dilated at output stride 16: from the first dilated layer (in block 5.1) on,
        # everything learns; block 5.0 runs undilated and is frozen with the stage before
        ("efficientnet_lite0", 16, 16, "blocks.5.1.conv_dw.weight"),
        ("resnet50", 16, 4, "layer2.0.conv2.weight"),
        # at output stride 8 the dilated layer3 stops the frozen part (it froze all of resnet50 once)
        ("resnet50", 8, 8, "layer3.1.conv2.weight"),
        # squeeze-excitation's pooled 1x1 maps do not end the frozen part early
        ("mobilenet_v3_large", 16, 8, "7.block.1.0.weight"),
    ],
)
def test_frozen_stride_keeps_the_early_layers_and_trains_the_rest(backbone, output_stride, stride, first_trained):
    torch.manual_seed(0)
    model = build_deeplab(backbone=backbone, num_classes=3, output_stride=output_stride, pretrained_backbone=False)
    frozen = model.freeze_early_layers(stride)
    names = [name for name, _ in model.backbone.body.named_parameters()]
    fixed = [name for name, p in model.backbone.body.named_parameters() if not p.requires_grad]
    # the frozen weights are a prefix of the backbone: everything before its first coarser layer
    assert fixed == names[: len(fixed)] and names[len(fixed)] == first_trained and frozen
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert not changed & {f"backbone.body.{name}" for name in fixed}
    assert f"backbone.body.{first_trained}" in changed and "head.4.weight" in changed
    assert model.freeze_early_layers(0) == []
