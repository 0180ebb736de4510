"""Out-of-core training: memory per process while training on a split far larger than one copy per
process could afford.

    nice -n 10 .venv/bin/python bench/out_of_core.py            # 5M x 768 float32 (~15.4 GB), ~5-10 min
    .venv/bin/python bench/out_of_core.py --rows 200000 --steps 50 --out /tmp/ooc.json   # a quick look

1. Checks free disk space, then writes a synthetic train split in the export layout (vectors stored
   once + window starts; articles of --article-rows rows, stride-1 windows, context 100) and a small
   val split to a temp dir, streaming --chunk rows at a time (lvm.io.save_npz + StreamedArray): the
   writer never holds more than one chunk. The file's pages are then dropped from the page cache
   (posix_fadvise DONTNEED: this file only, no root needed), and again before each run, so every
   "cold" run starts with the vectors on disk; a "warm" run then repeats it (same windows, cached).
2. Trains a small GRU with the unchanged `python -m lvm.stages.train` (train.mmap: true, fp32, 1 epoch of
   --steps global batches of --batch windows), once with train.nproc 1 and once with train.nproc 2
   (torchrun, DDP over gloo; the same windows in the same global batches). Every process of the run
   (launcher, torchrun agent, workers) is polled every 20 ms through /proc/PID/status:
   VmHWM = the kernel's record of peak resident memory; RssAnon and RssFile = their sampled maxima.
   RssAnon is private memory (interpreter, torch, model, optimizer, batches); RssFile counts pages of
   mapped files that are resident AND mapped into this process: the shared libraries (~0.1-0.2 GB)
   plus the pages of the vectors file this process has read. Those are clean page-cache pages,
   shared by all processes on the node and dropped by the kernel under memory pressure (they are
   re-read from disk when touched again), so they bound nothing: a file larger than RAM still trains.
3. Deletes the temp dir, writes --out (JSON) and the same path with .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from common import proc_status  # noqa: E402
from lvm.data import window_starts  # noqa: E402
from lvm.io import StreamedArray, save_npz  # noqa: E402

GB = 1e9
FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def write_split(path: Path, rows: int, dim: int, article_rows: int, context: int, chunk: int, seed: int):
    """An export-layout split of `rows` random unit vectors, streamed chunk by chunk."""
    lengths = np.full(rows // article_rows, article_rows, np.int64)
    if rows % article_rows:
        lengths = np.append(lengths, rows % article_rows)
    rng = np.random.default_rng(seed)

    def chunks():
        for a in range(0, rows, chunk):
            x = rng.standard_normal((min(chunk, rows - a), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            yield x

    article = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
    starts = window_starts(lengths, context, 1)
    save_npz(path, vectors=StreamedArray((rows, dim), np.float32, chunks()), article_indices=article,
             chunk_indices=(np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)).astype(np.int32),
             source_rows=np.arange(rows, dtype=np.int64),
             window_starts=starts, context_length=np.int64(context))
    return starts.size


def drop_cache(path: Path) -> None:
    """Evict this file's pages from the page cache (clean pages only; affects nothing else)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # exited meanwhile
        return "?"
    rank = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)
    if rank is not None:
        return f"worker rank {rank}"
    if b"torch.distributed.run" in cmd:
        return "torchrun agent"
    return "launcher (python -m lvm.stages.train)"


