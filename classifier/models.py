"""Multi-label classifiers: an ImageNet backbone, global average pooling, one linear layer.

A GAP + linear head keeps Grad-CAM faithful at any input size and aspect ratio: the network never
needs a fixed 224 x 224 input, so images are classified (and explained) at their own shape.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from common import backbones
from common.backbone_parts import FrozenBatchNormMixin

BACKBONES = backbones.names(for_="classifier")


class MultiLabelClassifier(FrozenBatchNormMixin, nn.Module):
    """``features`` (backbone) -> global average pooling -> dropout -> ``classifier`` (1x1 conv).

    Attributes:
        features: the backbone, returning its last feature map.
        classifier: 1x1 convolution from feature channels to one logit per class.
        default_target_layer: module name (in ``named_modules``) of the layer Grad-CAM explains by
            default: the last ReLU of the backbone.
        mean, std: the RGB normalisation the backbone's weights expect.
    """

    frozen_batchnorm_scope = "features"

    def __init__(
        self,
        *,
        backbone: str,
        num_classes: int,
        pretrained: bool = True,
        weights_path: str = "",
        output_stride: int = 16,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"classifier backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
        form = backbones.form(backbone, for_="classifier")
        if output_stride not in form.output_strides:
            raise ValueError(
                f"output_stride {output_stride}: expected {' or '.join(map(str, sorted(form.output_strides)))}"
            )
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.output_stride = output_stride
        # built (and ImageNet weights loaded) before the head: both draw from the global RNG
        self.features = backbones.build(
            backbone, for_="classifier", output_stride=output_stride, pretrained=pretrained, weights_path=weights_path
        )
        self.default_target_layer = "features." + form.cam_layer
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(form.channels[-1], num_classes, kernel_size=1, bias=True)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.mean, self.std = backbones.normalisation(backbone)

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
        self.set_batchnorm_frozen(True, freeze_affine=True)

    def describe(self) -> dict:
        """What is needed to rebuild this network around a checkpoint."""
        return {"backbone": self.backbone_name, "num_classes": self.num_classes, "output_stride": self.output_stride}


def build_classifier(
    *, backbone: str, num_classes: int, pretrained: bool = True, weights_path: str = "", output_stride: int = 16
) -> MultiLabelClassifier:
    """A :class:`MultiLabelClassifier`; see its docstring."""
    return MultiLabelClassifier(
        backbone=backbone,
        num_classes=num_classes,
        pretrained=pretrained,
        weights_path=weights_path,
        output_stride=output_stride,
    )
