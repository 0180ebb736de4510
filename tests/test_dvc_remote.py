"""DVC remotes: `dvc push` / `dvc pull` through a local remote restore artifacts bit for bit in a fresh
clone, and `--run-cache` shares runs that no commit records, so a teammate's rerun is a cache hit."""
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
    sh(repo, "dvc", "repro", "-q")
    (repo / "params.yaml").write_text("factor: 3\n")  # a second run: only the run cache records it
    sh(repo, "dvc", "repro", "-q")
    (repo / "params.yaml").write_text("factor: 2\n")
    sh(repo, "dvc", "repro", "-q")
    commit(repo, "factor 2")
    sh(repo, "dvc", "push", "--run-cache")
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


def test_run_cache_push_lets_a_clone_skip_a_run_nobody_committed(project, tmp_path):
    repo, _ = project
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "pull", "--run-cache")
    (clone / "params.yaml").write_text("factor: 3\n")
    out = sh(clone, "dvc", "repro")
    assert "is cached - skipping run" in out, out
    x = np.fromfile(clone / "data/blob.bin", dtype=np.float32)
    assert np.array_equal(np.fromfile(clone / "out/scaled.bin", dtype=np.float32), x * 3)
