"""The multi-label classifier (TRAIN_SEED). Other stages use it only through :func:`load_trained`
and :func:`find_layer`."""

from __future__ import annotations

import torch
import torch.nn as nn

from classifier.models import MultiLabelClassifier, build_classifier
from common import runtime
from common.errors import InputError
from common.layout import Layout


def load_trained(cfg, class_names: list[str], device: torch.device) -> MultiLabelClassifier:
    """The best trained classifier (the last one when no best exists), in eval mode.

    Raises a clear error when TRAIN_SEED has not run or was trained on other classes."""
    layout = Layout(cfg)
    path = layout.trained_network("classifier")
    if path is None:
        raise FileNotFoundError(
            f"no trained classifier at {layout.checkpoint('classifier').parent}: run "
            f"TRAIN_SEED first (python main.py --stages train_seed)"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    extra = state.get("extra", {})
    if extra.get("class_names") != list(class_names):
        raise InputError(
            f"{path} was trained on classes {extra.get('class_names')}, but the data set has {list(class_names)}"
        )
    model = build_classifier(
        backbone=extra["backbone"],
        num_classes=extra["num_classes"],
        pretrained=False,
        output_stride=extra["output_stride"],
    )
    model.load_state_dict(state["model"])
    return runtime.to_memory_format(model.to(device), cfg.runtime.memory_format).eval()


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module ``name`` of ``model`` (the CAM layer: ``attention.target_layer``, or the model's
    ``default_target_layer`` when that is empty), with a clear error naming the setting."""
    modules = dict(model.named_modules())
    if name not in modules:
        candidates = [n for n in modules if n][-8:]
        raise InputError(
            f"attention.target_layer {name!r} is not a module of the classifier "
            f"(last module names: {', '.join(candidates)})"
        )
    return modules[name]


__all__ = ["MultiLabelClassifier", "build_classifier", "find_layer", "load_trained"]
