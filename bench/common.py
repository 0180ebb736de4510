"""Helpers every benchmark script uses: a process's memory from /proc, the CPU's name, the
checkout's params.yaml.

The scripts run as `python bench/<name>.py`, so this folder is on sys.path and `from common import ...`
finds this file (also in the child processes they start the same way).
"""
from __future__ import annotations

import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def repository_params() -> dict:
    """The checkout's params.yaml, validated: the values a benchmark builds its models and runs from
    where it sets nothing itself (create_model takes every model key from its caller)."""
    from lvm.config import load_params  # (after the script has put src/ on the path, if it does)

    return load_params(REPO / "params.yaml")


def proc_status(fields, pid="self") -> dict:
    """{field: bytes} of the kB fields of /proc/PID/status named in `fields` (VmRSS, VmHWM, RssAnon,
    ...); {} when the file cannot be read (the process exited, or no /proc: not Linux)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in fields:
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; elsewhere what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
