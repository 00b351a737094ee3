"""Training state in one file: model, optimiser, scheduler, step, random state, extras."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common import files, runtime


def save_training_state(path: Path, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                        step: int = 0, extra: dict[str, Any] | None = None) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "rng": runtime.rng_state(),
        "extra": extra or {},
    }
    files.atomic_write(path, lambda handle: torch.save(state, handle))


def load_training_state(path: Path, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                        restore_rng: bool = True, map_location="cpu") -> dict[str, Any]:
    """Load what :func:`save_training_state` wrote into the given objects; returns the state."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # missing, truncated, or not a torch file
        raise OSError(f"cannot read checkpoint {path}: {err}") from err
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng and state.get("rng") is not None:
        runtime.set_rng_state(state["rng"])
    return state


def load_model_weights(path: Path, model: torch.nn.Module, map_location="cpu") -> dict[str, Any]:
    """Model weights from a training-state file (or a plain state_dict); returns the file's dict."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # missing, truncated, or not a torch file
        raise OSError(f"cannot read checkpoint {path}: {err}") from err
    model.load_state_dict(state["model"] if "model" in state else state)
    return state
