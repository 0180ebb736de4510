"""dvc.yaml is the map of the system; this module reads it so that no path or experiment list is
written a second time in code.

- `windows_dir()`: where export_ctx100 writes the windows every later stage reads (dvc.yaml's
  `vars: windows`, used there by the export's outputs, the train stages' deps and the stages' `--data`).
- `experiments()`: experiment -> model, one entry per `train_<experiment>` stage, read from its
  command (`python -m lvm.stages.train --model M --experiment E`), in dvc.yaml's order. evaluate
  scores every one of them; adding a model to the experiments is one stage block in dvc.yaml (plus
  its best.pt and dvclive curves among evaluate's deps, which tests/test_pipeline.py checks).
- `stage_option()`: a path a stage's command passes (e.g. evaluate's `--report`), for whoever reads
  that output outside the pipeline (lvm.docs).
- `labels()`: the name each experiment is reported under: its model's name, or model_experiment
  when an earlier experiment already trains that model (so `gru` stays train_baseline's figures in
  every `dvc metrics diff` and train_retrieval's gru is `gru_retrieval`).

Read at run time from the working directory, which is the repository root (or DVC's experiment copy
of it) for every stage.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from lvm import LvmError

DVC_YAML = "dvc.yaml"
TRAIN_PREFIX = "train_"


def load(path: str | Path = DVC_YAML) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path}: not found (run from the repository root, where dvc.yaml is)")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LvmError(f"{path}: not valid YAML ({e})") from None


def variables(path: str | Path = DVC_YAML) -> dict:
    out = {}
    for entry in load(path).get("vars", []):
        if isinstance(entry, dict):
            out.update(entry)
    return out


def windows_dir(path: str | Path = DVC_YAML) -> str:
    value = variables(path).get("windows")
    if not isinstance(value, str) or not value:
        raise LvmError(f"{path}: vars: windows: missing (the directory export_ctx100 writes the windows to)")
    return value


def _option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def experiments(path: str | Path = DVC_YAML) -> dict[str, str]:
    """{experiment: model} of every train_<experiment> stage, in dvc.yaml's order."""
    out = {}
    for name, stage in (load(path).get("stages") or {}).items():
        if not name.startswith(TRAIN_PREFIX):
            continue
        argv = shlex.split(str(stage.get("cmd", "")))
        model, experiment = _option(argv, "--model"), _option(argv, "--experiment")
        if not model or experiment != name[len(TRAIN_PREFIX):]:
            raise LvmError(f"{path}: stage {name}: its cmd must read `python -m lvm.stages.train --model MODEL "
                           f"--experiment {name[len(TRAIN_PREFIX):]}`")
        out[experiment] = model
    return out


def command(stage: str, path: str | Path = DVC_YAML) -> list[str]:
    """Stage `stage`'s cmd as an argument list, dvc.yaml's vars filled in (as DVC runs it)."""
    stages = load(path).get("stages") or {}
    if stage not in stages:
        raise LvmError(f"{path}: no stage {stage!r}")
    cmd = str(stages[stage].get("cmd", ""))
    for name, value in variables(path).items():
        cmd = cmd.replace("${" + name + "}", str(value))
    return shlex.split(cmd)


def stage_option(stage: str, flag: str, path: str | Path = DVC_YAML) -> str:
    """The value of `flag` in stage `stage`'s cmd."""
    value = _option(command(stage, path), flag)
    if value is None:
        raise LvmError(f"{path}: stage {stage}: its cmd passes no {flag}")
    return value


def labels(exps: dict[str, str]) -> dict[str, str]:
    """{experiment: the name its results are reported under} (see the module's docstring)."""
    out, taken = {}, set()
    for experiment, model in exps.items():
        label = model if model not in taken else f"{model}_{experiment}"
        taken.add(model)
        out[experiment] = label
    return out
