"""Data-parallel training (DDP over gloo on CPU): 2 processes reach the same result as 1 process with
the same global batch, only rank 0 writes files, and `train.nproc` relaunches through torchrun."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import stage_env, write_vectors
from lvm.data import export_windows, load_corpus
from lvm.checkpoints import load_checkpoint
from lvm.training import run
from test_train import TINY, tiny_params

# Batch 8 over 41 sampled windows per epoch: the last global batch holds 1 window, so rank 1's share
# is empty and rank 0's counts double: the hardest split for the loss weighting.
DDP = dict(epochs=2, batch_size=8, window_stride=1, max_train_windows=41, seed=5)
TOL = 1e-5  # relative, fp32: the 2-process run differs only by the order of float reductions


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_vectors(root / "vectors.npz", [30] * 14, dim=12, seed=3)
    export_windows(load_corpus(root / "vectors.npz"), root / "ctx", 10, 5,
                   {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    return root / "ctx"


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_dir):
    """The reference: one process, in this interpreter."""
    out = tmp_path_factory.mktemp("single")
    run(tiny_params(**DDP), "gru", "exp", data_dir=str(data_dir), models_dir=str(out / "models"),
        metrics_dir=str(out / "metrics"), live_dir=str(out / "live"), progress=False)
    return load_checkpoint(out / "models/exp/last.pt")


def workdir(path, data_dir, **train):
    """A stage working directory: data/ctx100 and a params.yaml with TINY + `train`."""
    shutil.copytree(data_dir, path / "data/ctx100")
    params = {**TINY, "train": {**TINY["train"], **train}}
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_training(a: dict, b: dict, tol=TOL) -> dict:
    """Per-epoch losses and final weights agree within `tol` (relative); returns the largest gaps."""
    gaps = {}
    for key in ("train_loss", "val_loss", "val_cosine"):
        x = np.array([row[key] for row in a["history"]])
        y = np.array([row[key] for row in b["history"]])
        assert x.shape == y.shape == (DDP["epochs"],)
        gaps[key] = float(np.max(np.abs(x - y) / np.abs(x)))
        assert gaps[key] < tol, (key, x, y)
    assert [r["lr"] for r in a["history"]] == [r["lr"] for r in b["history"]]
    assert a["best"]["epoch"] == b["best"]["epoch"]
    # clamp: all-zero buffers (an unused normaliser's shift) would divide 0 by 0
    diffs = [(a["state_dict"][k] - b["state_dict"][k]).abs().max() / a["state_dict"][k].abs().max().clamp_min(1e-12)
             for k in a["state_dict"]]
    gaps["weights"] = float(max(diffs))
    assert gaps["weights"] < tol
    return gaps


def test_two_gloo_processes_match_one_process_and_only_rank0_writes(tmp_path, data_dir, single):
    dirs = [workdir(tmp_path / f"rank{r}", data_dir, **DDP) for r in range(2)]
    before = [files(d) for d in dirs]
    env = {**stage_env(), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-m", "lvm.stages.train", "--model", "gru", "--experiment", "exp", "--data", "data/ctx100", "--models", "models", "--metrics", "metrics", "--live", "dvclive",
                               "--no-progress"], cwd=d, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r, d in enumerate(dirs)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 processes (DDP)" in outs[0] and outs[1].strip() == "", outs
    assert files(dirs[1]) == before[1]  # rank 1 wrote nothing
    written = set(files(dirs[0])) - set(before[0])
    assert {"models/exp/best.pt", "models/exp/final.pt", "models/exp/last.pt",
            "metrics/train_exp.json", "dvclive/exp/plots/metrics/train/loss.tsv"} <= written
    gaps = assert_same_training(single, load_checkpoint(dirs[0] / "models/exp/last.pt"))
    print(f"2 gloo processes vs 1 process, max relative gap: {gaps}")


def test_nproc_relaunches_through_torchrun_and_resumes(tmp_path, data_dir, single):
    """train.nproc: 2 with an unchanged command; a 1-epoch run resumed to 2 epochs, both under DDP."""
    d = workdir(tmp_path, data_dir, **{**DDP, "epochs": 1, "nproc": 2})
    cmd = [sys.executable, "-m", "lvm.stages.train", "--model", "gru", "--experiment", "exp", "--data", "data/ctx100", "--models", "models", "--metrics", "metrics", "--live", "dvclive", "--no-progress"]
    r = subprocess.run(cmd, cwd=d, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "torch.distributed.run --standalone --nproc-per-node=2" in r.stdout
    assert "2 processes (DDP)" in r.stdout
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["train"].update(epochs=2, resume=True)
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run(cmd, cwd=d, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming gru after epoch 1" in r.stdout
    gaps = assert_same_training(single, load_checkpoint(d / "models/exp/last.pt"))
    print(f"train.nproc=2 (1 epoch + resume) vs 1 process, max relative gap: {gaps}")


def test_early_stopping_stops_every_rank(tmp_path, data_dir):
    """train.patience under DDP: rank 1 stops with rank 0 (it once went on alone into the next epoch's
    all-reduce and failed there, after rank 0 had published: the stage failed)."""
    # a learning rate this high overshoots within a few epochs: val loss rises and patience 1 stops the run
    d = workdir(tmp_path, data_dir, **{**DDP, "epochs": 8, "lr": 0.05, "loss": "cosine", "patience": 1, "nproc": 2})
    cmd = [sys.executable, "-m", "lvm.stages.train", "--model", "gru", "--experiment", "exp", "--data", "data/ctx100",
           "--models", "models", "--metrics", "metrics", "--live", "dvclive", "--no-progress"]
    r = subprocess.run(cmd, cwd=d, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 processes (DDP)" in r.stdout and "(train.patience); stopping after epoch" in r.stdout
    stopped = load_checkpoint(d / "models/exp/last.pt")["epoch"]
    assert stopped < 8 and load_checkpoint(d / "models/exp/final.pt")["epoch"] == stopped


def test_batch_not_divisible_by_the_processes_fails_by_name(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    from lvm import LvmError
    with pytest.raises(LvmError, match=r"^params: train\.batch_size: 8 is not divisible by the 3 processes"):
        run(tiny_params(**DDP), "gru", "exp", data_dir=str(data_dir), models_dir=str(tmp_path / "m"),
            metrics_dir=str(tmp_path / "x"), live_dir=str(tmp_path / "l"), progress=False)
    assert not any(tmp_path.iterdir())
