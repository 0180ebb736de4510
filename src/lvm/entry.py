"""How every stage and script starts: LvmError (bad input or params) becomes one `error:` line on
stderr and exit status 2, never a traceback.

Imports no lvm stage, so every stage and the `lvm` command can import it without a circle.
"""
from __future__ import annotations

import argparse
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


def stage_main(run, description: str | None = None, data: str | None = None, paths: dict | None = None,
               options: dict | None = None, argv_to: str | None = None):
    """`main(argv)` for `python -m lvm.stages.<name> [--params FILE]`: validated params -> run(params).

    data="data_dir": the stage also takes a required `--data DIR`, the windows' directory dvc.yaml
    names once (`${windows}`), passed on as run(params, data_dir=DIR).
    paths={"--flag": "argument"}: more required paths, each passed on as run(..., argument=PATH). The
    stage's command in dvc.yaml names every file it reads or writes, next to the outputs it declares,
    so that dvc.yaml is the only place a path is written.
    options={"--flag": {argparse keywords}}: the stage's other options (train's --model), each passed
    on under its dest.
    argv_to="argv": run(..., argv=[...]) also gets the arguments the stage was started with (train
    relaunches itself with them under torchrun)."""

    @stage
    def main(argv=None):
        from lvm.config import load_params

        parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--params", default="params.yaml")
        if data:
            parser.add_argument("--data", required=True, metavar="DIR", help="the windows' directory (dvc.yaml: ${windows})")
        for flag, argument in (paths or {}).items():
            parser.add_argument(flag, required=True, dest=argument, metavar="PATH")
        dests = [parser.add_argument(flag, **keywords).dest for flag, keywords in (options or {}).items()]
        args = parser.parse_args(argv)
        kwargs = {argument: getattr(args, argument) for argument in [*(paths or {}).values(), *dests]}
        if data:
            kwargs[data] = args.data
        if argv_to:
            kwargs[argv_to] = list(sys.argv[1:] if argv is None else argv)
        run(load_params(args.params), **kwargs)

    return main
