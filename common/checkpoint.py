"""Training state in one file: model, optimiser, scheduler, step, random state, extras.

``extra`` holds what the consumers need to rebuild the network (the stage's ``describe()``: backbone,
num_classes, ...), the settings a resume must share, the best validation result, and, from runs
under several processes, ``rng_ranks``: every rank's random state. Resuming goes through
``common.training.fit``, which compares the settings before any weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common import files, runtime


def save_training_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer=None,
    scheduler=None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    **more: Any,
) -> None:
    """Write the state atomically (a reader never sees half a file, a kill never leaves one);
    ``more``: further entries (state dicts) saved beside these."""
    state = {
        **more,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "rng": runtime.rng_state(),
        "extra": extra or {},
    }
    files.atomic_write(path, lambda handle: torch.save(state, handle))


def read_state(path: Path, map_location="cpu") -> dict[str, Any]:
    """The dict :func:`save_training_state` wrote (or a plain state_dict); OSError naming the file
    when it is missing, truncated or not a torch file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # missing, truncated, or not a torch file
        raise OSError(f"cannot read checkpoint {path}: {err}") from err


def load_model_weights(path: Path, model: torch.nn.Module, map_location="cpu") -> dict[str, Any]:
    """Model weights from a training-state file (or a plain state_dict); returns the file's dict."""
    state = read_state(path, map_location)
    model.load_state_dict(state["model"] if "model" in state else state)
    return state
