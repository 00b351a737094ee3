"""Lists of items to process: skip what is done, and split across processes (torchrun)."""
from __future__ import annotations

import os
from typing import Callable, Iterable


def shard(items: list, rank: int | None = None, world: int | None = None) -> list:
    """This process's share of ``items`` (every world-th item from rank), from torchrun's
    RANK and WORLD_SIZE when not given."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    return items[rank::world]


def pending(ids: Iterable[str], done: Callable[[str], bool], overwrite: bool) -> list[str]:
    """The ids still to do: all of them with ``overwrite``, else those ``done(id)`` denies."""
    ids = list(ids)
    return ids if overwrite else [i for i in ids if not done(i)]
