"""Worker processes that decode images for ``cache`` and ``predict``, set up one way.

Where the platform can fork, workers fork from the parent: they start in milliseconds with its
modules (Pillow's plugins, numpy) already loaded. Each ignores Ctrl-C (the parent's to handle, so
one key press is one clean stop), ends when the parent is killed (Linux), and runs one thread (the
parallelism is across the processes). ``concurrent.futures.ProcessPoolExecutor`` notices a worker
that died (out of memory, a crash in a decoder) where ``multiprocessing.Pool`` would wait forever.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from uiaa_cli.pixels import images

CAN_FORK = "fork" in mp.get_all_start_methods()


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def start_pool(workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """``workers`` processes set up as the module doc says, each then running ``initializer(*initargs)``."""
    images.preload()  # loaded once here, shared by the forked workers
    context = mp.get_context("fork") if CAN_FORK else mp.get_context()
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    images.init_worker()
    initializer(*initargs)


def _die_with_parent(parent: int) -> None:
    """Linux: end this worker when the parent is killed, instead of leaving it waiting for work."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
