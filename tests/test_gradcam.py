"""Batched Grad-CAM against a plain per-class Grad-CAM (hooks, one forward and backward per class)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn

from attention.gradcam import GradCam, normalise_maps
from attention.gradcam import per_class_grad_cam as reference_grad_cam
from attention.make_cam import compute_cams
from classifier.models import build_classifier


class TinyGapNet(nn.Module):
    """conv -> ReLU (target) -> GAP -> linear, like the project's classifiers."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class TinyMlpHeadNet(nn.Module):
    """A non-linear head after the target, where Grad-CAM differs from CAM and gradients depend
    on the input."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Tanh()
        )
        self.after = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.after(self.features(x)).amax((2, 3)))


def _tiny_models():
    torch.manual_seed(0)
    gap = TinyGapNet().eval()
    mlp = TinyMlpHeadNet().eval()
    lite0 = build_classifier(backbone="efficientnet_lite0", num_classes=5, pretrained=False).eval()
    return [(gap, "features.4"), (mlp, "features.3"), (lite0, lite0.default_target_layer)]


@pytest.mark.parametrize("model_index", [0, 1, 2], ids=["gap", "mlp_head", "lite0"])
@pytest.mark.parametrize("classes", [[[2]], [[0, 3], [1], [], [4, 2, 0]]], ids=["b1", "b4"])
def test_batched_grad_cam_equals_per_class_reference(model_index, classes):
    model, layer_name = _tiny_models()[model_index]
    torch.manual_seed(1)
    images = torch.randn(len(classes), 3, 48, 40)
    with GradCam(model, layer_name) as grad_cam:
        batched = grad_cam(images, classes)
    layer = dict(model.named_modules())[layer_name]
    for index, image_classes in enumerate(classes):
        assert batched[index].shape[0] == len(image_classes)
        for slot, class_index in enumerate(image_classes):
            expected = reference_grad_cam(model, layer, images[index], class_index)
            got = batched[index][slot]
            assert got.shape == expected.shape
            # equal both raw and after the per-map normalisation the stage applies
            assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
            assert torch.allclose(normalise_maps(got[None]), normalise_maps(expected[None]), atol=1e-4)


def test_grad_cam_maps_differ_between_classes_and_images():
    model, layer_name = _tiny_models()[1]
    images = torch.randn(2, 3, 32, 32)
    with GradCam(model, layer_name) as grad_cam:
        maps = grad_cam(images, [[0, 1], [0]])
    assert not torch.allclose(maps[0][0], maps[0][1])
    assert not torch.allclose(maps[0][0], maps[1][0])


def test_hook_is_released_and_memory_freed():
    model, layer_name = _tiny_models()[0]
    layer = dict(model.named_modules())[layer_name]
    images = torch.randn(3, 3, 32, 32)
    with GradCam(model, layer_name) as grad_cam:
        maps = grad_cam(images, [[0], [1], [2]])
        assert len(layer._forward_hooks) == 1
    assert len(layer._forward_hooks) == 0
    assert all(p.requires_grad for p in model.parameters())  # restored after the block
    probe = weakref.ref(maps[0])
    del maps
    gc.collect()
    assert probe() is None  # nothing (no graph, no cached activation) keeps results alive
    assert grad_cam._activations is None
    # the model is untouched: plain forward passes work and need no gradients afterwards
    with torch.no_grad():
        assert model(images).shape == (3, 5)


def test_hook_is_released_when_the_forward_fails():
    model, layer_name = _tiny_models()[0]
    layer = dict(model.named_modules())[layer_name]
    with pytest.raises(RuntimeError):
        with GradCam(model, layer_name) as grad_cam:
            assert not any(p.requires_grad for p in model.parameters())
            grad_cam(torch.randn(1, 4, 32, 32), [[0]])  # wrong channel count
    assert len(layer._forward_hooks) == 0
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_target_layer_is_a_clear_error():
    model, _ = _tiny_models()[0]
    with pytest.raises(ValueError, match="attention.target_layer 'nope'"):
        GradCam(model, "nope")


def test_flip_and_scales_average_to_normalised_maps():
    model, layer_name = _tiny_models()[1]
    images = torch.randn(2, 3, 40, 56)
    with GradCam(model, layer_name) as grad_cam:
        single = compute_cams(grad_cam, images, [[0], [1, 2]], [1.0], False, (10, 14))
        multi = compute_cams(grad_cam, images, [[0], [1, 2]], [1.0, 0.5], True, (10, 14))
    for maps in single + multi:
        assert maps.shape[1:] == (10, 14)
        assert float(maps.max()) == pytest.approx(1.0, abs=1e-5) or float(maps.max()) == 0.0
        assert float(maps.min()) >= 0.0
    assert not torch.allclose(single[1], multi[1])
    # a flip-averaged map of a flipped image is the flip of the map of the original image
    with GradCam(model, layer_name) as grad_cam:
        a = compute_cams(grad_cam, images, [[0], [1]], [1.0], True, (20, 28))
        b = compute_cams(grad_cam, images.flip(-1), [[0], [1]], [1.0], True, (20, 28))
    for x, y in zip(a, b):
        assert torch.allclose(x, y.flip(-1), atol=1e-4)


def test_normalised_maps_peak_at_one_or_are_all_zero():
    maps = torch.zeros(4, 3, 5)
    maps[0, 1, 2] = 2.5  # evidence
    maps[1, 0, 0] = 6e-6  # below eps: no evidence, not a map with an arbitrary peak
    maps[3] = torch.rand(3, 5) * 1e-3
    out = normalise_maps(maps)
    assert out[0].max() == 1.0 and out[0].sum() == 1.0
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out[2]) == 0
    assert out[3].max() == 1.0 and torch.equal(out[3], maps[3] / maps[3].max())
    assert normalise_maps(torch.zeros(0, 3, 5)).shape == (0, 3, 5)
