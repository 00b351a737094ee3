"""Dilated convolutions computed without the kernel rows and columns that can only read padding.

torchvision's DeepLabHead dilates the three 3x3 branches of its ASPP by 12, 24 and 36. At output
stride 16 a 192-pixel training crop gives a 12 x 12 map. A tap 12 or more rows (or columns) away
from the centre then reads the zero padding at every output position, so each branch computes a 1x1
convolution at the cost of a 3x3 one (DeepLabv3, Chen et al. 2017, describe this degeneration of
large rates on small maps). Those three branches took about a tenth of a DeepLab training step on the
CPU (fp32, 2 cores; docs/RESULTS.md).

For a stride-1 convolution padded with zeros to keep its size, kernel row ``m`` (counted from the
centre) reaches inside a map of height ``H`` for some output row only when ``|m| * dilation <= H -
1``; the same holds for columns. Dropping the other rows and columns, with the padding only they
needed, gives the same output (for finite inputs: the whole kernel turns an infinite input into NaN
through a product with the padding). It gives the same gradients too: a dropped tap's gradient is
a sum of products with zeros, and the sliced weight receives exact zeros there.

:func:`trim_dead_taps` swaps the layers that qualify for :class:`TrimmedDilationConv2d`, whose
parameters and state_dict keys are those of ``nn.Conv2d``. The check runs at every call, so one
network trains on small crops and segments whole images.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.backbone_parts import keeps_size_dilated, swap_layer_class


def live_half_width(kernel: int, dilation: int, side: int) -> int:
    """How many taps on each side of the centre of an odd ``kernel`` at ``dilation`` can read a
    map of ``side`` pixels (the others read only padding)."""
    return min((kernel - 1) // 2, max(side - 1, 0) // dilation)


class TrimmedDilationConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (stride 1, zero "same" padding, odd kernel, dilated) that leaves out the
    kernel rows and columns which read only padding for the input at hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a traced or exported graph is replayed on other sizes: it keeps the whole kernel
        exporting = torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
        if torch.jit.is_tracing() or torch.jit.is_scripting() or exporting or x.dim() != 4:
            return self._conv_forward(x, self.weight, self.bias)
        (kernel_h, kernel_w), (dilation_h, dilation_w) = self.kernel_size, self.dilation
        half_h = live_half_width(kernel_h, dilation_h, x.shape[-2])
        half_w = live_half_width(kernel_w, dilation_w, x.shape[-1])
        centre_h, centre_w = (kernel_h - 1) // 2, (kernel_w - 1) // 2
        if half_h == centre_h and half_w == centre_w:
            return self._conv_forward(x, self.weight, self.bias)
        weight = self.weight[:, :, centre_h - half_h : centre_h + half_h + 1, centre_w - half_w : centre_w + half_w + 1]
        padding = (half_h * dilation_h, half_w * dilation_w)
        return F.conv2d(x, weight, self.bias, padding=padding, dilation=self.dilation, groups=self.groups)


def qualifies(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` at stride 1, dilated, with an odd kernel and zero padding that keeps
    the map's size: the layers whose outer taps can fall wholly in the padding."""
    # subclasses (timm's Conv2dSame, DilatedDepthwiseConv2d) have their own forward
    return type(module) is nn.Conv2d and keeps_size_dilated(module)


def trim_dead_taps(model: nn.Module) -> int:
    """Make every qualifying layer (:func:`qualifies`) of ``model`` a :class:`TrimmedDilationConv2d`,
    in place (same parameters, same state_dict); returns how many were changed."""
    return swap_layer_class(model, qualifies, TrimmedDilationConv2d)


def keep_dead_taps(model: nn.Module) -> int:
    """Undo :func:`trim_dead_taps` (for comparisons); returns how many were changed."""
    return swap_layer_class(model, lambda module: type(module) is TrimmedDilationConv2d, nn.Conv2d)
