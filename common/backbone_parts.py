"""The torch side of the backbone registry (common/backbones.py): the modules its builders assemble
feature extractors from, the BatchNorm freezing every network built on them shares, and the
conversion of an RGB image into a backbone's input.

The registry itself imports no torch (config.py reads its names); everything here does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def to_tensor(image: np.ndarray, mean, std) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (3, H, W) normalised with ``mean``/``std`` (the backbone's,
    ``backbones.normalisation``); the mean colour becomes 0."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # np.asarray of a PIL image: torch warns on sharing read-only memory
        array = array.copy()
    tensor = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


# ---- layer swaps -----------------------------------------------------------------------------------


def swap_layer_class(model: nn.Module, wanted, new_class: type) -> int:
    """Give every module of ``model`` for which ``wanted(module)`` holds the class ``new_class`` (a
    subclass of its own, or its base, with the same parameters: the state_dict keeps its keys), in
    place; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if wanted(module):
            module.__class__ = new_class
            changed += 1
    return changed


def keeps_size_dilated(module: nn.Conv2d) -> bool:
    """A dilated convolution at stride 1 with an odd kernel, padded with zeros to keep the map's
    size: each output pixel reads taps at multiples of the dilation around itself."""
    kernel, dilation, padding = module.kernel_size, module.dilation, module.padding
    return (
        module.padding_mode == "zeros"
        and module.stride == (1, 1)
        and isinstance(padding, tuple)  # not the string "same"
        and max(dilation) > 1
        and all(k % 2 == 1 and p == d * (k - 1) // 2 for k, d, p in zip(kernel, dilation, padding))
    )


# ---- frozen BatchNorm ----------------------------------------------------------------------------


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer (any dimension, SyncBatchNorm included) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class FrozenBatchNormMixin:
    """For an ``nn.Module`` built on a registry backbone held in the submodule named by
    ``frozen_batchnorm_scope``: once frozen, the backbone's BatchNorm layers keep their (ImageNet)
    running statistics, i.e. stay in eval mode through every later ``train()`` call, so a
    validation pass (eval, then train) cannot thaw them. Put it before ``nn.Module`` in the bases.
    """

    frozen_batchnorm_scope: str = "backbone"
    batchnorm_frozen: bool = False

    def set_batchnorm_frozen(self, frozen: bool = True, *, freeze_affine: bool = False) -> None:
        """Freeze (or thaw) the backbone's BatchNorm statistics.

        Args:
            frozen: keep the statistics; False lets them follow ``train()`` again.
            freeze_affine: also stop the BatchNorm scale and shift from learning (``requires_grad``
                follows ``not frozen``); otherwise they keep learning with frozen statistics.
        """
        self.batchnorm_frozen = frozen
        if freeze_affine:
            for layer in batchnorm_layers(getattr(self, self.frozen_batchnorm_scope)):
                for param in layer.parameters():
                    param.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.batchnorm_frozen:
            for layer in batchnorm_layers(getattr(self, self.frozen_batchnorm_scope)):
                layer.eval()
        return self


# ---- extractors returning one feature map --------------------------------------------------------


class TimmFeatures(nn.Module):
    """A timm model used up to its last feature map (``forward_features``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


class LastFeature(nn.Module):
    """The last feature map of ``body`` (a dict, list or tensor output) as one tensor."""

    def __init__(self, body: nn.Module, key: str | None = None) -> None:
        super().__init__()
        self.body, self.key = body, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if isinstance(out, dict):
            return out[self.key]
        return out[-1] if isinstance(out, (list, tuple)) else out


def dilate_to_output_stride(features: nn.Module, output_stride: int) -> None:
    """Turn every stride-2 convolution that would take ``features`` past ``output_stride`` into a
    stride-1 one and dilate it and every later spatial convolution instead (in place; the weights
    stay valid). With output_stride 16 on MobileNetV3 this is torchvision's ``dilated=True``."""
    stride, dilation = 1, 1
    for module in features.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        step = module.stride[0]
        if step > 1:
            if stride * step > output_stride:
                module.stride = (1, 1)
                dilation *= step
            else:
                stride *= step
        if module.kernel_size[0] > 1 and dilation > 1:
            module.dilation = (dilation, dilation)
            module.padding = ((module.kernel_size[0] - 1) // 2 * dilation,) * 2


# ---- pyramids of taps (PiCANet's encoders), coarse to fine ---------------------------------------


def _vgg16_layers() -> nn.Sequential:
    """torchvision's vgg16().features with block 4's pool made 1x1/stride 1 and block 5 dilated."""
    layers: list[nn.Module] = []
    plan = [
        (3, 64),
        (64, 64),
        "P",
        (64, 128),
        (128, 128),
        "P",
        (128, 256),
        (256, 256),
        (256, 256),
        "P",
        (256, 512),
        (512, 512),
        (512, 512),
        "P1",
        (512, 512, 2),
        (512, 512, 2),
        (512, 512, 2),
        "P1",
    ]
    for item in plan:
        if item == "P":
            layers.append(nn.MaxPool2d(2, 2))
        elif item == "P1":
            layers.append(nn.MaxPool2d(1, 1))
        else:
            dilation = item[2] if len(item) == 3 else 1
            layers += [nn.Conv2d(item[0], item[1], 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class VGGEncoder(nn.Module):
    """Taps conv1..conv5 of the dilated VGG16 and conv7 (fc6/fc7 as convolutions); the public
    PiCANet checkpoint's encoder, tensor for tensor."""

    SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 31))

    def __init__(self) -> None:
        super().__init__()
        self.seq = _vgg16_layers()
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=12, dilation=12)
        self.conv7 = nn.Conv2d(1024, 1024, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for start, stop in self.SLICES:
            x = self.seq[start:stop](x)
            taps.append(x)
        conv7 = self.conv7(self.conv6(taps[-1]))
        return [conv7, taps[4], taps[3], taps[2], taps[1], taps[0]]  # decoder order


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0 pyramid at output stride 16: taps of 320, 112 (14 x 14 at 224), 40 (28),
    24 (56) and 16 (112) channels, in decoder order. (Stride 8 would match the VGG maps but costs
    four times more on a CPU for no gain we could measure.)"""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(
            "tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3, 4), output_stride=16
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(reversed(self.body(x)))
