"""Batched Grad-CAM: the maps of several classes per image from one forward pass per batch.

The target layer's output is replaced, through a forward hook, by a leaf tensor that requires
gradients. Backward passes therefore stop at the target layer: after the single forward, each class
slot costs one backward through the layers *after* the target (for our classifiers, the pooling and
the linear head), never through the backbone. Slot k holds the k-th ground-truth class of every image
in the batch at once, since images in a batch do not interact in eval mode.

Inside the context the model's parameters stop requiring gradients (Grad-CAM needs gradients of
activations, never of weights), so the backbone's forward records no autograd graph at all: on a CPU
that alone makes the forward about five times faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from classifier import find_layer


class GradCam:
    """Context manager owning the hook; released on exit whatever happens.

    >>> with GradCam(model, "features.42") as grad_cam:
    ...     maps = grad_cam(images, [[3], [1, 7]])   # per image: (K, h, w) ReLU'd Grad-CAMs
    """

    def __init__(self, model: nn.Module, target_layer: str) -> None:
        self.model = model
        self.layer = find_layer(model, target_layer)
        self._handle = None
        self._activations: torch.Tensor | None = None
        self._requires_grad: list[tuple[nn.Parameter, bool]] = []

    def __enter__(self) -> GradCam:
        self._requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        for param, _ in self._requires_grad:
            param.requires_grad_(False)
        self._handle = self.layer.register_forward_hook(self._capture)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for param, wanted in self._requires_grad:
            param.requires_grad_(wanted)
        self._requires_grad = []
        self._activations = None

    def _capture(self, module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        self._activations = leaf
        # a clone, so that in-place layers after the target do not write into the leaf
        return leaf.clone()

    def __call__(self, images: torch.Tensor, classes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Grad-CAMs, ReLU'd but not normalised, at the target layer's resolution.

        Args:
            images: normalised batch (B, 3, H, W); the model must be in eval mode.
            classes: for each image, the logit indices to explain (may be empty).
        Returns: one tensor (K_b, h, w) per image, in the order of ``classes[b]``.
        """
        if self._handle is None:
            raise RuntimeError("GradCam must be used inside a with-block")
        if len(classes) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(classes)} class lists")
        with torch.enable_grad():
            logits = self.model(images)
            activations = self._activations
            batch, channels, height, width = activations.shape
            # the CAM itself in float32 even when the forward ran under autocast (bf16/fp16):
            # in 8 mantissa bits the channel sum loses the small maps' detail
            maps = [activations.new_zeros((len(c), height, width), dtype=torch.float32) for c in classes]
            slots = max((len(c) for c in classes), default=0)
            for slot in range(slots):
                selector = torch.zeros_like(logits)
                for index, image_classes in enumerate(classes):
                    if slot < len(image_classes):
                        selector[index, image_classes[slot]] = 1.0
                (gradients,) = torch.autograd.grad(
                    logits, activations, grad_outputs=selector, retain_graph=slot < slots - 1
                )
                weights = gradients.float().mean(dim=(2, 3), keepdim=True)
                cams = F.relu((weights * activations.float()).sum(dim=1))
                for index, image_classes in enumerate(classes):
                    if slot < len(image_classes):
                        maps[index][slot] = cams[index].detach()
        self._activations = None
        return maps


def normalise_maps(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Divide each map (K, h, w) by its maximum, so every map peaks at 1; a map whose maximum is
    ``eps`` or less holds no evidence and becomes all zero (dividing by ``eps`` instead would give
    it an arbitrary peak below 1, as a barely trained classifier under bf16 showed)."""
    if not maps.numel():
        return maps
    peak = maps.flatten(1).amax(dim=1)
    divisor = torch.where(peak > eps, peak, torch.full_like(peak, float("inf")))  # x / inf = 0
    return maps / divisor[:, None, None]


def per_class_grad_cam(model: nn.Module, layer: nn.Module, image: torch.Tensor, class_index: int) -> torch.Tensor:
    """Textbook Grad-CAM of one class of one image (C, H, W): a full forward and backward through
    the whole network with hooks on ``layer``; unnormalised (h, w). The reference that tests and
    benchmarks hold :class:`GradCam` to, and the original's way of working."""
    store = {}

    def keep(module, inputs, output):
        store["activation"] = output
        output.register_hook(lambda grad: store.__setitem__("gradient", grad))

    handle = layer.register_forward_hook(keep)
    try:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = model(image[None])
            logits[0, class_index].backward()
    finally:
        handle.remove()
    weights = store["gradient"].mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * store["activation"]).sum(1))[0].detach()
