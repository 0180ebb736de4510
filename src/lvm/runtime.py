"""Process-wide settings of a run: seeds, intra-op threads, denormal flushing, glibc's malloc.

(Which device and number format a run uses is lvm.hardware.)
"""
from __future__ import annotations

import os
import random
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch

from lvm.hardware import queue_workers, usable_cpus


# Denormal flushing is a per-thread CPU flag that OpenMP threads take from the thread that creates
# them. torch creates its pool at the first parallel op, so flushing switched on after that reaches the
# main thread only, and the same run gives other last digits: lvm.ablation, which fitted baselines
# before training, trained a gru whose best val cosine was 0.465931 against train_baseline's 0.465930.
# Switched on here, at import, it precedes any parallel op of a process that imports lvm first.
torch.set_flush_denormal(True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_threads(processes: int = 1) -> int:
    """What `train.threads: 0` means: the usable CPUs shared evenly by this node's `processes` (DDP)
    and, inside a DVC experiment (DVC_EXP_NAME is set for `dvc exp run` and queued runs, not for
    `dvc repro`), by the queue workers running on this machine. Without the second share,
    `dvc queue start -j 2` on 2 cores ran 4 spinning OpenMP threads and took 2.29x the wall time of
    `-j 1` for the same queue; with one thread per worker 0.79x (bench/queue_workers.py)."""
    share = max(processes, 1)
    if os.environ.get("DVC_EXP_NAME"):
        share *= max(1, queue_workers())
    return max(1, usable_cpus() // share)


def set_threads(threads: int, processes: int = 1) -> None:
    """`threads` intra-op threads (0 = `default_threads(processes)`). Call it before any parallel torch
    op of the process (every stage does, first): see the denormal note above."""
    torch.set_num_threads(threads or default_threads(processes))
    torch.set_flush_denormal(True)  # denormal floats (tiny gradients) run 10-100x slower on CPUs
    tune_malloc()


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc only; LVM_MALLOC_TUNE=0 skips it).

    glibc serves blocks above a (dynamic) threshold with fresh mmap()s and unmaps them on free, so
    every multi-MB activation of every step is page-faulted and zeroed by the kernel again: on this
    2-core machine that cost ~25% of a GRU layer's training step. With the mmap threshold at its
    32 MiB maximum and trimming off, those blocks are recycled from the heap instead. Peak RSS is
    unchanged; memory freed after the peak stays mapped to the process until it exits.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("LVM_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return _MALLOC_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        ok = False
    _MALLOC_TUNED = ok
    return ok


class Clock:
    """Where a stage's wall time goes (logs/<stage>.jsonl, docs/performance.md's budget): seconds per
    phase of this process (a phase inside another, e.g. the first validation inside train's "setup",
    counted in both). `seconds_startup`: from the process's start to the Clock (interpreter, imports;
    psutil's process start time); `share_train_steps`: train steps over startup + run."""

    def __init__(self):
        self.t0, self.seconds, self.open = time.perf_counter(), defaultdict(float), {}

    def start(self, phase: str) -> None:
        self.open[phase] = time.perf_counter()

    def stop(self, phase: str) -> None:
        self.seconds[phase] += time.perf_counter() - self.open.pop(phase)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    @contextmanager
    def __call__(self, phase: str):
        self.start(phase)
        try:
            yield
        finally:
            self.stop(phase)

    def summary(self) -> dict:
        wall = time.perf_counter() - self.t0
        out = {f"seconds_{k}": round(v, 2) for k, v in sorted(self.seconds.items())}
        out["seconds_run"] = round(wall, 2)
        startup = 0.0
        try:
            import psutil
            startup = max(0.0, time.time() - wall - psutil.Process().create_time())
            out["seconds_startup"] = round(startup, 2)
        except (ImportError, OSError):
            pass
        if "train_steps" in self.seconds:
            out["share_train_steps"] = round(self.seconds["train_steps"] / (wall + startup), 3)
        return out
