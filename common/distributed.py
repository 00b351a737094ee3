"""Process groups under torchrun: one place that knows the rank, the world and the backend.

Without torchrun (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) every helper here is a
cheap no-op for a single process, so stages call them unconditionally. Under torchrun,
``init_process_group_if_needed()`` joins the group once: gloo on CPU, NCCL when the device is CUDA.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as error:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from error


def launched_world_size() -> int:
    """The world size torchrun announced (1 without torchrun), whether or not the group exists yet."""
    return _env_int("WORLD_SIZE", 1)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_process_group_if_needed(device: torch.device | str | None = None) -> bool:
    """Join torchrun's process group once; return whether this process is part of a group of more than one.

    The backend follows ``device``: NCCL for CUDA (each rank then uses GPU ``LOCAL_RANK``), gloo
    otherwise. Called again, or without torchrun, it does nothing.
    """
    if is_initialized():
        return dist.get_world_size() > 1
    if launched_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: from the process group when joined, else torchrun's ``RANK`` (0 alone)."""
    return dist.get_rank() if is_initialized() else _env_int("RANK", 0)


def world_size() -> int:
    """Number of processes: from the process group when joined, else torchrun's ``WORLD_SIZE`` (1 alone)."""
    return dist.get_world_size() if is_initialized() else launched_world_size()


def local_rank() -> int:
    """Rank on this machine (torchrun's ``LOCAL_RANK``): the GPU index under NCCL."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0 writes checkpoints, logs and reports; the others only compute."""
    return rank() == 0


def device_for_rank(device: torch.device) -> torch.device:
    """With several processes on CUDA each rank owns GPU ``LOCAL_RANK``; a CPU device is shared."""
    if device.type == "cuda" and world_size() > 1 and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every rank, in place; returns it. Alone, it is returned unchanged."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over every rank, in place (a floating tensor); returns it."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order; alone, ``[obj]``."""
    if is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def broadcast_object(obj: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``obj`` on every rank (e.g. a decision only rank 0 can make)."""
    if is_initialized() and dist.get_world_size() > 1:
        holder = [obj]
        dist.broadcast_object_list(holder, src=source)
        return holder[0]
    return obj


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()
