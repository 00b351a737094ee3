"""Lists of items to process: fixed batches, skipping what is done, and sharing across processes.

The per-image stages (CREATE_SALIENCY, CREATE_ATTENTION, CREATE_GUIDE, EVAL_DEEPLAB) follow one
pattern, so that their outputs never depend on the number of processes, on which items a crashed
run had finished, or on which other images shared a batch:

1. :func:`begin_stage` joins torchrun's process group (a no-op alone), and rank 0 deletes the
   ``.part`` files a killed run left in the stage's folders, before any rank writes;
2. :func:`fixed_batches` cuts the *whole* id list into batches (grouped by exact image size where
   the network sees images at their own size, so nothing is padded to fit a neighbour);
3. :func:`my_batches` gives this rank every world-th of those batches that still has an item to do;
   a batch is recomputed whole, exactly as an uninterrupted run computed it;
4. each rank writes only its own items' files; after :func:`distributed.barrier` rank 0 alone
   merges scores and writes reports, previews and tensorboard.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path

from common import distributed, files


def shard(items: Sequence, rank: int | None = None, world: int | None = None) -> list:
    """This process's share of ``items`` (every world-th item from its rank); rank and world come
    from the process group (or torchrun's environment) when not given."""
    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world is None else world
    return list(items[rank::world])


def pending(ids: Iterable[str], done: Callable[[str], bool], overwrite: bool) -> list[str]:
    """The ids still to do: all of them with ``overwrite``, else those ``done(id)`` denies."""
    ids = list(ids)
    return ids if overwrite else [i for i in ids if not done(i)]


def fixed_batches(
    ids: Sequence[str], batch_size: int, group: Callable[[str], Hashable] | None = None
) -> list[list[str]]:
    """``ids`` cut into batches of at most ``batch_size`` that depend on nothing but ``ids``.

    With ``group`` (e.g. the image size) a batch holds ids of one group only; groups come in sorted
    order, ids keep their order inside a group. Computing these batches from the full id list,
    never from the ids still to do, keeps every image beside the same neighbours in every run:
    floating-point kernels may round differently with another batch, which would make a rerun or
    a run on more processes write different bytes."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: must be at least 1")
    if group is None:
        groups = [list(ids)]
    else:
        by_key: dict[Hashable, list[str]] = defaultdict(list)
        for image_id in ids:
            by_key[group(image_id)].append(image_id)
        groups = [by_key[key] for key in sorted(by_key)]
    return [members[start : start + batch_size] for members in groups for start in range(0, len(members), batch_size)]


def my_batches(batches: Sequence[list[str]], done: Callable[[str], bool], overwrite: bool) -> list[list[str]]:
    """This rank's share of ``batches`` (every world-th one), less those whose items are all done."""
    return [batch for batch in shard(batches) if pending(batch, done, overwrite)]


def begin_stage(device=None, folders: Iterable[Path] = ()) -> None:
    """Start of a per-image stage: join the process group (idempotent, a no-op alone); rank 0
    removes what killed runs left half-written in ``folders``; no rank goes on before that is done.

    Only ``.part`` files older than this call are removed, so the temporary file of a process that
    is writing right now (another pipeline on the same folders, say) is left alone."""
    distributed.init_process_group_if_needed(device)
    if distributed.is_main():
        started = time.time()
        for folder in folders:
            files.remove_stale_parts(folder, older_than=started)
    distributed.barrier()
