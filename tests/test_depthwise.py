"""common/depthwise.py: the faster CPU backward of dilated depthwise convolutions gives torch's own
gradients, runs only where it is meant to, and leaves the networks' weights and forward alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from step_gradients import assert_same_gradients, cross_entropy_step

from common import backbones
from common.depthwise import (
    DilatedDepthwiseConv2d,
    qualifies,
    use_fast_depthwise_backward,
    use_native_depthwise_backward,
)
from deeplab.models import build_deeplab


def _layer(channels: int, kernel: int, dilation: int, dtype=torch.float32) -> nn.Conv2d:
    layer = nn.Conv2d(
        channels, channels, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=channels, bias=False
    ).to(dtype)
    return layer


def _fast_and_native(channels: int, kernel: int, dilation: int, dtype=torch.float32) -> tuple[nn.Module, nn.Module]:
    """The same random layer twice: with the faster backward, and as torch's nn.Conv2d."""
    native = _layer(channels, kernel, dilation, dtype)
    fast = _layer(channels, kernel, dilation, dtype)
    fast.load_state_dict(native.state_dict())
    assert use_fast_depthwise_backward(fast) == 1 and type(fast) is DilatedDepthwiseConv2d
    return fast, native


def _gradients(layer: nn.Module, x: torch.Tensor, grad_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_()
    output = layer(x)
    weights = [p for p in layer.parameters() if p.requires_grad]
    return (output.detach(), *torch.autograd.grad(output, [x, *weights], grad_output))


@pytest.mark.parametrize(
    ("kernel", "dilation", "channels", "size", "batch"),
    [(5, 2, 16, 12, 2), (3, 2, 8, 9, 1), (3, 4, 4, 20, 3), (5, 3, 6, 7, 2), (7, 2, 3, 11, 1)],
)
def test_fast_backward_gives_torchs_gradients(kernel, dilation, channels, size, batch):
    torch.manual_seed(0)
    fast, native = _fast_and_native(channels, kernel, dilation, torch.float64)
    x = torch.randn(batch, channels, size, size + 3, dtype=torch.float64).to(memory_format=torch.channels_last)
    grad_output = torch.randn(batch, channels, size, size + 3, dtype=torch.float64)
    output = fast(x.clone().requires_grad_())
    assert type(output.grad_fn).__name__ == "_DilatedDepthwiseBackward"  # the faster backward ran
    for ours, theirs in zip(_gradients(fast, x, grad_output), _gradients(native, x, grad_output)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_contiguous_input_inference_and_frozen_weights():
    torch.manual_seed(0)
    fast, native = _fast_and_native(8, 5, 2)
    x = torch.randn(2, 8, 10, 10)
    # contiguous memory: torch's own convolution and backward (the fast one measured slower there)
    assert type(fast(x.requires_grad_()).grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        torch.testing.assert_close(fast(x.to(memory_format=torch.channels_last)), native(x), rtol=0, atol=0)
    # a frozen layer (frozen_stride) still passes the input's gradient back, and only that
    for layer in (fast, native):
        layer.weight.requires_grad_(False)
    x_last = x.detach().to(memory_format=torch.channels_last)
    grad_output = torch.randn(2, 8, 10, 10)
    assert type(fast(x_last.clone().requires_grad_()).grad_fn).__name__ == "_DilatedDepthwiseBackward"
    ours, theirs = _gradients(fast, x_last, grad_output), _gradients(native, x_last, grad_output)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-5)
    # a layer whose shape was changed after the swap falls back to torch's convolution
    fast.padding = (1, 1)
    assert type(fast(x_last.clone().requires_grad_()).grad_fn).__name__ == "ConvolutionBackward0"


def test_bf16_autocast_gradients_match_torchs_and_keep_their_dtypes():
    torch.manual_seed(0)
    fast, native = _fast_and_native(16, 5, 2)
    x = torch.randn(2, 16, 12, 12).to(memory_format=torch.channels_last)
    results = []
    for layer in (fast, native):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = layer(leaf)
        assert output.dtype == torch.bfloat16
        assert (type(output.grad_fn).__name__ == "_DilatedDepthwiseBackward") is (layer is fast)
        output.float().square().sum().backward()
        assert leaf.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
        results.append((leaf.grad, layer.weight.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=3e-2, atol=3e-2 * theirs.abs().max().item())


def test_only_plain_dilated_depthwise_layers_qualify():
    assert qualifies(_layer(8, 5, 2))
    assert not qualifies(_layer(8, 5, 1))  # not dilated: torch's backward is as fast
    assert not qualifies(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False))  # not depthwise
    assert not qualifies(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=True))
    assert not qualifies(nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8, bias=False))
    assert not qualifies(nn.Conv2d(8, 8, 3, padding=1, dilation=2, groups=8, bias=False))  # shrinks the map
    assert not qualifies(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False, padding_mode="reflect"))
    assert not qualifies(nn.Conv2d(8, 8, 3, padding=(2, 4), dilation=2, groups=8, bias=False))
    assert not qualifies(nn.Conv2d(8, 8, (3, 5), padding=(2, 4), dilation=2, groups=8, bias=False))
    assert not qualifies(nn.Conv2d(8, 8, 3, padding=(2, 1), dilation=(2, 1), groups=8, bias=False))
    assert not qualifies(nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=8, bias=False))  # two per channel

    class Padded(nn.Conv2d):  # a subclass pads in its own forward
        pass

    assert not qualifies(Padded(8, 8, 3, padding=2, dilation=2, groups=8, bias=False))


@pytest.mark.parametrize(("name", "dilated"), [("efficientnet_lite0", 4), ("mobilenet_v3_large", 3)])
def test_backbones_at_stride_16_get_the_fast_layers_with_unchanged_weights(name, dilated):
    extractor = backbones.build(name, for_="deeplab", output_stride=16)
    swapped = [m for m in extractor.modules() if type(m) is DilatedDepthwiseConv2d]
    assert len(swapped) == dilated and all(max(m.dilation) > 1 for m in swapped)
    keys = list(extractor.state_dict())
    assert use_native_depthwise_backward(extractor) == dilated
    assert list(extractor.state_dict()) == keys
    assert not any(type(m) is DilatedDepthwiseConv2d for m in extractor.modules())


def test_deeplab_training_step_gradients_match_torchs():
    torch.manual_seed(0)
    model = build_deeplab(backbone="efficientnet_lite0", num_classes=4, pretrained_backbone=False)
    # float64: BatchNorm over a 4 x 4 map in training mode magnifies float32's rounding differences
    model = model.double().to(memory_format=torch.channels_last).train()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 4, (2, 64, 64))
    backward_kinds = []
    for layer in model.modules():
        if type(layer) is DilatedDepthwiseConv2d:
            layer.register_forward_hook(lambda m, i, out: backward_kinds.append(type(out.grad_fn).__name__))
    gradients = []
    for swap in (None, use_native_depthwise_backward):
        if swap:
            assert swap(model) == 4
        gradients.append(cross_entropy_step(model, images, labels)[1])
    # the first pass ran the new backward in all four dilated layers, the second torch's
    assert backward_kinds == ["_DilatedDepthwiseBackward"] * 4 + ["ConvolutionBackward0"] * 4
    assert_same_gradients(gradients[0], gradients[1], rtol=1e-7, atol=1e-9)
