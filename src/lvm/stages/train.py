"""The train_* stages: one model trained (lvm.training does the work), its outputs under the folders
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

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lvm.config import for_experiment, load_params
from lvm.data import WindowDataset
from lvm.entry import stage
from lvm.models import MODEL_NAMES
from lvm.training import run


@stage
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--experiment", help="the outputs' name under --models, --metrics, --live (default: model)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the exported windows (train.npz, val.npz): dvc.yaml's ${windows}")
    parser.add_argument("--models", required=True, metavar="DIR", help="checkpoints go to DIR/<experiment>/")
    parser.add_argument("--metrics", required=True, metavar="DIR", help="the run's metrics: DIR/train_<experiment>.json")
    parser.add_argument("--live", required=True, metavar="DIR", help="DVCLive curves: DIR/<experiment>/")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    experiment = args.experiment or args.model
    p = for_experiment(load_params(args.params), experiment)
    nproc = p["train"]["nproc"]
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: relaunch through it
        for split in ("train", "val"):  # bad input fails here with one error line, before any launch
            WindowDataset(Path(args.data) / f"{split}.npz", mmap=True)
        sys.exit(launch(nproc, p["train"]["threads"], sys.argv[1:] if argv is None else argv))
    run(p, args.model, experiment, data_dir=args.data, models_dir=args.models, metrics_dir=args.metrics,
        live_dir=args.live, progress=not args.no_progress)


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
