"""DeepLabV3 (torchvision's ASPP head) on ImageNet-initialised backbones.

Initialisation is from ImageNet *classification* weights only, unless ``segmentation_pretrained``
asks for torchvision's COCO-with-VOC-labels DeepLab weights: those were trained with pixel labels
on the VOC classes, so a result built on them is not weakly supervised (the original thesis code
did this). The option exists for comparison, warns, and is reported wherever it was used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import backbones, imagenet
from common.backbone_parts import FrozenBatchNormMixin
from common.dead_taps import trim_dead_taps

BACKBONES = backbones.names(for_="deeplab")
# backbones torchvision publishes COCO-with-VOC-labels DeepLabV3 weights for
SEGMENTATION_PRETRAINED = ("resnet101", "resnet50", "mobilenet_v3_large")
NOT_WEAK_WARNING = (
    "deeplab.segmentation_pretrained = True: starting from DeepLab weights trained with "
    "pixel labels on the VOC classes; the result is NOT weakly supervised"
)


class DeepLab(FrozenBatchNormMixin, nn.Module):
    """``backbone`` (last feature map) -> DeepLabV3 head -> logits upsampled to the input size.

    Attributes: ``backbone``, ``head``, ``mean``/``std`` (the RGB normalisation the backbone's
    weights expect), ``output_stride``, ``describe()`` (what rebuilds it around a checkpoint).
    """

    frozen_batchnorm_scope = "backbone"

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        name: str,
        num_classes: int,
        output_stride: int,
        segmentation_pretrained: bool,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.segmentation_pretrained = segmentation_pretrained
        self.mean, self.std = backbones.normalisation(name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) for normalised images (B, 3, H, W)."""
        features = self.backbone(images)
        logits = self.head(features)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def freeze_backbone_batchnorm(self, frozen: bool = True) -> None:
        """Keep the backbone's BatchNorm statistics (ImageNet's) in eval mode while training:
        CPU-sized batches give noisy batch statistics. The BN scale and shift still learn."""
        self.set_batchnorm_frozen(frozen)

    def freeze_early_layers(self, stride: int) -> list[str]:
        """Keep the ImageNet weights of the backbone's layers that run before the first one whose
        output is coarser than ``stride`` (4: the stem and the stride-4 stage; 0: none), or that is
        dilated, for any backbone: the order and strides come from one small forward pass. At an
        output stride finer than ``stride``, the first block of the first dilated stage (undilated
        itself, its stride moved into the blocks after it) and the layers of the next block before its
        dilated one are frozen with the stage before. Their weights get no
        gradient, so backward stops early (a cheaper step). Returns the frozen layers' names."""
        if stride <= 0:
            return []
        # (layer, whether it ends the frozen part) in the order they run: the first layer coarser
        # than ``stride``, or dilated. A dilated layer stands in for the stride that a finer output
        # stride took out of its stage, so the frozen part does not swallow the dilated stages
        # (at output stride 8, stride 8 froze the whole of resnet50). A 1x1 output is a pooled
        # branch (squeeze-excitation), not a stage: it ends nothing
        order: list[tuple[str, bool]] = []
        side = 8 * max(stride, self.output_stride)  # whole strides at every layer, a cheap pass

        def hook(name):
            def record(module, inputs, output):
                if isinstance(output, torch.Tensor) and output.dim() == 4:
                    pooled = output.shape[-1] == 1
                    dilated = isinstance(module, nn.Conv2d) and max(module.dilation) > 1
                    order.append((name, not pooled and (side // output.shape[-1] > stride or dilated)))

            return record

        # the layers that hold weights themselves (timm's BatchNormAct2d has children and weights)
        layers = [(n, m) for n, m in self.backbone.named_modules() if any(True for _ in m.parameters(recurse=False))]
        handles = [module.register_forward_hook(hook(name)) for name, module in layers]
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                self.backbone(torch.zeros(1, 3, side, side))
        finally:
            for handle in handles:
                handle.remove()
            self.train(was_training)
        frozen = []
        for name, ends in order:
            if ends:
                break
            frozen.append(name)
        modules = dict(layers)
        for name in frozen:
            for parameter in modules[name].parameters(recurse=False):
                parameter.requires_grad_(False)
        return frozen

    def describe(self) -> dict:
        return {
            "backbone": self.name,
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
            "segmentation_pretrained": self.segmentation_pretrained,
        }


def build_deeplab(
    *,
    backbone: str,
    num_classes: int,
    output_stride: int = 16,
    pretrained_backbone: bool = True,
    weights_path: str = "",
    segmentation_pretrained: bool = False,
    segmentation_weights_path: str = "",
) -> DeepLab:
    """A :class:`DeepLab` whose forward(x) gives logits (B, num_classes, H, W) at the input size.

    Args:
        backbone: resnet101 (the original's), resnet50, mobilenet_v3_large or efficientnet_lite0
            (the only one with ImageNet weights available offline).
        num_classes: outputs, background included (C + 1).
        output_stride: 8 or 16, by dilating the last stage(s) instead of striding.
        pretrained_backbone: load ImageNet classification weights (False = random init, explicit).
        weights_path: local file with the backbone's ImageNet weights instead of a download.
        segmentation_pretrained: start from torchvision's COCO-with-VOC-labels DeepLabV3 (resnet50,
            resnet101, mobilenet_v3_large): NOT weakly supervised; warns. Every tensor but the last
            layer of the head is loaded (the last layer is new when num_classes differs from 21).
        segmentation_weights_path: local file with those DeepLab weights instead of a download.
    Raises:
        ValueError on an unknown backbone or stride; imagenet.WeightsUnavailable when asked-for
        weights cannot be had (the message says how to get them).
    """
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    if backbone not in BACKBONES:
        raise ValueError(f"deeplab.backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    form = backbones.form(backbone, for_="deeplab")
    if output_stride not in form.output_strides:
        raise ValueError(
            f"deeplab.output_stride {output_stride}: expected {' or '.join(map(str, sorted(form.output_strides)))}"
        )
    if segmentation_pretrained and backbone not in SEGMENTATION_PRETRAINED:
        raise ValueError(
            f"deeplab.segmentation_pretrained: torchvision has COCO DeepLab weights for "
            f"{', '.join(SEGMENTATION_PRETRAINED)} only, not {backbone}"
        )
    # the COCO DeepLab weights replace the ImageNet ones, so those are not fetched at all
    load_imagenet = pretrained_backbone and not segmentation_pretrained

    # built (and ImageNet weights loaded) before the head: both draw from the global RNG
    body = backbones.build(
        backbone, for_="deeplab", output_stride=output_stride, pretrained=load_imagenet, weights_path=weights_path
    )
    model = DeepLab(
        body,
        DeepLabHead(form.channels[-1], num_classes),
        name=backbone,
        num_classes=num_classes,
        output_stride=output_stride,
        segmentation_pretrained=segmentation_pretrained,
    )
    if segmentation_pretrained:
        load_segmentation_weights(model, backbone, segmentation_weights_path)
    # the ASPP's rates (12, 24, 36) reach past a small crop's map: those taps read only padding
    trim_dead_taps(model.head)
    return model


def load_segmentation_weights(model: DeepLab, backbone: str, weights_path: str | Path = "") -> None:
    """torchvision's COCO-with-VOC-labels ``deeplabv3_<backbone>`` weights into ``model`` (the
    auxiliary head is dropped; the last head layer only when its class count fits). Warns that the
    result is not weakly supervised."""
    import torchvision

    warnings.warn(NOT_WEAK_WARNING, stacklevel=3)
    print("WARNING: " + NOT_WEAK_WARNING, flush=True)
    name = f"deeplabv3_{backbone}"
    try:
        if weights_path:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        else:
            state = torchvision.models.get_model_weights(name).COCO_WITH_VOC_LABELS_V1.get_state_dict(progress=False)
    except Exception as err:  # no network, missing or corrupt file: one message for all
        raise imagenet.WeightsUnavailable(
            f"cannot load torchvision's {name} COCO_WITH_VOC_LABELS_V1 weights "
            f"({err.__class__.__name__}: {err}); download them where there is internet and set "
            f"deeplab.segmentation_weights_path, or leave deeplab.segmentation_pretrained off"
        ) from err
    target = model.state_dict()
    mapped = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            new = "backbone.body." + key[len("backbone.") :]
        elif key.startswith("classifier."):
            new = "head." + key[len("classifier.") :]
        else:
            continue  # aux_classifier
        if new in target and target[new].shape == value.shape:
            mapped[new] = value
    missing = [k for k in target if k not in mapped and not k.startswith("head.4.")]
    if missing:
        raise imagenet.WeightsUnavailable(
            f"{name} weights do not fit the model: {len(missing)} tensors missing, e.g. {missing[:3]}"
        )
    model.load_state_dict(mapped, strict=False)
