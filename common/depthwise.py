"""A faster CPU backward pass for the dilated depthwise convolutions of a backbone at output stride 16.

EfficientNet-Lite0 (and MobileNetV3) at output stride 16 dilate the depthwise convolutions of their
last stage. On the CPU, in channels-last memory, torch's backward pass of such a layer takes 20 to
70 times its forward pass: a 5x5 layer of 1,152 channels on a 12 x 12 map (batch 8) runs forward in
about 2 ms and backward in about 70 ms. lite0's four such layers took a quarter of a DeepLab training
step (fp32, 2 cores; docs/RESULTS.md).

Both gradients are cheap to compute from operations that are fast there:
- the input's gradient is a depthwise convolution (forward) of the output's gradient with the
  kernel flipped, at the same dilation;
- the weight's gradient, tap by tap, is the per-channel sum of the output's gradient times the
  padded input shifted to that tap, which in channels-last memory reads both in order.

:func:`use_fast_depthwise_backward` swaps the layers that qualify for
:class:`DilatedDepthwiseConv2d`, whose forward is that of ``nn.Conv2d`` and whose weights and
state_dict keys are the same; the faster backward runs only where it was measured to be faster (a
CPU input in channels-last memory that needs a gradient). Anywhere else (contiguous memory, where
it measured slower; CUDA; inference) the layer is an ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.backbone_parts import keeps_size_dilated, swap_layer_class


class _DilatedDepthwise(torch.autograd.Function):
    """``F.conv2d(x, weight, padding=padding, dilation=dilation, groups=channels)`` at stride 1 without
    a bias, with the backward pass described in the module's docstring."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, padding=padding, dilation=dilation, groups=x.shape[1])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        padding, dilation = ctx.padding, ctx.dilation
        # the next layer's backward gives it channels-last; a contiguous one would make both sums slow
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        channels, kernel = weight.shape[0], weight.shape[-1]
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            # the transpose of a stride-1 convolution: the flipped kernel, padded to the input's size
            grad_input = F.conv2d(
                grad_output,
                weight.flip(-1, -2).to(grad_output.dtype),
                padding=dilation * (kernel - 1) - padding,
                dilation=dilation,
                groups=channels,
            ).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # sums in at least float32 (bf16 under autocast); (batch, height, width, channels) views:
            # every tap's sum runs over rows of channels
            total = torch.promote_types(weight.dtype, torch.float32)
            rows = grad_output.to(total).permute(0, 2, 3, 1)
            padded = F.pad(x.to(total), (padding,) * 4).permute(0, 2, 3, 1)
            height, width = rows.shape[1:3]
            grad_weight = torch.empty(channels, kernel, kernel, dtype=total, device=x.device)
            for i in range(kernel):
                for j in range(kernel):
                    top, left = i * dilation, j * dilation
                    grad_weight[:, i, j] = (rows * padded[:, top : top + height, left : left + width]).sum((0, 1, 2))
            grad_weight = grad_weight.view_as(weight).to(weight.dtype)
        return grad_input, grad_weight, None, None


class DilatedDepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (depthwise, stride 1, dilated, "same" padding, no bias) whose backward pass,
    for a CPU input in channels-last memory, is the faster one of this module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the shape is checked again: the Function computes only the layers it was written for
        if uses_fast_backward(x, self.weight) and _computable(self):
            return _DilatedDepthwise.apply(x, self.weight, self.padding[0], self.dilation[0])
        return super().forward(x)


def uses_fast_backward(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a :class:`DilatedDepthwiseConv2d` takes its faster backward for input ``x``."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def qualifies(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that is depthwise (one filter per channel), square, stride 1, dilated,
    padded to keep its size with zeros, without a bias: the layers the faster backward computes."""
    # subclasses (timm's Conv2dSame) pad in their own forward
    return type(module) is nn.Conv2d and _computable(module)


def _computable(module: nn.Conv2d) -> bool:
    return (
        module.groups == module.in_channels == module.out_channels
        and module.bias is None
        and module.kernel_size[0] == module.kernel_size[1]
        and module.dilation[0] == module.dilation[1]
        and keeps_size_dilated(module)
    )


def use_fast_depthwise_backward(model: nn.Module) -> int:
    """Make every qualifying layer (:func:`qualifies`) of ``model`` a :class:`DilatedDepthwiseConv2d`,
    in place (same parameters, same state_dict); returns how many were changed."""
    return swap_layer_class(model, qualifies, DilatedDepthwiseConv2d)


def use_native_depthwise_backward(model: nn.Module) -> int:
    """Undo :func:`use_fast_depthwise_backward` (for comparisons); returns how many were changed."""
    return swap_layer_class(model, lambda module: type(module) is DilatedDepthwiseConv2d, nn.Conv2d)
