"""The whole pipeline under DVC and git on a tiny synthetic corpus: `dvc exp run -S` reruns exactly
the stages that read the changed param, and `dvc metrics diff` between commits shows the change."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN, REPO, merge, repository_params, stage_env, write_vectors
from lvm.models import MODEL_PARAMS
from lvm.pipeline import experiments
from test_train import TINY_SIZES

pytestmark = pytest.mark.slow
EXPERIMENTS = experiments(REPO / "dvc.yaml")


def sh(cwd, *cmd, check=True, stdout_only=False):
    res = subprocess.run(list(cmd), cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=600)
    if check and res.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout if stdout_only else res.stdout + res.stderr


def test_dvc_yaml_declares_exactly_the_params_each_training_stage_reads():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for experiment, model in EXPERIMENTS.items():
        stage = stages[f"train_{experiment}"]
        assert f"--model {model} " in stage["cmd"] + " " and f"--experiment {experiment}" in stage["cmd"]
        # an experiment with overrides (train_retrieval) reruns when they change, and only it
        overrides = [f"overrides.{experiment}"] if experiment in repository_params()["overrides"] else []
        assert sorted(stage["params"]) == sorted(["train", *(f"model.{k}" for k in MODEL_PARAMS[model]), *overrides])
    assert set(repository_params()["overrides"]) <= set(EXPERIMENTS)  # every experiment with overrides has its stage


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvcrepo")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # the real pipeline without ingest (which embeds the gensim corpus: minutes): these stages read
    # their own tiny vectors file, so nothing downstream needs it, and a plain `dvc exp run` stays small
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    del pipeline["stages"]["ingest"]
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    write_vectors(root / "vectors.npz", [30] * 14, dim=12, seed=3)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_SIZES)
    params["data"]["vectors"] = "vectors.npz"
    params["train"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / ".gitignore").write_text("vectors.npz\n.venv\n")
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "config", "core.check_update", "false")
    commit(root, "setup")  # DVCLive needs a commit to exist
    sh(root, "dvc", "repro")
    commit(root, "first")
    return root


def commit(root, msg):
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", msg)


def test_readme_everyday_commands_work_as_written_in_a_new_shell(repo):
    """The README's everyday block, line by line as a new user types it after `make install`: a shell
    whose PATH does not have the venv (the stages' `python` is then the venv's only through
    `source .venv/bin/activate`). `dvc exp run -S` reruns exactly the stages that read the param."""
    assert "up to date" in sh(repo, "dvc", "status")
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Everyday commands\n\n```bash\n(.*?)```", readme, re.S).group(1)
    lines = [re.sub(r"\s+# .*$", "", line).strip() for line in block.splitlines()]
    assert lines[0] == "source .venv/bin/activate"
    exp_run = next(x for x in lines if x.startswith("dvc exp run"))
    assert exp_run == "dvc exp run -S model.memory_slots=4096"
    metrics_diff = next(x for x in lines if x.startswith("dvc metrics diff"))
    exp_show = next(x for x in lines if x.startswith("dvc exp show"))
    (repo / ".venv").symlink_to(BIN.parent)  # where `make install` puts it in a clone
    env = {k: v for k, v in stage_env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", COLUMNS="400")  # a new shell, a wide terminal

    def shell(command):
        res = subprocess.run(["bash", "-c", f"{lines[0]} && {command}"], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{command} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        return res.stdout + res.stderr

    out = shell(exp_run)  # the README: "reruns train_memory, evaluate and analyze only"
    for stage in ("train_memory", "evaluate", "analyze"):
        assert f"Running stage '{stage}'" in out, out
    for stage in ("export_ctx100", "train_baseline", "train_hierarchical"):
        assert f"Running stage '{stage}'" not in out, out
    # the headline answers "better or worse": only memory_gru's figures moved, a few rows in all
    out = shell(metrics_diff)
    assert "memory_gru.test_cosine" in out and "memory_gru.cosine_diff" in out, out
    assert "hierarchical_gru." not in out and " gru.test_cosine" not in out, out
    assert "metrics/evaluate.json" not in out and len(out.splitlines()) <= 12, out
    # exp show: the changed param and the changed headline figures, none of evaluate.json's columns
    header = shell(exp_show).splitlines()[1]
    assert "Experiment" in header and "model.memory_slots" in header and "memory_gru.test_cosine" in header
    assert "train.lr" not in header and "gru.test_cosine" not in header.replace("memory_gru.test_cosine", "")
    assert ".test." not in header and "…" not in header, header
    bad = sh(repo, "dvc", "exp", "run", "evaluate", "-S", "model.memory_slot=64", check=False)
    assert "memory_slot" in bad


def test_metrics_diff_between_commits_shows_the_changed_value(repo):
    before = json.loads((repo / "metrics/evaluate.json").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    sh(repo, "dvc", "repro", "evaluate")
    commit(repo, "second")
    after = json.loads((repo / "metrics/evaluate.json").read_text())
    assert after["gru"]["test"]["cosine_mean"] != before["gru"]["test"]["cosine_mean"]
    assert after["copy_last"] == before["copy_last"]  # baselines do not depend on the training seed
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json", stdout_only=True))
    changed = diff["metrics/evaluate.json"]
    assert "gru.test.cosine_mean" in changed
    assert changed["gru.test.cosine_mean"]["new"] == after["gru"]["test"]["cosine_mean"]
    assert not any(k.startswith("copy_last.") for k in changed)


def test_every_stage_imports_the_workspace_code():
    # `dvc exp run --queue` runs stages in temporary copies of the repo; the editable install points at
    # the main checkout's src/, so without PYTHONPATH=src a queued experiment would run the live code,
    # not the code it was queued with
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert all(s["cmd"].startswith("PYTHONPATH=src python -m lvm.") for s in stages.values())


def test_an_experiments_override_reruns_only_its_stage(repo):
    # overrides.retrieval is declared by train_retrieval alone: the other train stages stay cached
    sh(repo, "dvc", "repro")  # (the test before left analyze behind: it reran evaluate only)
    assert "up to date" in sh(repo, "dvc", "status")
    # `+`: a key params.yaml does not have yet (the docs' command)
    out = sh(repo, "dvc", "exp", "run", "-S", "+overrides.retrieval.train.epochs=2")
    for stage in ("train_retrieval", "evaluate"):
        assert f"Running stage '{stage}'" in out, out
    for stage in ("train_baseline", "train_hierarchical", "train_memory", "analyze"):
        assert f"Running stage '{stage}'" not in out, out
    assert json.loads((repo / "metrics/train_retrieval.json").read_text())["epochs"] == 2
