"""Bad checkpoints and interrupted training (issue 13, cases 4, 5, 7, 8, 11, 14).

Every bad checkpoint x every consumer (evaluate, analyze, `lvm inspect`, resume) exits 2 with one
`error:` line naming the file, and every file of the workspace is byte-identical afterwards. The
full table runs each consumer's stage entry point in this process (the same @stage wrapper a
subprocess runs, without a torch import per row); a few rows run as real subprocesses too. Then a
training run that fails, is interrupted (SIGINT, SIGTERM) or gets a missing/broken train.npz leaves
the previous run's outputs as they were.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, stage_args, stage_env, write_vectors
from lvm.config import for_experiment
from lvm.models import create_model
from lvm.checkpoints import load_checkpoint
from lvm.pipeline import experiments
from lvm.training import run
from test_train import TINY, tiny_params

LENGTHS = [30] * 14
DIM, L = 12, 10
EXPERIMENTS = experiments(REPO / "dvc.yaml")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny project: vectors with texts, data/ctx100 at L=10, the three experiments trained one epoch
    (models/, metrics/, dvclive/ as the stages lay them out), plus earlier evaluate/analyze outputs."""
    from lvm.stages import export_ctx100

    root = tmp_path_factory.mktemp("ckpt")
    ids = 10 + 3 * np.arange(len(LENGTHS))
    texts = np.array([f"article {a} chunk {c}" for a, n in zip(ids, LENGTHS) for c in range(n)])
    write_vectors(root / "vectors.npz", LENGTHS, dim=DIM, seed=3, concept_texts=texts)
    params = {**TINY, "data": {**TINY["data"], "vectors": str(root / "vectors.npz")}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")  # evaluate and analyze read the experiments from it
    (root / "resume.yaml").write_text(yaml.safe_dump({**params, "train": {**TINY["train"], "resume": True}}))
    p = tiny_params(epochs=1)
    p["data"]["vectors"] = str(root / "vectors.npz")
    export_ctx100.run(p, out_dir=str(root / "data/ctx100"), metadata=str(root / "data/ctx100/metadata_ctx100.json"))
    for experiment, model in EXPERIMENTS.items():
        # with the experiment's own overrides, as its stage trains it (a resumed stage compares configs)
        run(for_experiment(p, experiment), model, experiment, data_dir=str(root / "data/ctx100"), models_dir=str(root / "models"),
            metrics_dir=str(root / "metrics"), live_dir=str(root / "dvclive"), progress=False)
    for out in ("metrics/evaluate.json", "metrics/results.md", "metrics/memory_slots.json", "plots/memory_slots.png"):
        (root / out).parent.mkdir(parents=True, exist_ok=True)
        (root / out).write_text(f"previous good {out}\n")
    return root


def snapshot(root: Path, skip: Path | None = None) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file() and f != skip}


# --- the bad checkpoints: each takes the good checkpoint (bytes, dict) and the workspace ----------

def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _fresh(good: dict, **config) -> dict:
    """The good checkpoint, rebuilt as a fresh model with other config values (D, L)."""
    cfg = {**good["model_config"], **config}
    return {**good, "model_config": cfg, "state_dict": create_model(**cfg).state_dict()}


def _first_weight(state: dict) -> str:
    return next(k for k, v in state.items() if v.dim() == 2)


def _shapes(good):
    state = dict(good["state_dict"])
    k = _first_weight(state)
    state[k] = torch.zeros(state[k].shape[0] + 1, state[k].shape[1])
    return _torch_bytes({**good, "state_dict": state})


def _keys(good):
    state = dict(good["state_dict"])
    state.pop(_first_weight(state))
    state["bogus.weight"] = torch.zeros(2)
    return _torch_bytes({**good, "state_dict": state})


