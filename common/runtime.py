"""Device choice, seeding, and the random state that training checkpoints carry."""
from __future__ import annotations

import random

import numpy as np
import torch


def select_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is an error, not a surprise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device = {name!r} but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def worker_seed(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: distinct, reproducible NumPy/Python streams per worker."""
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)
