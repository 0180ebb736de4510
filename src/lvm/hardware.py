"""Device and number format: which device a run uses and whether bf16 pays on it.

bf16 is fast only where the hardware multiplies bf16 natively *and* faster than fp32. Where oneDNN
emulates it, it is far slower: on a 2-core AMD EPYC with AVX2 only, one gru training step (batch 32,
L=100, D=384, every position) took 96.9 s in bf16 against 1.08 s in fp32. And native is not enough:
on a 2-core Intel Xeon with AVX-512 BF16 but no AMX (model 207, AMX hidden by the hypervisor) fp32
trained gru 1.74x, hierarchical_gru 1.71x and memory_gru 1.54x faster than bf16 and encoded 1.56x
faster (bench/results/throughput_bf16_no_amx.md: a 2048^2 GEMM 309 GFLOP/s fp32, 153 bf16), while
AMX (Intel) and AMD's AVX-512 BF16 made bf16 1.3-2.5x faster than fp32 (docs/performance.md). So
`precision: auto` takes bf16 where `bf16_pays`: CUDA with native bf16, a CPU with AMX, an AMD CPU
with AVX-512 BF16; fp32 everywhere else. An explicit `bf16` is obeyed, with a warning where emulated.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

import torch

from lvm import LvmError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LvmError(f"params: {key}: {name!r} requested but CUDA is not available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LvmError(f"params: {key}: 'mps' requested but MPS is not available")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run in hardware on `device` (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD, ...); "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def bf16_pays(device: torch.device) -> bool:
    """True where bf16 is faster than fp32 on `device`, by the measurements in this module's docstring."""
    if device.type != "cpu":
        return native_bf16(device)
    if not native_bf16(device):
        return False
    return bool(torch.cpu._is_amx_tile_supported()) or cpu_vendor() == "AuthenticAMD"


_WARNED: set = set()


def resolve_precision(precision: str, device: torch.device, key: str = "train.precision") -> str:
    """'auto' -> 'bf16' where bf16 is faster than fp32 there (bf16_pays), else 'fp32'; 'bf16'/'fp32' as given."""
    if precision == "auto":
        return "bf16" if bf16_pays(device) else "fp32"
    if precision == "bf16" and not native_bf16(device) and (key, device.type) not in _WARNED:
        _WARNED.add((key, device.type))
        print(f"warning: {key}: bf16 on {device.type} without native bf16 is emulated and can be ~90x slower "
              "than fp32 (use auto or fp32)", file=sys.stderr)
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def processes_running(argv_part: bytes) -> int:
    """Processes on this machine whose command line contains `argv_part` (arguments joined by NUL
    bytes, as /proc/PID/cmdline holds them), counted from /proc (0 elsewhere)."""
    from pathlib import Path

    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            count += argv_part in cmdline.read_bytes()
        except OSError:  # the process ended while we looked
            pass
    return count


def queue_workers() -> int:
    """DVC experiment-queue workers running on this machine (`dvc queue start -j N` starts N, each
    running one experiment at a time)."""
    return processes_running(b"exp\x00queue-worker\x00")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers,
    `docker --cpus`), not the host's os.cpu_count()."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)
