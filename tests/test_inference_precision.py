"""The per-image stages' forward passes under runtime.precision = bf16 (CPU autocast): outputs come
back as float32 and stay close to float32 ones, Grad-CAM's gradients included."""

from __future__ import annotations

import numpy as np
import torch

from attention.gradcam import GradCam
from attention.make_cam import compute_cams
from classifier.models import build_classifier
from common import runtime
from deeplab.inference import batch_probabilities
from deeplab.models import build_deeplab
from saliency.make_saliency import saliency_maps
from saliency.picanet import PiCANet


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_grad_cam_under_bf16_autocast_matches_float32():
    torch.manual_seed(0)
    model = build_classifier(backbone="efficientnet_lite0", num_classes=4, pretrained=False).eval()
    images = torch.randn(2, 3, 64, 64)
    classes = [[0, 2], [3]]
    with GradCam(model, model.default_target_layer) as grad_cam:
        full = compute_cams(grad_cam, images, classes, [1.0], False, (16, 16), "fp32")
        half = compute_cams(grad_cam, images, classes, [1.0], False, (16, 16), "bf16")
    for exact, approximate in zip(full, half):
        assert approximate.dtype == torch.float32 and approximate.shape == exact.shape
        assert exact.abs().sum() > 0  # a real map, not an empty one on both sides
        assert 0 < (approximate - exact).abs().max() < 0.15  # bf16 did run, and stayed close
        assert _correlation(exact, approximate) > 0.98


def test_saliency_and_segmentation_under_bf16_come_back_as_float32():
    torch.manual_seed(0)
    picanet = PiCANet(encoder="efficientnet_lite0").eval()
    images = torch.rand(2, 3, 64, 64)
    sizes = [(50, 70), (64, 64)]
    full = saliency_maps(picanet, images, sizes, False, "fp32")
    half = saliency_maps(picanet, images, sizes, False, "bf16")
    for exact, approximate, size in zip(full, half, sizes):
        assert approximate.dtype == np.float32 and approximate.shape == size
        assert 0 < np.abs(approximate - exact).max() < 0.05

    deeplab = build_deeplab(backbone="efficientnet_lite0", num_classes=3, pretrained_backbone=False).eval()
    pictures = [np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8) for seed in (1, 2)]
    exact = batch_probabilities(deeplab, pictures)
    with runtime.autocast("cpu", "bf16"):
        approximate = batch_probabilities(deeplab, pictures)
    for p, q in zip(exact, approximate):
        assert q.dtype == torch.float32 and q.shape == (3, 40, 56)
        assert torch.allclose(q.sum(0), torch.ones(40, 56), atol=1e-5)
        assert 0 < (p - q).abs().max() < 0.1
