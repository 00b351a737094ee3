"""DeepLabV3 (torchvision's ASPP head) on ImageNet-initialised backbones.

Initialisation is from ImageNet *classification* weights only, unless ``segmentation_pretrained``
asks for torchvision's COCO-with-VOC-labels DeepLab weights: those were trained with pixel labels
on the VOC classes, so a result built on them is not weakly supervised (the original thesis code
did this). The option exists for comparison and is reported wherever it was used.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import imagenet

BACKBONES = ("resnet101", "resnet50", "mobilenet_v3_large", "efficientnet_lite0")
NOT_WEAK_WARNING = ("deeplab.segmentation_pretrained = True: starting from DeepLab weights trained with "
                    "pixel labels on the VOC classes; the result is NOT weakly supervised")


class DeepLab(nn.Module):
    """``backbone`` (last feature map) -> DeepLabV3 head -> logits upsampled to the input size.

    Attributes: ``backbone``, ``head``, ``mean``/``std`` (the RGB normalisation the backbone's
    weights expect), ``describe()`` (what rebuilds it around a checkpoint).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, name: str, num_classes: int,
                 output_stride: int, segmentation_pretrained: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.segmentation_pretrained = segmentation_pretrained
        self.mean, self.std = imagenet.normalisation(name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        logits = self.head(features)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def freeze_backbone_batchnorm(self) -> None:
        """Keep the backbone's ImageNet BatchNorm statistics (CPU-sized batches are too small)."""
        self.batchnorm_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "DeepLab":
        super().train(mode)
        if getattr(self, "batchnorm_frozen", False):
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def describe(self) -> dict:
        return {"backbone": self.name, "num_classes": self.num_classes,
                "output_stride": self.output_stride, "segmentation_pretrained": self.segmentation_pretrained}


class _LastFeature(nn.Module):
    def __init__(self, body: nn.Module, key: str | None = None) -> None:
        super().__init__()
        self.body, self.key = body, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if isinstance(out, dict):
            return out[self.key]
        return out[-1] if isinstance(out, (list, tuple)) else out


def build_deeplab(*, backbone: str, num_classes: int, output_stride: int = 16,
                  pretrained_backbone: bool = True, weights_path: str = "",
                  segmentation_pretrained: bool = False) -> DeepLab:
    """A :class:`DeepLab` with ``num_classes`` outputs (background included).

    Args:
        backbone: resnet101 (the original's), resnet50, mobilenet_v3_large or efficientnet_lite0
            (ImageNet weights available offline).
        output_stride: 8 or 16, by dilating the last stage(s) (mobilenet_v3_large: 16 only).
        pretrained_backbone: load ImageNet classification weights (False = random init, explicit).
        weights_path: local file with the backbone's ImageNet weights instead of a download.
        segmentation_pretrained: torchvision's COCO-with-VOC-labels DeepLab (resnet50/101 only):
            NOT weakly supervised; warns.
    """
    from torchvision.models import mobilenet_v3_large, resnet50, resnet101
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    if backbone not in BACKBONES:
        raise ValueError(f"deeplab.backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    if output_stride not in (8, 16):
        raise ValueError(f"deeplab.output_stride {output_stride}: expected 8 or 16")
    if segmentation_pretrained and not backbone.startswith("resnet"):
        raise ValueError("deeplab.segmentation_pretrained exists for resnet50/resnet101 only")

    if backbone.startswith("resnet"):
        make = resnet101 if backbone == "resnet101" else resnet50
        dilation = [False, output_stride == 8, True]
        net = make(weights=None, replace_stride_with_dilation=dilation)
        if pretrained_backbone and not segmentation_pretrained:
            imagenet.load_torchvision_imagenet(net, backbone, weights_path)
        body = _LastFeature(IntermediateLayerGetter(net, return_layers={"layer4": "out"}), "out")
        channels = 2048
    elif backbone == "mobilenet_v3_large":
        if output_stride != 16:
            raise ValueError("deeplab.backbone mobilenet_v3_large supports output_stride 16 only")
        net = mobilenet_v3_large(weights=None, dilated=True)
        if pretrained_backbone:
            imagenet.load_torchvision_imagenet(net, "mobilenet_v3_large", weights_path)
        body = _LastFeature(net.features)
        channels = 960
    else:
        import timm

        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True,
                                out_indices=(4,), output_stride=output_stride)
        if pretrained_backbone:
            imagenet.load_lite0_imagenet(net, weights_path)
        body = _LastFeature(net)
        channels = net.feature_info.channels()[-1]
    model = DeepLab(body, DeepLabHead(channels, num_classes), name=backbone, num_classes=num_classes,
                    output_stride=output_stride, segmentation_pretrained=segmentation_pretrained)
    if segmentation_pretrained:
        _load_segmentation_weights(model, backbone, num_classes)
    return model


def _load_segmentation_weights(model: DeepLab, backbone: str, num_classes: int) -> None:
    import torchvision

    warnings.warn(NOT_WEAK_WARNING, stacklevel=3)
    print("WARNING: " + NOT_WEAK_WARNING)
    name = f"deeplabv3_{backbone}"
    try:
        weights = torchvision.models.get_model_weights(name).COCO_WITH_VOC_LABELS_V1
        state = weights.get_state_dict(progress=False)
    except Exception as err:
        raise imagenet.WeightsUnavailable(f"cannot download torchvision's {name} COCO weights: {err}") from err
    mapped = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            mapped["backbone.body.body." + key[len("backbone."):]] = value
        elif key.startswith("classifier."):
            if key.startswith("classifier.4.") and value.shape[0] != num_classes:
                continue  # a new last layer for our classes
            mapped["head." + key[len("classifier."):]] = value
    model.load_state_dict(mapped, strict=False)
