"""Shared by test_depthwise.py and test_dead_taps.py: one cross-entropy training step of a network
and its gradients, to compare a layer swap with torch's own layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_step(model, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(loss, {parameter name: gradient}) of one forward and backward pass of ``model``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the head's dropout draws the same mask in every pass
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(ours: dict, theirs: dict, rtol: float, atol: float) -> None:
    assert ours.keys() == theirs.keys()
    for name, gradient in ours.items():
        message = lambda m, name=name: f"{name}: {m}"  # noqa: E731
        torch.testing.assert_close(gradient, theirs[name], rtol=rtol, atol=atol, msg=message)
