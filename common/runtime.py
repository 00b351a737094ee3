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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
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


PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device: torch.device | str, precision: str):
    """Context manager running the enclosed forward passes at ``precision`` on ``device``.

    ``fp32`` is a no-op (plain float32). ``bf16`` autocasts to bfloat16 on CPU and CUDA. ``fp16``
    autocasts to float16 on CUDA only: on CPU float16 matmuls are slow and its narrow range needs
    a grad scaler that the CPU lacks, so it is refused with a message naming the setting.
    """
    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise ValueError(f"runtime.precision = {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    if precision == "fp16" and device_type != "cuda":
        raise RuntimeError("runtime.precision = fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type, dtype=dtype)


MEMORY_FORMATS = ("contiguous", "channels_last")


def to_memory_format(model: torch.nn.Module, memory_format: str) -> torch.nn.Module:
    """Puts ``model``'s 4-d weights in ``memory_format`` (runtime.memory_format, resolved), in place,
    and returns it: in channels_last, oneDNN and cuDNN keep every convolution's activations
    channels-last too, from any input. A model already in the format is left untouched."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(
            f"memory format {memory_format!r}: expected one of {', '.join(MEMORY_FORMATS)} "
            f"(runtime.memory_format = auto is resolved by config.validate)"
        )
    return model.to(memory_format=torch.channels_last if memory_format == "channels_last" else torch.contiguous_format)


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """Loss scaler for training: active only for fp16 (bf16 has float32's range and needs none).

    A disabled scaler passes ``scale(loss)``, ``step(optimizer)`` and ``update()`` straight through,
    so training loops use it unconditionally.
    """
    device_type = torch.device(device).type
    enabled = precision == "fp16" and device_type == "cuda"
    return torch.amp.GradScaler(device_type if device_type == "cuda" else "cpu", enabled=enabled)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to ``device``, asynchronously from pinned memory when it is a GPU."""
    return tensor.to(device, non_blocking=device.type == "cuda")
