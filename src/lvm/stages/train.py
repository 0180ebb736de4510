r"""The train_* stages: one model trained (lvm.training does the work), its outputs under the folders
the command names: <models>/<experiment>/best.pt and final.pt, <metrics>/train_<experiment>.json and
the DVCLive curves in <live>/<experiment>.

    python -m lvm.stages.train --model lstm --experiment lstm --data data/ctx100 \
        --models models --metrics metrics --live dvclive       # any of the six models
    dvc repro train_baseline                                    # dvc.yaml's stages name their folders

The run reads the params of the experiment: params.yaml's model/train sections with the keys of
`overrides.<experiment>` (if it has any) in their place, e.g. train_retrieval's gru.

With train.nproc > 1 the command relaunches itself through torchrun on this node and the same loop
runs data-parallel (DistributedDataParallel); it can also be started by torchrun directly:

    torchrun --nproc-per-node 4 -m lvm.stages.train --model gru --experiment baseline --data data/ctx100 \
        --models models --metrics metrics --live dvclive
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lvm.config import for_experiment
from lvm.data import WindowDataset
from lvm.entry import stage_main
from lvm.models import MODEL_NAMES
from lvm.training import run as train


def run(params: dict, model_name: str, experiment: str | None, data_dir: str, models_dir: str,
        metrics_dir: str, live_dir: str, no_progress: bool, argv: list[str]) -> None:
    """Train `model_name` as `experiment` (default: the model's name) with that experiment's params;
    with train.nproc > 1 and not yet under torchrun, relaunch this command (`argv`) through it."""
    experiment = experiment or model_name
    p = for_experiment(params, experiment)
    nproc = p["train"]["nproc"]
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: relaunch through it
        for split in ("train", "val"):  # bad input fails here with one error line, before any launch
            WindowDataset(Path(data_dir) / f"{split}.npz", mmap=True)
        sys.exit(launch(nproc, p["train"]["threads"], argv))
    train(p, model_name, experiment, data_dir=data_dir, models_dir=models_dir, metrics_dir=metrics_dir,
          live_dir=live_dir, progress=not no_progress)


main = stage_main(run, __doc__, data="data_dir", argv_to="argv", paths={
    "--models": "models_dir",    # checkpoints go to DIR/<experiment>/
    "--metrics": "metrics_dir",  # the run's metrics: DIR/train_<experiment>.json
    "--live": "live_dir",        # DVCLive curves: DIR/<experiment>/
}, options={
    "--model": {"dest": "model_name", "required": True, "choices": MODEL_NAMES},
    "--experiment": {"help": "the outputs' name under --models, --metrics, --live (default: the model's)"},
    "--no-progress": {"action": "store_true", "help": "no progress bar (there is none off a terminal anyway)"},
})


def launch(nproc: int, threads: int, argv: list[str]) -> int:
    """Run this stage with ARGV as `nproc` DDP processes on this node (torchrun --standalone)."""
    env = dict(os.environ)
    # torchrun would set 1 thread per process (with a warning); share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(threads or max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lvm.stages.train", *argv]
    print(f"train.nproc={nproc}: {' '.join(cmd[2:])}", flush=True)
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    main()
