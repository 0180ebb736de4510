"""DVC remotes: `dvc push` / `dvc pull` through a local remote restore artifacts bit for bit in a fresh
clone; `--run-cache` shares the stage-run records, so a teammate's rerun of a configuration someone
pushed is a cache hit; queued experiments run from git-tracked files and show up in `dvc exp show`."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from test_dvc_experiments import commit, sh

pytestmark = pytest.mark.slow

# A one-stage project: `scale` reads data/blob.bin and params.yaml, writes out/scaled.bin.
SCALE = """import numpy as np, yaml
f = yaml.safe_load(open("params.yaml"))["factor"]
x = np.fromfile("data/blob.bin", dtype=np.float32)
(x * f).tofile("out/scaled.bin")
"""


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    repo, remote = root / "repo", root / "remote"
    repo.mkdir()
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    sh(repo, "dvc", "remote", "add", "-d", "store", str(remote))
    (repo / "data").mkdir()
    (repo / "out").mkdir()
    np.random.default_rng(0).standard_normal(300_000).astype(np.float32).tofile(repo / "data/blob.bin")
    (repo / "scale.py").write_text(SCALE)
    (repo / "params.yaml").write_text("factor: 2\n")
    sh(repo, "dvc", "add", "-q", "data/blob.bin")
    sh(repo, "dvc", "stage", "add", "-q", "-n", "scale", "-d", "scale.py", "-d", "data/blob.bin",
       "-p", "factor", "-o", "out/scaled.bin", "python scale.py")
    (repo / "params.yaml").write_text("factor: 3\n")
    sh(repo, "dvc", "repro", "-q")
    commit(repo, "factor 3")
    (repo / "params.yaml").write_text("factor: 2\n")
    sh(repo, "dvc", "repro", "-q")
    commit(repo, "factor 2")
    # --run-cache sends the run records; the outputs travel with the commits (DVC 3.67 pushes no
    # output for a run record alone), hence --all-commits.
    sh(repo, "dvc", "push", "--all-commits", "--run-cache")
    return repo, remote


def test_push_pull_round_trip_restores_artifacts_bit_for_bit(project, tmp_path):
    repo, remote = project
    assert any(p.is_file() for p in remote.rglob("*"))
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data/blob.bin").exists() and not (clone / ".dvc/cache").exists()
    out = sh(clone, "dvc", "pull")
    assert "2 files added" in out or "files added" in out, out
    for path in ("data/blob.bin", "out/scaled.bin"):
        assert digest(clone / path) == digest(repo / path), path
    assert "up to date" in sh(clone, "dvc", "status")


def test_run_cache_lets_a_clone_skip_a_run_pushed_by_someone_else(project, tmp_path):
    repo, _ = project
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "pull", "--run-cache")
    (clone / "params.yaml").write_text("factor: 3\n")
    out = sh(clone, "dvc", "repro", "--pull")  # --pull: fetch the cached run's outputs from the remote
    assert "Stage 'scale' is cached - skipping run" in out, out
    x = np.fromfile(clone / "data/blob.bin", dtype=np.float32)
    assert np.array_equal(np.fromfile(clone / "out/scaled.bin", dtype=np.float32), x * 3)


def test_queued_experiments_run_in_clean_workspaces_and_show_up(tmp_path):
    """`dvc exp run --queue -S ...` twice, `dvc queue start -j 2`: both run from git-tracked files only
    (the vectors reach the workspaces through the DVC cache) and `dvc exp show` lists their metrics."""
    import json
    import shutil
    import subprocess
    import time

    import yaml

    from conftest import REPO, merge, stage_env, write_vectors
    from test_train import TINY_SIZES

    root = tmp_path / "queue"
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root)
    write_vectors(root / "vectors.npz", [30] * 14, dim=12, seed=3)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_SIZES)
    params["data"]["vectors"] = "vectors.npz"
    params["train"].update(epochs=1, max_train_windows=32)
    params["evaluate"]["n_boot"] = 20
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "add", "-q", "vectors.npz")
    commit(root, "setup")
    for seed in (1, 2):
        # target evaluate: the queue would otherwise also run ingest (the real encoder, minutes)
        sh(root, "dvc", "exp", "run", "--queue", "evaluate", "-S", f"train.seed={seed}", "-n", f"seed{seed}")
    t0 = time.perf_counter()
    # the workers outlive `queue start` and keep its stdout: no pipe, or run() waits for them
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=stage_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    while True:
        status = sh(root, "dvc", "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        if time.perf_counter() - t0 > 300:
            sh(root, "dvc", "queue", "stop", "--kill", check=False)
            raise AssertionError(status)
        time.sleep(2)
    assert status.count("Success") == 2, status + sh(root, "dvc", "queue", "logs", "seed1", check=False)
    print(f"2 queued experiments, -j 2: {time.perf_counter() - t0:.0f} s")
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json", stdout_only=True))
    exps = {rev["name"]: rev for row in shown for exp in (row.get("experiments") or []) for rev in exp["revs"]}
    assert {"seed1", "seed2"} <= set(exps), list(exps)
    cos = [exps[n]["data"]["metrics"]["metrics/evaluate.json"]["data"]["gru"]["test"]["cosine_mean"]
           for n in ("seed1", "seed2")]
    assert cos[0] != cos[1]
    sh(root, "dvc", "queue", "stop", check=False)
