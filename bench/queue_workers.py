"""`dvc queue start -j 2` against `-j 1` on this machine: total wall time of one small queue.

    .venv/bin/python bench/queue_workers.py                  # 4 experiments x 3 settings (~6 min on 2 cores)
    .venv/bin/python bench/queue_workers.py --experiments 2 --epochs 2

Builds a throwaway DVC project in a temporary directory (this repository's src/ and the exported
windows of data/ctx100, DVC-tracked), one stage that trains the gru of train_baseline for
`--epochs` epochs of train.max_train_windows windows, and queues `--experiments` experiments that
differ only in train.seed (other seeds for each setting: DVC's run cache would restore a repeat). The same queue is then run with one worker (`-j 1`, train.threads 0),
two workers with train.threads 0 (each process takes every core: 4 threads on 2 cores), and two
workers with train.threads 1. Reported: the wall time from `dvc queue start` until every queued
experiment has finished, per setting, and the ratios to `-j 1` measured in the same invocation.

Writes bench/results/queue_workers.json and bench/results/queue_workers.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from common import cpu_model  # noqa: E402
from lvm.hardware import processes_running  # noqa: E402
from lvm.pipeline import windows_dir  # noqa: E402

SETTINGS = [("-j 1, train.threads 0", 1, 0), ("-j 2, train.threads 0", 2, 0), ("-j 2, train.threads 1", 2, 1)]


def sh(cwd, *cmd, env=None, check=True) -> str:
    res = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if check and res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout + res.stderr


def project(root: Path, data_dir: Path, epochs: int, env: dict) -> None:
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(data_dir, root / "ctx")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(epochs=epochs, patience=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stage = {"cmd": "PYTHONPATH=src python -m lvm.stages.train --model gru --experiment q --data ctx --no-progress",
             "deps": ["ctx", "src/lvm"], "params": ["train", "model"],
             "outs": ["models/q/best.pt", "models/q/final.pt"],
             "metrics": [{"metrics/train_q.json": {"cache": False}}]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}, sort_keys=False))
    (root / ".gitignore").write_text("/models\n/dvclive\n/logs\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["dvc", "config", "core.check_update", "false"], ["dvc", "add", "-q", "ctx"]):
        sh(root, *cmd, env=env)
    sh(root, "git", "add", "-A", env=env)
    sh(root, "git", "-c", "user.email=b@b", "-c", "user.name=bench", "commit", "-qm", "bench", env=env)


def trainings_running() -> int:
    """Processes of this machine running a train stage now (the queue's experiments, side by side or not)."""
    return processes_running(b"-m\x00lvm.stages.train\x00")  # the python, not its sh -c


def run_queue(root: Path, workers: int, threads: int, n: int, env: dict, first_seed: int) -> dict:
    # seeds differ between settings too: DVC's run cache would restore a repeated experiment at once
    for seed in range(first_seed, first_seed + n):
        sh(root, "dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}", "-S", f"train.threads={threads}", env=env)
    t0 = time.perf_counter()
    # not through a pipe: the workers it spawns inherit it, and reading to its end would wait for them
    subprocess.run(["dvc", "queue", "start", "-j", str(workers)], cwd=root, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=600)
    most_running = 0
    while True:
        for _ in range(8):
            time.sleep(0.25)
            most_running = max(most_running, trainings_running())
        status = sh(root, "dvc", "queue", "status", env=env, check=False)
        rows = [line for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker status")]
        if rows and not any(w in line for line in rows for w in ("Queued", "Running")):
            break
    seconds = time.perf_counter() - t0
    done = sum("Success" in line for line in rows)
    sh(root, "dvc", "queue", "stop", "--kill", env=env, check=False)
    sh(root, "dvc", "exp", "remove", "--all-commits", env=env, check=False)
    sh(root, "dvc", "queue", "remove", "--all", env=env, check=False)
    if done != n:
        raise SystemExit(f"-j {workers}: {done} of {n} experiments succeeded:\n{status}")
    if most_running < min(workers, n):  # a setting that never ran its workers side by side measures nothing
        raise SystemExit(f"-j {workers}: at most {most_running} experiment(s) ran at once:\n{status}")
    return {"seconds": round(seconds, 1), "succeeded": done, "most_running_at_once": most_running}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data", default=str(REPO / windows_dir(REPO / "dvc.yaml")))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    env.pop("OMP_WAIT_POLICY", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, workers, threads) in enumerate(SETTINGS):
            # a fresh project per setting: DVC names its queue workers after the project directory and
            # skips starting one whose name it still sees registered from the previous setting
            root = Path(tmp) / f"proj{k}"
            root.mkdir()
            project(root, Path(args.data), args.epochs, env)
            r = run_queue(root, workers, threads, args.experiments, env, first_seed=1 + 100 * k)
            rows.append({"setting": label, "workers": workers, "threads": threads, **r})
            print(f"{label}: {r['seconds']} s for {args.experiments} experiments", flush=True)
    ref = rows[0]["seconds"]
    for r in rows:
        r["ratio_to_j1"] = round(r["seconds"] / ref, 3)
    res = {"machine": cpu_model(), "cpus": os.cpu_count(), "experiments": args.experiments, "epochs": args.epochs,
           "model": "gru (train_baseline's)", "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "queue_workers.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"`dvc queue start -j N` ({res['machine']}, {res['cpus']} CPUs; `bench/queue_workers.py`): one queue of "
             f"{args.experiments} experiments, each the gru of train_baseline for {args.epochs} epochs of 250 windows "
             "(seeds differ), wall time from `dvc queue start` until all finished, one run per setting, all in one "
             "invocation.", "", "| setting | wall s | vs -j 1 |", "|---|---:|---:|"]
    lines += [f"| {r['setting']} | {r['seconds']:.1f} | {r['ratio_to_j1']:.2f}x |" for r in rows]
    (out / "queue_workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
