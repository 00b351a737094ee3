"""common/dead_taps.py: a dilated convolution without the taps that read only padding gives the whole
kernel's output and gradients, at every map size, and DeepLab's ASPP uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from step_gradients import assert_same_gradients, cross_entropy_step

from common.dead_taps import TrimmedDilationConv2d, keep_dead_taps, live_half_width, qualifies, trim_dead_taps
from deeplab.models import build_deeplab


def _pair(in_channels, out_channels, kernel, dilation, groups=1, bias=True):
    """The same random layer twice: trimmed, and as torch's nn.Conv2d (float64)."""
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    whole = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, groups=groups, bias=bias)
    whole = whole.double()
    trimmed = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, groups=groups, bias=bias)
    trimmed = trimmed.double()
    trimmed.load_state_dict(whole.state_dict())
    assert trim_dead_taps(trimmed) == 1 and type(trimmed) is TrimmedDilationConv2d
    return trimmed, whole


def _output_and_gradients(layer, x, grad_output):
    x = x.detach().clone().requires_grad_()
    output = layer(x)
    return (output.detach(), *torch.autograd.grad(output, [x, *layer.parameters()], grad_output))


@pytest.mark.parametrize(
    ("kernel", "dilation", "groups", "bias", "size"),
    [
        ((3, 3), (12, 12), 1, False, (12, 12)),  # the ASPP at crop 192: only the centre tap is live
        ((3, 3), (12, 12), 1, False, (14, 20)),  # a whole MSRC image: every tap live
        ((3, 3), (24, 24), 1, True, (14, 20)),
        ((3, 3), (12, 12), 1, True, (13, 5)),  # rows live, columns dead
        ((5, 5), (3, 3), 2, True, (7, 4)),  # a 5 x 5 kernel keeping 5 x 3 taps
        ((5, 3), (2, 6), 4, False, (3, 9)),
        ((3, 3), (36, 36), 1, False, (1, 1)),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_trimmed_layer_gives_the_whole_kernels_output_and_gradients(
    kernel, dilation, groups, bias, size, channels_last, monkeypatch
):
    torch.manual_seed(0)
    trimmed, whole = _pair(4, 8, kernel, dilation, groups, bias)
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    if channels_last:  # input and weights, as runtime.memory_format trains
        x = x.to(memory_format=torch.channels_last)
        trimmed, whole = (m.to(memory_format=torch.channels_last) for m in (trimmed, whole))
    grad_output = torch.randn(2, 8, *size, dtype=torch.float64)
    # the kernel the trimmed layer really convolves with: only the live taps
    kernels_used = []
    convolve = F.conv2d
    monkeypatch.setattr(
        F, "conv2d", lambda x, w, *a, **k: kernels_used.append(tuple(w.shape[2:])) or convolve(x, w, *a, **k)
    )
    ours = _output_and_gradients(trimmed, x, grad_output)
    monkeypatch.setattr(F, "conv2d", convolve)
    live = tuple(2 * live_half_width(k, d, side) + 1 for k, d, side in zip(kernel, dilation, size))
    assert kernels_used == [live]
    theirs = _output_and_gradients(whole, x, grad_output)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the dead taps' gradients are exact zeros in both
    weight_grad = ours[2]
    for axis, (k, d, side) in enumerate(zip(kernel, dilation, size)):
        half, centre = live_half_width(k, d, side), (k - 1) // 2
        dead = [i for i in range(k) if abs(i - centre) > half]
        if dead:
            assert weight_grad.index_select(2 + axis, torch.tensor(dead)).abs().max() == 0


def test_bf16_autocast_and_unbatched_input():
    torch.manual_seed(0)
    trimmed, whole = _pair(4, 8, (3, 3), (12, 12))
    trimmed, whole = trimmed.float(), whole.float()
    x = torch.randn(2, 4, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = trimmed(x), whole(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=2e-2)
    # a (C, H, W) input goes to nn.Conv2d's own path
    torch.testing.assert_close(trimmed(x[0]), whole(x[0]), rtol=1e-6, atol=1e-6)


def test_live_half_width():
    assert live_half_width(3, 12, 12) == 0  # offset 12 reaches past row 11
    assert live_half_width(3, 12, 13) == 1
    assert live_half_width(5, 2, 4) == 1  # offsets 2 live, 4 dead
    assert live_half_width(5, 2, 5) == 2
    assert live_half_width(3, 1, 1) == 0


def test_only_plain_stride_one_same_padded_dilated_layers_qualify():
    assert qualifies(nn.Conv2d(4, 4, 3, padding=12, dilation=12))
    assert qualifies(nn.Conv2d(4, 4, (3, 5), padding=(2, 6), dilation=(2, 3), groups=4))
    refused = [
        nn.Conv2d(4, 4, 3, padding=1),  # not dilated
        nn.Conv2d(4, 4, 3, padding=12, dilation=12, stride=2),
        nn.Conv2d(4, 4, 3, padding=6, dilation=12),  # shrinks the map
        nn.Conv2d(4, 4, 4, padding=18, dilation=12),  # even kernel
        nn.Conv2d(4, 4, 3, padding=12, dilation=12, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same", dilation=12),
        TrimmedDilationConv2d(4, 4, 3, padding=12, dilation=12),  # already swapped
    ]
    assert not any(qualifies(layer) for layer in refused)


def test_traced_graph_keeps_the_whole_kernel():
    # a graph traced on a small map and replayed on a larger one must not have dropped the taps
    torch.manual_seed(0)
    trimmed, whole = _pair(3, 5, (3, 3), (12, 12))
    traced = torch.jit.trace(trimmed, torch.randn(1, 3, 12, 12, dtype=torch.float64))
    larger = torch.randn(1, 3, 20, 20, dtype=torch.float64)
    torch.testing.assert_close(traced(larger), whole(larger), rtol=1e-12, atol=1e-12)


def test_deeplab_aspp_is_trimmed_and_trains_as_with_every_tap():
    torch.manual_seed(0)
    model = build_deeplab(backbone="efficientnet_lite0", num_classes=4, pretrained_backbone=False)
    trimmed = [name for name, m in model.named_modules() if type(m) is TrimmedDilationConv2d]
    assert trimmed == ["head.0.convs.1.0", "head.0.convs.2.0", "head.0.convs.3.0"]  # rates 12, 24, 36
    keys = list(model.state_dict())
    # float64: BatchNorm over a small map in training mode magnifies float32's rounding differences
    model = model.double().train()
    # 96 x 96: a 6 x 6 map at output stride 16, where every ASPP branch is its centre tap
    images = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 96, 96))
    results = []
    for undo in (None, keep_dead_taps):
        if undo:
            assert undo(model) == 3
        results.append(cross_entropy_step(model, images, labels))
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    assert_same_gradients(results[0][1], results[1][1], rtol=1e-7, atol=1e-10)
