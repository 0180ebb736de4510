"""The evaluate stage's outputs change together or not at all: a SIGTERM at any point of the run leaves
the previous set or the new set whole, never a mixture; bad input fails before anything is written;
temp files of a killed run are cleaned up by the next one."""
from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import stage_args, stage_env, write_vectors
from lvm.plots import EVALUATE_FIGURES
from test_bad_checkpoints import workspace  # noqa: F401  (the tiny trained project)

FLAGS = ("--metrics", "--headline", "--curve", "--report", "--sample", "--per-article")


def outputs(root: Path) -> dict:
    """sha256 of every output evaluate declares in dvc.yaml (missing: None)."""
    args = stage_args("evaluate")
    files = [args[args.index(f) + 1] for f in FLAGS]
    figures = args[args.index("--figures") + 1]
    files += [f"{figures}/{name}" for name in EVALUATE_FIGURES.values()]
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() if (root / f).is_file() else None for f in files}


# Runs the stage in a subprocess that sends itself SIGTERM at the Nth temp file it creates (every output
# is written to a temp file first) or at the Nth rename into place: SIGTERM's default action, no cleanup.
RUNNER = """
import os, signal, sys, tempfile
from lvm.stages import evaluate
where, n = sys.argv[1], int(sys.argv[2])
calls = {"mkstemp": 0, "replace": 0}
def hook(name, real):
    def f(*a, **k):
        if name == "replace" and not str(a[0]).endswith(".tmp"):
            return real(*a, **k)  # not one of the stage's outputs (a library's own cache file)
        calls[name] += 1
        if name == where and calls[name] == n:
            if name == "replace":
                real(*a, **k)  # the nth rename done, then the signal: the rest must still land
            os.kill(os.getpid(), signal.SIGTERM)
            if name == "replace":
                return None
        return real(*a, **k)
    return f
tempfile.mkstemp = hook("mkstemp", tempfile.mkstemp)
os.replace = hook("replace", os.replace)
evaluate.main(sys.argv[3:])
"""


def run_evaluate(root: Path, params: str, where: str = "none", n: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, where, str(n), "--params", params, *stage_args("evaluate")],
                          cwd=root, env=stage_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sets(workspace, tmp_path_factory):  # noqa: F811
    """The project after a complete evaluate run (the old set), then with models trained at another seed
    in models/: the outputs a complete run gives with them are the new set. Returns a function that puts
    the old set back between cases."""
    from lvm.config import for_experiment
    from lvm.pipeline import experiments
    from lvm.training import run
    from test_train import tiny_params

    root = tmp_path_factory.mktemp("sets") / "project"
    shutil.copytree(workspace, root)
    assert run_evaluate(root, "params.yaml").returncode == 0
    old = outputs(root)
    old_bytes = {f: (root / f).read_bytes() for f in old}
    scratch = tmp_path_factory.mktemp("scratch")
    p = tiny_params(epochs=1)
    p["train"]["seed"] = 99
    for experiment, model in experiments(root / "dvc.yaml").items():
        run(for_experiment(p, experiment), model, experiment, data_dir=str(root / "data/ctx100"),
            models_dir=str(root / "models"), metrics_dir=str(scratch / "metrics"), live_dir=str(scratch / "live"),
            progress=False)
    shutil.copytree(root, scratch / "project")
    r = run_evaluate(scratch / "project", "params.yaml")
    assert r.returncode == 0, r.stderr
    new = outputs(scratch / "project")
    assert None not in old.values() and sum(old[f] != new[f] for f in old) >= 8  # the two sets differ

    def restore_old():
        for f, data in old_bytes.items():
            (root / f).write_bytes(data)
        assert outputs(root) == old

    return root, old, new, restore_old


@pytest.mark.parametrize("where, n", [("mkstemp", 1), ("mkstemp", 4), ("mkstemp", 8), ("mkstemp", 11),
                                      ("replace", 1), ("replace", 6)])
def test_sigterm_anywhere_leaves_the_old_or_the_new_set_whole(sets, where, n):
    root, old, new, restore_old = sets
    r = run_evaluate(root, "params.yaml", where, n)
    assert r.returncode == -signal.SIGTERM, (r.returncode, r.stderr[-2000:])
    # a signal while the temps are written: the old set; during the renames (signals held): the new set
    assert outputs(root) == (new if where == "replace" else old)
    if where == "replace":
        assert not list(root.rglob(".*.tmp"))
        restore_old()


def test_vectors_of_another_dimension_fail_before_any_output_is_written(sets, tmp_path):
    root, old, _, _ = sets
    write_vectors(tmp_path / "other.npz", [30] * 4, dim=16, seed=1)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["vectors"] = str(tmp_path / "other.npz")
    (root / "d16.yaml").write_text(yaml.safe_dump(params))
    r = run_evaluate(root, "d16.yaml")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {tmp_path / 'other.npz'}: key 'vectors' has shape (120, 16)") and "D=12" in r.stderr
    assert outputs(root) == old


def test_a_killed_runs_temp_files_are_removed_by_the_next_run(sets):
    root, _, new, restore_old = sets
    stale = [root / "metrics/.evaluate.json.k1ll3d.tmp", root / "plots/.cosine_hist.png.k1ll3d.tmp"]
    for f in stale:
        f.write_text("left by a SIGKILL")
    assert run_evaluate(root, "params.yaml").returncode == 0
    assert not list(root.rglob(".*.tmp")) and outputs(root) == new
    restore_old()
