"""Multi-label classifiers: an ImageNet backbone, global average pooling, one linear layer.

A GAP + linear head keeps Grad-CAM faithful at any input size and aspect ratio: the network never
needs a fixed 224 x 224 input, so images are classified (and explained) at their own shape.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from common import imagenet

BACKBONES = ("vgg16_bn", "resnet50", "efficientnet_lite0")


class MultiLabelClassifier(nn.Module):
    """``features`` (backbone) -> global average pooling -> dropout -> ``classifier`` (1x1 conv).

    Attributes:
        features: the backbone, returning its last feature map.
        classifier: 1x1 convolution from feature channels to one logit per class.
        default_target_layer: module name (in ``named_modules``) of the layer Grad-CAM explains by
            default: the last ReLU of the backbone.
        mean, std: the RGB normalisation the backbone's weights expect.
    """

    def __init__(self, *, backbone: str, num_classes: int, pretrained: bool = True,
                 weights_path: str = "", output_stride: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"classifier backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride {output_stride}: expected 16 or 32")
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.features, channels, self.default_target_layer = _build_backbone(
            backbone, pretrained=pretrained, weights_path=weights_path, output_stride=output_stride)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1, bias=True)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.mean, self.std = imagenet.normalisation(backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for normalised RGB images (B, 3, H, W) of any size."""
        feature_map = self.features(images)
        pooled = feature_map.mean(dim=(2, 3), keepdim=True)
        return self.classifier(self.dropout(pooled)).flatten(1)

    def backbone_parameters(self):
        return self.features.parameters()

    def head_parameters(self):
        return self.classifier.parameters()

    def freeze_batchnorm(self) -> None:
        """Keep ImageNet BatchNorm statistics and affine weights, also across later ``train()``
        calls: small multi-label batches would only add noise to them."""
        self.batchnorm_frozen = True
        for module in self.features.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for param in module.parameters():
                    param.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> MultiLabelClassifier:
        super().train(mode)
        if getattr(self, "batchnorm_frozen", False):
            for module in self.features.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def describe(self) -> dict:
        """What is needed to rebuild this network around a checkpoint."""
        return {"backbone": self.backbone_name, "num_classes": self.num_classes,
                "output_stride": self.output_stride}


class _TimmFeatures(nn.Module):
    """A timm model used up to its last feature map (``forward_features``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def _build_backbone(name: str, *, pretrained: bool, weights_path: str, output_stride: int):
    import torchvision

    if name == "vgg16_bn":
        vgg = torchvision.models.vgg16_bn(weights=None)
        if pretrained:
            imagenet.load_torchvision_imagenet(vgg, "vgg16_bn", weights_path)
        # index 42 is the ReLU after conv5_3; 43 the last max pool, dropped for output stride 16
        layers = vgg.features if output_stride == 32 else vgg.features[:43]
        return layers, 512, "features.42"
    if name == "resnet50":
        resnet = torchvision.models.resnet50(weights=None,
                                             replace_stride_with_dilation=[False, False, output_stride == 16])
        if pretrained:
            imagenet.load_torchvision_imagenet(resnet, "resnet50", weights_path)
        layers = nn.Sequential(OrderedDict(
            (key, getattr(resnet, key)) for key in
            ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))
        return layers, 2048, "features.layer4"
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0,
                              global_pool="", output_stride=output_stride)
    if pretrained:
        imagenet.load_lite0_imagenet(model, weights_path)
    # bn2 is BatchNorm + ReLU6 after the 1x1 head convolution: the last activation before pooling
    return _TimmFeatures(model), model.num_features, "features.model.bn2"


def build_classifier(*, backbone: str, num_classes: int, pretrained: bool = True,
                     weights_path: str = "", output_stride: int = 16) -> MultiLabelClassifier:
    """A :class:`MultiLabelClassifier`; see its docstring."""
    return MultiLabelClassifier(backbone=backbone, num_classes=num_classes, pretrained=pretrained,
                                weights_path=weights_path, output_stride=output_stride)