def _old_version(good):  # before model.anchor / train.normalize existed
    cfg = {k: v for k, v in good["model_config"].items() if k not in ("anchor", "normalize")}
    state = {k: v for k, v in good["state_dict"].items() if k not in ("norm_shift", "norm_scale", "anchor_decay")}
    return _torch_bytes({**good, "model_config": cfg, "state_dict": state})


def _old_buffers(good):
    state = {k: v for k, v in good["state_dict"].items() if k not in ("norm_shift", "norm_scale", "anchor_decay")}
    return _torch_bytes({**good, "state_dict": state})


def _nan(good):
    state = dict(good["state_dict"])
    k = _first_weight(state)
    state[k] = state[k].clone()
    state[k][0, 0] = float("nan")
    return _torch_bytes({**good, "state_dict": state})


def _flipped(data: bytes) -> bytes:
    """A bit flipped inside a tensor's bytes: torch.load would not notice (it skips the CRCs)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    out = bytearray(data)
    out[start + 1] ^= 0x10
    return bytes(out)


def _zip_not_torch(_):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    return buf.getvalue()


def _npz(_):
    buf = io.BytesIO()
    np.savez(buf, vectors=np.zeros((3, 4), np.float32))
    return buf.getvalue()


# name -> (make(good_bytes, good_dict, other_dict) -> bytes or None (= no file), regex of the message)
CASES = {
    "missing": (lambda b, g, o: None, r"not found|missing"),
    "empty": (lambda b, g, o: b"", r"empty file"),
    "truncated": (lambda b, g, o: b[: len(b) // 2], r"truncated"),
    "cut_end": (lambda b, g, o: b[:-30], r"truncated|corrupted"),
    "text": (lambda b, g, o: b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", r"a text file"),
    "zip_not_torch": (lambda b, g, o: _zip_not_torch(g), r"not a torch checkpoint"),
    "npz": (lambda b, g, o: _npz(g), r"not a torch checkpoint"),
    "crc": (lambda b, g, o: _flipped(b), r"CRC"),
    "pickled_object": (lambda b, g, o: _torch_bytes({**g, "extra": argparse.Namespace(a=1)}),
                       r"pickled Python objects \(argparse.Namespace\).*weights_only"),
    "not_a_dict": (lambda b, g, o: _torch_bytes([1, 2, 3]), r"holds a list, not an lvm checkpoint"),
    "bare_state_dict": (lambda b, g, o: _torch_bytes(g["state_dict"]), r"missing key\(s\) model_name"),
    "wrong_keys": (lambda b, g, o: _torch_bytes({"weights": g["state_dict"], "config": g["model_config"]}),
                   r"missing key\(s\)"),
    "wrong_shapes": (lambda b, g, o: _shapes(g), r"has shape .* needs"),
    "wrong_state_keys": (lambda b, g, o: _keys(g), r"state_dict does not fit .*missing .*unexpected bogus.weight"),
    "old_version": (lambda b, g, o: _old_version(g), r"lvm version .*lacks anchor, normalize.*retrain"),
    "old_buffers": (lambda b, g, o: _old_buffers(g), r"older lvm version .*norm_shift.*retrain"),
    "nan_weights": (lambda b, g, o: _nan(g), r"NaN or Inf"),
    "other_model": (lambda b, g, o: _torch_bytes(o), r"a checkpoint of model '\w+', but '\w+' is expected"),
    "other_dim": (lambda b, g, o: _torch_bytes(_fresh(g, input_dim=8)), r"D=8 .* D=12"),
    "other_context": (lambda b, g, o: _torch_bytes(_fresh(g, context_length=20)), r"L=20.*L=10"),
    "not_resumable": (lambda b, g, o: _torch_bytes({k: v for k, v in g.items() if k not in ("optimizer", "rng")}),
                      r"not a resumable checkpoint .*optimizer, rng.*train.resume: false"),
}


def _run_evaluate(root):
    from lvm.stages import evaluate
    evaluate.main(["--params", str(root / "params.yaml"), *stage_args("evaluate")])


def _run_analyze(root):
    from lvm.stages import analyze
    analyze.main(["--params", str(root / "params.yaml"), *stage_args("analyze")])


def _run_inspect(root):
    from lvm import cli
    cli.main(["inspect", "--model", "models/baseline/best.pt", "--article", str(_test_article(root)),
              "--params", str(root / "params.yaml")])


def _run_resume(root):
    from lvm.stages import train
    train.main([*stage_args("train_baseline"), "--params", str(root / "resume.yaml"), "--no-progress"])


def _test_article(root) -> int:
    from lvm.data import WindowDataset
    return int(WindowDataset(root / "data/ctx100/test.npz").window_articles()[0])


# consumer -> (its checkpoint, where another model's checkpoint comes from, entry point, argv of its subprocess)
CONSUMERS = {
    "evaluate": ("models/baseline/best.pt", "models/hierarchical/best.pt", _run_evaluate,
                 ["-m", "lvm.stages.evaluate", "--params", "params.yaml", *stage_args("evaluate")]),
    "analyze": ("models/memory/best.pt", "models/baseline/best.pt", _run_analyze,
                ["-m", "lvm.stages.analyze", "--params", "params.yaml", *stage_args("analyze")]),
    "inspect": ("models/baseline/best.pt", None, _run_inspect,
                ["-m", "lvm.cli", "inspect", "--model", "models/baseline/best.pt", "--article", "ARTICLE",
                 "--params", "params.yaml"]),
    "resume": ("models/baseline/last.pt", "models/memory/last.pt", _run_resume,
               ["-m", "lvm.stages.train", *stage_args("train_baseline"), "--params", "resume.yaml",
                "--no-progress"]),
}

SKIP = {
    ("inspect", "other_model"): "lvm inspect scores any model it is given",
    ("resume", "missing"): "no last.pt: resume starts from scratch (tested in test_train)",
}
ROWS = [pytest.param(c, k, id=f"{c}-{k}", marks=pytest.mark.skip(reason=SKIP[c, k]) if (c, k) in SKIP else ())
        for c in CONSUMERS for k in CASES if k != "not_resumable" or c == "resume"]


@pytest.fixture
def bad_checkpoint(workspace):
    """Put one bad checkpoint in place for one consumer; the good file is back afterwards."""
    placed = []

    def place(consumer: str, case: str) -> tuple[Path, dict]:
        target, other, _, _ = CONSUMERS[consumer]
        path = workspace / target
        good_bytes = path.read_bytes()
        placed.append((path, good_bytes))
        make, _ = CASES[case]
        data = make(good_bytes, load_checkpoint(path), load_checkpoint(workspace / other) if other else None)
        before = snapshot(workspace, skip=path)
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        return path, before

    yield place
    for path, data in placed:
        path.write_bytes(data)


def check_refused(root, path, before, code, stderr, case):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr  # one line, no traceback
    assert str(path.relative_to(root)) in lines[0]
    assert re.search(CASES[case][1], lines[0]), lines[0]
    assert snapshot(root, skip=path) == before  # nothing written, nothing lost


@pytest.mark.parametrize("consumer,case", ROWS)
def test_bad_checkpoint_is_one_error_and_changes_nothing(workspace, bad_checkpoint, consumer, case, capsys,
                                                         monkeypatch):
    path, before = bad_checkpoint(consumer, case)
    monkeypatch.chdir(workspace)
    with pytest.raises(SystemExit) as exit_:
        CONSUMERS[consumer][2](workspace)
    check_refused(workspace, path, before, exit_.value.code, capsys.readouterr().err, case)


@pytest.mark.parametrize("consumer,case", [("evaluate", "other_context"), ("analyze", "other_model"),
                                           ("inspect", "truncated"), ("resume", "pickled_object")])
def test_bad_checkpoint_in_a_stage_subprocess(workspace, bad_checkpoint, consumer, case):
    path, before = bad_checkpoint(consumer, case)
    argv = [a.replace("ARTICLE", str(_test_article(workspace))) for a in CONSUMERS[consumer][3]]
    r = subprocess.run([sys.executable, *argv], cwd=workspace, env=stage_env(), capture_output=True, text=True,
                       timeout=300)
    check_refused(workspace, path, before, r.returncode, r.stderr, case)


def test_good_checkpoints_load_for_every_consumer(workspace):
    from lvm.data import WindowDataset
    from lvm.checkpoints import load_model
    test = WindowDataset(workspace / "data/ctx100/test.npz")
    for experiment, name in EXPERIMENTS.items():
        model = load_model(workspace / f"models/{experiment}/best.pt", expect_name=name, data=test)
        assert model.name == name and not model.training
    assert load_checkpoint(workspace / "models/baseline/last.pt", resume=True)["epoch"] == 1


# --- training outputs come from one run --------------------------------------------------------

OUTPUTS = ("models/baseline/best.pt", "models/baseline/final.pt", "metrics/train_baseline.json")


def outputs_of(root: Path) -> dict:
    """best.pt, final.pt, the train metrics and every file of the dvclive curves."""
    files = [root / o for o in OUTPUTS] + sorted((root / "dvclive/baseline").rglob("*"))
    return {str(f.relative_to(root)): f.read_bytes() for f in files if f.is_file()}


def leftovers(root: Path) -> list:
    return [str(f) for d in ("models", "dvclive") for f in (root / d).rglob("*") if f.name.endswith(".tmp")]


@pytest.fixture
def project(workspace, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(workspace, root)
    return root


def train_baseline(root, **train_cfg):
    p = for_experiment(tiny_params(**train_cfg), "baseline")  # as the train_baseline stage reads them
    return run(p, "gru", "baseline", data_dir=str(root / "data/ctx100"), models_dir=str(root / "models"),
               metrics_dir=str(root / "metrics"), live_dir=str(root / "dvclive"), progress=False)


@pytest.mark.parametrize("when", ["nan_val_loss_epoch_2", "crash_epoch_1"])
def test_failed_run_keeps_the_previous_runs_outputs(project, monkeypatch, when):
    import lvm.training as T
    from lvm import LvmError

    before = outputs_of(project)
    assert any("dvclive/baseline/plots" in k for k in before)
    if when == "nan_val_loss_epoch_2":  # a later epoch diverges: best.pt of epoch 1 must not be published
        calls, validate = [], T.validate

        def fake(*a, **kw):
            calls.append(1)
            out = validate(*a, **kw)
            # call 1 scores the untrained model (start_val_cosine), call 3 is epoch 2's validation
            return {**out, "loss": float("nan")} if len(calls) == 3 else out

        monkeypatch.setattr(T, "validate", fake)
        with pytest.raises(LvmError, match="val loss is nan after epoch 2; lower train.lr"):
            train_baseline(project, epochs=3)
    else:
        def boom(*a, **kw):
            raise RuntimeError("simulated crash")

        monkeypatch.setattr(T, "compute_loss", boom)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_baseline(project, epochs=3)
    assert outputs_of(project) == before
    assert leftovers(project) == []


def test_successful_run_replaces_every_output_together(project):
    before = outputs_of(project)
    metrics = train_baseline(project, epochs=2, seed=5)
    after = outputs_of(project)
    assert all(after[o] != before[o] for o in OUTPUTS)
    assert load_checkpoint(project / "models/baseline/best.pt")["epoch"] == metrics["best_epoch"]
    assert load_checkpoint(project / "models/baseline/final.pt")["epoch"] == 2
    rows = (project / "dvclive/baseline/plots/metrics/val/loss.tsv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # this run's two epochs, not the old run's one
    assert leftovers(project) == [] and not any(p.name.startswith(".") for p in (project / "dvclive").iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_keeps_outputs_and_resumes_from_last_finished_epoch(project, sig):
    """Ctrl-C or SIGTERM: the last finished epoch is in last.pt (written after every epoch, not on
    the signal), best/final/metrics/curves are the previous run's, and resume completes the run."""
    before = outputs_of(project)
    (project / "long.yaml").write_text(yaml.safe_dump(merge_train(project, epochs=1000)))
    env = {**stage_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lvm.stages.train", "--model", "gru", "--experiment", "baseline", "--data", "data/ctx100", "--models", "models", "--metrics", "metrics", "--live", "dvclive",
                             "--params", "long.yaml", "--no-progress"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job (CI scripts run with `&`) starts with SIGINT ignored,
                            # and Python then installs no KeyboardInterrupt handler: give the run a real Ctrl-C
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # epoch 3's line: epoch 2 is finished and in last.pt (saved after its line)
            if "epoch   3/1000" in line:
                break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert "interrupted" in out and "previous complete run" in out and "Traceback" not in err
    assert outputs_of(project) == before
    assert leftovers(project) == []
    ckpt = load_checkpoint(project / "models/baseline/last.pt", resume=True)
    done = ckpt["epoch"]
    assert done >= 2 and len(ckpt["history"]) == done
    resumed = train_baseline(project, epochs=done + 1, resume=True)
    assert resumed["epochs"] == done + 1
    rows = (project / "dvclive/baseline/plots/metrics/val/loss.tsv").read_text().strip().splitlines()
    assert len(rows) == 1 + done + 1  # the interrupted epochs replayed from last.pt, then the new one


def merge_train(root, **train):
    params = yaml.safe_load((root / "params.yaml").read_text())
    return {**params, "train": {**params["train"], **train}}


@pytest.mark.parametrize("damage", ["missing", "window_out_of_range"])
def test_missing_or_broken_train_split_keeps_last_pt_and_curves(project, monkeypatch, capsys, damage):
    from lvm.stages import train

    (project / "fresh.yaml").write_text(yaml.safe_dump(merge_train(project, resume=False)))
    keep = {**outputs_of(project), "models/baseline/last.pt": (project / "models/baseline/last.pt").read_bytes()}
    split = project / "data/ctx100/train.npz"
    if damage == "missing":
        split.unlink()
    else:
        with np.load(split) as z:
            arrays = dict(z)
        arrays["window_starts"] = arrays["window_starts"].copy()
        arrays["window_starts"][0] = 10 ** 6
        np.savez(split, **arrays)
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit_:
        train.main([*stage_args("train_baseline"), "--params", "fresh.yaml", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("error:") == 1 and "train.npz" in err
    now = {**outputs_of(project), "models/baseline/last.pt": (project / "models/baseline/last.pt").read_bytes()}
    assert now == keep


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_no_signals_holds_a_signal_received_by_another_thread_until_the_block_ends(sig):
    """The kernel may hand a process's signal to any thread (torch's workers included); Python then runs
    the handler in the main thread wherever it is. no_signals must hold it to the end of its block."""
    import os
    import threading
    import time

    from lvm.training import _Terminated, catch_termination, no_signals

    # Python's own Ctrl-C handler, whatever this process inherited: a test run started in the background
    # by a shell (`pytest &`) begins with SIGINT ignored, and no Ctrl-C would ever arrive
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        restore = catch_termination()  # SIGTERM raises like Ctrl-C, as in a training run
        steps = []
        try:
            with pytest.raises(KeyboardInterrupt) as raised:
                with no_signals():
                    sender = threading.Thread(target=os.kill, args=(os.getpid(), sig))
                    sender.start()
                    sender.join()
                    for _ in range(50):  # bytecode boundaries where an unheld handler would run
                        time.sleep(0.002)
                    steps.append("block finished")
        finally:
            restore()
        assert steps == ["block finished"]
        assert isinstance(raised.value, _Terminated) == (sig == signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    finally:
        signal.signal(signal.SIGINT, inherited)
