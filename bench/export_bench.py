"""Benchmark the export stage (load_corpus + export_windows) and WindowDataset batch gathering.

    .venv/bin/python bench/export_bench.py [--rows 1000000 --dim 768 --articles 2000 --repeats 3]

1. Writes a synthetic, uncompressed vectors npz (unit rows, random article lengths, chunk_indices) to a
   temp dir with lvm.io.save_npz.
2. Runs the export (context 100, overlap 99 = stride 1 by default) in a fresh SUBPROCESS per repeat, so
   every run starts cold in process memory (the input file itself stays in the OS page cache: warm-cache
   figures). Peak RSS is the child's own ru_maxrss, cross-checked with /usr/bin/time -v when present;
   a sampler thread in the child also tracks RssAnon (private memory) and RssFile (pages of the
   memory-mapped input, shared with the page cache and reclaimable) separately.
3. Measures WindowDataset.batch throughput (batch 32 and 256, shuffled indices) on the train split.
Writes bench/results/export.json (or --out) and prints a summary. Targets: export < 30 s, peak RSS
<= 1.5 x input size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import proc_status

GIB = 1024 ** 3
HERE = Path(__file__).resolve().parent
MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


# --- child: one export run -------------------------------------------------------------------------

class _Sampler(threading.Thread):
    """Max of RssAnon / RssFile / VmRSS, sampled every 10 ms (the kernel keeps only the total's peak)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.sample()
            time.sleep(0.01)

    def sample(self):
        s = proc_status(MEMORY_FIELDS)
        for k in self.peak:
            self.peak[k] = max(self.peak[k], s.get(k, 0))


def child(inp: str, out_dir: str, context: int, overlap: int) -> None:
    import resource

    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    from lvm.data import export_windows, load_corpus
    from lvm.io import write_json

    t_import = time.perf_counter()
    rss_after_import = proc_status(MEMORY_FIELDS).get("VmRSS")
    corpus = load_corpus(inp)
    t_load = time.perf_counter()
    meta = export_windows(corpus, out_dir, context, overlap, {"train": 0.8, "val": 0.1, "test": 0.1}, 42)
    write_json(Path(out_dir) / "metadata.json", meta)
    t_end = time.perf_counter()
    sampler.sample()
    sampler.stop.set()
    status = proc_status(MEMORY_FIELDS)
    print(json.dumps({
        "seconds_import": t_import - t0, "seconds_load_corpus": t_load - t_import,
        "seconds_export_windows": t_end - t_load, "seconds_in_child": t_end - t0,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "vm_hwm_bytes": status.get("VmHWM"), "rss_after_import_bytes": rss_after_import, "sampled_peak_bytes": sampler.peak,
        "total_windows": meta["total_windows"], "splits": meta["splits"],
    }))


# --- parent ----------------------------------------------------------------------------------------

def make_input(path: Path, rows: int, dim: int, articles: int, seed: int) -> dict:
    from lvm.io import StreamedArray, save_npz

    rng = np.random.default_rng(seed)
    if articles > rows:
        raise SystemExit("--articles must be <= --rows")
    w = rng.lognormal(0.0, 1.0, articles)  # skewed lengths: some articles too short for a window
    lengths = 1 + np.floor(w / w.sum() * (rows - articles)).astype(np.int64)
    lengths[: rows - lengths.sum()] += 1  # distribute the rounding remainder
    assert lengths.sum() == rows and lengths.min() >= 1
    article = np.repeat(np.arange(articles, dtype=np.int32), lengths)
    chunk = (np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)).astype(np.int32)
    block = 65536

    def vectors():
        for a in range(0, rows, block):
            v = rng.standard_normal((min(block, rows - a), dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            yield v

    t0 = time.perf_counter()
    save_npz(path, vectors=StreamedArray((rows, dim), np.float32, vectors()),
             article_indices=article, chunk_indices=chunk)
    return {"seconds_write_input": round(time.perf_counter() - t0, 2),
            "article_len_min": int(lengths.min()), "article_len_median": float(np.median(lengths)),
            "article_len_max": int(lengths.max())}


def run_export(inp: Path, out_dir: Path, context: int, overlap: int) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(inp), str(out_dir),
           str(context), str(overlap)]
    use_time = Path("/usr/bin/time").is_file()
    if use_time:
        cmd = ["/usr/bin/time", "-v", *cmd]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"export child failed ({r.returncode}):\n{r.stderr[-4000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_seconds"] = wall
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
        res["time_v_maxrss_bytes"] = int(m.group(1)) * 1024 if m else None
    return res


def loader_bench(path: Path, batch_sizes, seconds: float, repeats: int, mmap: bool, context_dtype=None) -> dict:
    """Shuffled WindowDataset.batch calls; `context_dtype` (e.g. torch.bfloat16) gathers contexts from a
    table of that dtype, as lvm.training does for bf16 training (train.bf16_contexts)."""
    import torch

    from lvm.data import WindowDataset

    t0 = time.perf_counter()
    ds = WindowDataset(path, mmap=mmap)
    if context_dtype is not None:
        ds = ds.with_context_dtype(context_dtype)
    t_open = time.perf_counter() - t0
    bytes_per_value = torch.empty(0, dtype=ds.context_vectors.dtype).element_size() if ds.vectors is not None else 4
    out = {"seconds_open": round(t_open, 2), "windows": len(ds), "torch_threads": torch.get_num_threads(),
           "context_dtype": str(ds.context_vectors.dtype if ds.vectors is not None else "float32")}
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        rates = []
        for _ in range(repeats):
            order = rng.permutation(len(ds))
            done, pos, t0 = 0, 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                if pos + bs > order.size:
                    order, pos = rng.permutation(len(ds)), 0
                ctx, tgt = ds.batch(order[pos:pos + bs])
                pos += bs
                done += ctx.shape[0]
            rates.append(done / (time.perf_counter() - t0))
        med = statistics.median(rates)
        out[f"batch_{bs}"] = {"windows_per_s_median": round(med, 1), "windows_per_s_runs": [round(x, 1) for x in rates],
                              "gib_per_s_gathered": round(med * ds.context_length * ds.dim * bytes_per_value / GIB, 2)}
    del ds
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--articles", type=int, default=2000)
    ap.add_argument("--context", type=int, default=100)
    ap.add_argument("--overlap", type=int, default=99)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loader-seconds", type=float, default=3.0, help="per batch size and repeat")
    ap.add_argument("--loader-batches", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--workdir", default=None, help="where input/output go (default: a temp dir, removed)")
    ap.add_argument("--out", default=str(HERE / "results" / "export.json"))
    ap.add_argument("--child", nargs=4, metavar=("INPUT", "OUT_DIR", "L", "OVERLAP"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        inp, out_dir, L, ov = args.child
        return child(inp, out_dir, int(L), int(ov))

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lvm-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        inp, out_dir = work / "vectors.npz", work / "ctx"
        input_bytes = args.rows * args.dim * 4
        print(f"writing input: {args.rows:,} x {args.dim} float32 = {input_bytes / GIB:.2f} GiB -> {inp}")
        gen = make_input(inp, args.rows, args.dim, args.articles, args.seed)
        print(f"  {gen['seconds_write_input']} s")
        load_before = os.getloadavg()
        runs = []
        for i in range(args.repeats):
            res = run_export(inp, out_dir, args.context, args.overlap)
            runs.append(res)
            print(f"export run {i + 1}/{args.repeats}: wall {res['wall_seconds']:.2f} s "
                  f"(load_corpus {res['seconds_load_corpus']:.2f}, export_windows {res['seconds_export_windows']:.2f}), "
                  f"peak RSS {res['ru_maxrss_bytes'] / GIB:.2f} GiB "
                  f"(sampled peaks: anon {res['sampled_peak_bytes']['RssAnon'] / GIB:.2f}, "
                  f"file-backed {res['sampled_peak_bytes']['RssFile'] / GIB:.2f}), {res['total_windows']:,} windows")
        load_after = os.getloadavg()
        wall = statistics.median(r["wall_seconds"] for r in runs)
        rss = statistics.median(r["ru_maxrss_bytes"] for r in runs)
        anon = statistics.median(r["sampled_peak_bytes"]["RssAnon"] for r in runs)
        filed = statistics.median(r["sampled_peak_bytes"]["RssFile"] for r in runs)
        windows = runs[-1]["total_windows"]
        result = {
            "config": {k: getattr(args, k) for k in ("rows", "dim", "articles", "context", "overlap", "repeats", "seed")},
            "input": {"vectors_bytes": input_bytes, "vectors_gib": round(input_bytes / GIB, 3),
                      "npz_bytes": inp.stat().st_size, **gen},
            "export": {
                "wall_seconds_median": round(wall, 2),
                "peak_rss_gib_median": round(rss / GIB, 3),
                "peak_rss_over_input": round(rss / input_bytes, 3),
                "peak_rss_anon_gib_median_sampled": round(anon / GIB, 3),
                "peak_rss_file_gib_median_sampled": round(filed / GIB, 3),
                "peak_rss_anon_over_input": round(anon / input_bytes, 3),
                "windows": windows,
                "windows_per_s": round(windows / wall, 1),
                "output_bytes": sum(f.stat().st_size for f in out_dir.glob("*.npz")),
                "target_seconds": 30, "target_rss_over_input": 1.5,
                "meets_time_target": wall < 30, "meets_rss_target": rss <= 1.5 * input_bytes,
                "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "splits"}
                         for r in runs],
                "splits": runs[-1]["splits"],
            },
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "numpy": np.__version__, "loadavg_before": load_before, "loadavg_after": load_after},
            "notes": [
                "Wall time is measured around a fresh subprocess (interpreter start and imports included); the input "
                "npz was just written, so it is served from the OS page cache (warm-cache figure).",
                "Peak RSS = the child's ru_maxrss (= VmHWM). It counts pages of the memory-mapped input that the "
                "process touched (RssFile): shared with the page cache, clean, and reclaimable under memory "
                "pressure. RssAnon is the process's private memory.",
            ],
        }
        e = result["export"]
        print(f"export: median {e['wall_seconds_median']} s, {e['windows_per_s']:,} windows/s; peak RSS "
              f"{e['peak_rss_gib_median']} GiB = {e['peak_rss_over_input']} x input "
              f"(anon {e['peak_rss_anon_gib_median_sampled']} GiB, file-backed {e['peak_rss_file_gib_median_sampled']} GiB)")
        if not args.no_loader:
            result["loader"] = {}
            for mmap in (False, True):
                key = "mmap" if mmap else "in_memory"
                result["loader"][key] = lb = loader_bench(out_dir / "train.npz", args.loader_batches,
                                                          args.loader_seconds, args.repeats, mmap)
                print(f"loader ({key}, {lb['windows']:,} train windows, L={args.context}, D={args.dim}): " + ", ".join(
                    f"batch {bs}: {lb[f'batch_{bs}']['windows_per_s_median']:,} windows/s"
                    for bs in args.loader_batches))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