class Poller(threading.Thread):
    def __init__(self, root: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.root, self.interval, self.stop = root, interval, threading.Event()
        self.peak: dict[int, dict] = {}
        self.roles: dict[int, str] = {}

    def run(self):
        while not self.stop.is_set():
            for pid in descendants(self.root):
                s = proc_status(FIELDS, pid)
                if not s:  # exited meanwhile
                    continue
                r = role(pid)  # re-read: a forked worker shows its role only once it has exec'd
                if r != "?":
                    self.roles[pid] = r
                peak = self.peak.setdefault(pid, dict.fromkeys(FIELDS, 0))
                for k, v in s.items():
                    peak[k] = max(peak[k], v)
            time.sleep(self.interval)


def train(work: Path, nproc: int, cold: bool, args) -> dict:
    params = {
        "data": {"context_length": 100},
        "model": {"hidden_dim": args.hidden, "gru_layers": args.layers},
        "train": {"epochs": 1, "batch_size": args.batch, "max_train_windows": args.steps * args.batch,
                  "window_stride": 0, "precision": "fp32", "loss": "cosine", "threads": 0,
                  "nproc": nproc, "mmap": True, "seed": 1},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    if cold:
        for split in ("train", "val"):
            drop_cache(work / f"data/ctx100/{split}.npz")
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               DVC_NO_ANALYTICS="1", DVC_STUDIO_OFFLINE="true", LVM_LOG_DIR=str(work / "logs"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lvm.stages.train", "--model", "gru", "--experiment", "bench", "--data", "data/ctx100", "--models", "models", "--metrics", "metrics", "--live", "dvclive",
                             "--no-progress"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    poller = Poller(proc.pid)
    poller.start()
    log = proc.communicate()[0]
    poller.stop.set()
    poller.join()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"training with nproc={nproc} failed:\n{log}")
    metrics = json.loads((work / "metrics/train_bench.json").read_text())
    # timings are not in the metrics file: the run's last line in its log (lvm.io.log_run)
    timings = json.loads((work / "logs/train_bench.jsonl").read_text().splitlines()[-1])
    procs = [{"pid": pid, "role": poller.roles.get(pid, "?"), **{k: v for k, v in peak.items()}}
             for pid, peak in poller.peak.items()]
    procs.sort(key=lambda r: r["role"])
    print(log.strip().splitlines()[-1])
    return {"nproc": nproc, "cache": "cold" if cold else "warm", "wall_s": round(wall, 1), "train_seconds": timings["train_seconds"],
            "windows_per_s": timings["train_seq_per_s"], "windows": args.steps * args.batch,
            "final_val_cosine": metrics["final_val_cosine"], "processes": procs}


def markdown(res: dict) -> str:
    f = res["file_bytes"]
    lines = [
        f"Out-of-core training (`bench/out_of_core.py`), {res['machine']}: train split "
        f"{res['rows']:,} x {res['dim']} float32 = **{f / GB:.2f} GB** on disk ({res['windows']:,} "
        f"stride-1 windows, context 100), memory-mapped (`train.mmap: true`); GRU {res['hidden']}x"
        f"{res['layers']}, fp32, {res['steps']} global batches of {res['batch']} windows, the file's "
        "pages evicted from the page cache before each cold run (a warm run repeats the same windows "
        "right after). Peaks per process, GB (1e9 bytes); "
        "% file = VmHWM / file size.",
        "",
        "| run | page cache | process | VmHWM (peak RSS) | max RssAnon | max RssFile | % file | windows/s | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in res["runs"]:
        for p in run["processes"]:
            lines.append(
                f"| nproc={run['nproc']} | {run['cache']} | {p['role']} | {p['VmHWM'] / GB:.3f} | {p['RssAnon'] / GB:.3f} | "
                f"{p['RssFile'] / GB:.3f} | {100 * p['VmHWM'] / f:.1f}% | {run['windows_per_s']:,} | "
                f"{run['wall_s']} |")
    lines += ["", f"Writing the file took {res['write_seconds']} s ({f / GB / res['write_seconds']:.2f} GB/s). "
              "RssFile is the part of the mapped file (plus shared libraries) resident and mapped in that "
              "process: clean page-cache pages shared across processes and reclaimable, so it grows with "
              "the windows read, not with the file, and does not stop a file larger than RAM from training."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--article-rows", type=int, default=1000)
    ap.add_argument("--val-rows", type=int, default=3000)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=200, help="global batches per run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache repeat of each run")
    ap.add_argument("--tmp", default=None, help="folder for the temp dir (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (prints its path)")
    ap.add_argument("--out", default=str(HERE / "results" / "out_of_core.json"))
    args = ap.parse_args()

    need = args.rows * args.dim * 4 * 1.05 + 2 * GB
    tmp_root = args.tmp or tempfile.gettempdir()
    free = shutil.disk_usage(tmp_root).free
    if free < need:
        raise SystemExit(f"{tmp_root}: {free / GB:.1f} GB free, need {need / GB:.1f} GB")
    work = Path(tempfile.mkdtemp(prefix="lvm-ooc-", dir=tmp_root))
    try:
        (work / "data/ctx100").mkdir(parents=True)
        t0 = time.perf_counter()
        windows = write_split(work / "data/ctx100/train.npz", args.rows, args.dim, args.article_rows, 100, args.chunk, 0)
        write_seconds = time.perf_counter() - t0
        write_split(work / "data/ctx100/val.npz", args.val_rows, args.dim, args.article_rows, 100, args.chunk, 1)
        file_bytes = (work / "data/ctx100/train.npz").stat().st_size
        print(f"wrote {file_bytes / GB:.2f} GB in {write_seconds:.1f} s to {work}")
        res = {"rows": args.rows, "dim": args.dim, "file_bytes": file_bytes, "write_seconds": round(write_seconds, 1),
               "windows": windows, "steps": args.steps,
               "batch": args.batch, "hidden": args.hidden, "layers": args.layers,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "runs": []}
        for nproc in args.nprocs:  # cold: the vectors on disk; warm: the same windows again, cached
            res["runs"].append(train(work, nproc, True, args))
            if not args.no_warm:
                res["runs"].append(train(work, nproc, False, args))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
