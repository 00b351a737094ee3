"""Process pools for the CPU-bound per-image work of a stage (the guide's pseudo labels, the dense
CRF of EVAL_DEEPLAB): spawned workers with one thread each, which end when the stage's process does.

Spawn, never fork: a child forked from a process whose OpenMP threads have run (torch in an earlier
stage, or a test) hangs in its first parallel region. A process pool executor, not
multiprocessing.Pool: a worker that dies (e.g. out of memory) raises BrokenProcessPool instead of
leaving the stage waiting forever.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


def executor(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, each single-threaded (they share the cores with
    each other and with this process), tied to this process's life, then ``initializer(*initargs)``."""
    return ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start_worker(parent_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent(parent_pid)
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent_pid: int) -> None:
    """Make this pool worker end when the stage's process does, however that one ends.

    A parent killed with SIGKILL runs no clean-up, and the worker's end of the task queue never
    reports the parent gone, so without this the workers (and multiprocessing's resource tracker,
    which waits for them) would live for ever. On Linux the kernel sends SIGTERM at the parent's
    death (prctl PR_SET_PDEATHSIG); elsewhere, and for a parent that died before that was set, a
    daemon thread polls the parent's pid."""
    import signal
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to call: the thread below still works
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died while this worker started
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
