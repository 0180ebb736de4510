"""Shared stage entry point: one clear error line and a non-zero exit for bad input or params."""
from __future__ import annotations

import functools
import os
import sys

from lvm import LvmError

EXIT_BAD_INPUT = 2


def stage(fn):
    """Wrap a stage's main(): LvmError -> 'error: ...' on stderr, exit 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        try:
            return fn(*args, **kwargs)
        except LvmError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper
