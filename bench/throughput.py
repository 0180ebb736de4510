"""Training and inference throughput of the six models, achieved FLOP/s against this machine's own
GEMM peak, and the window loader, at the original configuration (context 100, batch 32, AdamW with
grad-clip exactly as lvm.training does it) and at the embedded data's dimension.

    .venv/bin/python bench/throughput.py                        # everything: ~5 min on 2 CPU cores
    .venv/bin/python bench/throughput.py --models gru memory_gru --dims 768 --precisions bf16 --steps 4
    .venv/bin/python bench/throughput.py --device cuda          # on a GPU (default --device auto)

Every (model, D, precision) runs in a fresh subprocess (own allocator, thread pool and peak-memory
counter). In it: build the model (lvm.config defaults = the original sizes) and AdamW; `--warmup`
untimed steps, then `--steps` timed training steps (forward under the precision's autocast, MSE,
zero_grad, backward, clip_grad_norm_(1.0), AdamW step, loss.item(): lvm.training's loop minus the
loader); the same for forward-only evaluation (model.eval(), torch.no_grad()). Reported rates are
batch / median step time. FLOPs per step are counted once with torch.utils.flop_counter, then
divided by the median step time and compared with a 2048x2048 GEMM measured in the same run (fp32
runs against the fp32 GEMM, bf16 runs against the bf16 GEMM).

Writes bench/results/throughput.json and bench/results/throughput.md (the table in docs/performance.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model, proc_status, repository_params

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = ("lstm", "gru", "transformer", "amn", "hierarchical_gru", "memory_gru")
# docs/performance.md, "The original implementation": training seq/s of the ORIGINAL implementation here
# (D=768, context 100, batch 32, fp32, 2 threads); the target is 2x these.
ORIGINAL_FP32_SEQ_PER_S = {"gru": 37, "lstm": 77, "transformer": 15, "amn": 2084, "hierarchical_gru": 67,
                           "memory_gru": 34}
TARGET_SPEEDUP = 2.0
# (label, environment, models, precisions): the levers of this package that can be switched off
ABLATIONS = (
    ("nn.GRU (LVM_FAST_GRU=0)", {"LVM_FAST_GRU": "0"}, ("gru", "memory_gru"), ("fp32", "bf16")),
    ("fastrnn, torch.mm instead of pre-packed oneDNN weights (LVM_PACKED_GEMM=0)", {"LVM_PACKED_GEMM": "0"},
     ("gru", "memory_gru"), ("bf16",)),
    ("glibc malloc defaults (LVM_MALLOC_TUNE=0)", {"LVM_MALLOC_TUNE": "0"}, ("gru", "memory_gru"), ("bf16",)),
)
ORIGINAL_D = 768
# The original implementation's training setup, which the table measures (params.yaml trains differently):
# params.yaml's model sizes without an anchor, MSE, AdamW(lr 5e-4, wd 0.01), clip_grad_norm_ 1.0.
ORIGINAL_MODEL = {"anchor": "none"}
ORIGINAL_TRAIN = {"loss": "mse", "lr": 5e-4, "weight_decay": 0.01, "grad_clip": 1.0}
MIB = 1024 ** 2


# --- helpers shared by parent and children ----------------------------------------------------------

def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _machine_busy_seconds() -> float | None:
    """CPU-seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _resolve_device(name: str):
    """--device as training resolves train.device (auto: cuda > mps > cpu); a bad one ends the run."""
    from lvm import LvmError
    from lvm.hardware import resolve_device

    try:
        return resolve_device(name, key="--device")
    except LvmError as e:
        raise SystemExit(f"bench: {e}") from None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- child: GEMM peak ------------------------------------------------------------------------------

def child_gemm(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    device = _resolve_device(spec["device"])
    n, out = spec["n"], {}
    from lvm.hardware import native_bf16
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype is torch.bfloat16 and not native_bf16(device):
            out[name] = {"gflop_per_s_median": None, "gflop_per_s_best": None, "reps": 0,
                         "skipped": "no native bf16 on this device (emulated: minutes per GEMM)"}
            continue
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device, dtype)
        b = torch.randn(n, n, generator=g).to(device, dtype)
        for _ in range(3):
            torch.mm(a, b)
        _sync(device)
        times = []
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - t0)
        flop = 2 * n ** 3
        out[name] = {"gflop_per_s_median": round(flop / statistics.median(times) / 1e9, 1),
                     "gflop_per_s_best": round(flop / min(times) / 1e9, 1), "reps": len(times)}
    return out


# --- child: one model --------------------------------------------------------------------------------

def _flop_count(fn, device) -> int:
    """Matmul FLOPs of fn() by torch.utils.flop_counter. Gaps filled in: oneDNN's fused RNN op
    (nn.LSTM on CPU) is not counted, so it runs with oneDNN off (ATen's per-step cell: the same
    matmuls), and lvm.models.fastrnn's pre-packed oneDNN linear is swapped for torch.mm; the CPU
    flash-attention kernels are not in the registry, so they get the registry's own SDPA formulas
    (dense attention, causal masking not discounted, as for the CUDA kernels)."""
    import torch
    from torch.utils import flop_counter as fcm

    aten = torch.ops.aten
    custom = {}

    def sdpa_fwd(query, key, value, *args, out_shape=None, **kwargs):
        return fcm.sdpa_flop_count(query, key, value)

    def sdpa_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fcm.sdpa_backward_flop_count(grad_out, query, key, value)

    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = sdpa_fwd
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = sdpa_bwd
    from lvm.models import fastrnn

    packed, fastrnn._PACKED = fastrnn._PACKED, False  # its pre-packed oneDNN linear is not counted either
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            with fcm.FlopCounterMode(display=False, custom_mapping=custom) as counter:
                fn()
    finally:
        fastrnn._PACKED = packed
    return int(counter.get_total_flops())


def child_model(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from lvm.hardware import autocast
    from lvm.models import count_parameters, create_model
    from lvm.models import fastrnn
    from lvm.runtime import set_threads, tune_malloc
    from lvm.training import make_optimizer, train_step

    set_threads(spec["threads"])  # as training does (includes its allocator setting)
    device = _resolve_device(spec["device"])
    B, L, D, precision = spec["batch"], spec["context"], spec["dim"], spec["precision"]
    params = repository_params()
    tcfg = {**params["train"], **ORIGINAL_TRAIN, "min_context": 1}
    torch.manual_seed(0)
    model = create_model(spec["model"], input_dim=D, context_length=L, normalize="none",  # as the original
                         **{**params["model"], **ORIGINAL_MODEL}).to(device)
    opt = make_optimizer(model, tcfg, device)  # fused on CUDA, as training
    g = torch.Generator().manual_seed(1)
    # targets "all" (train.targets: all): the model predicts the next vector at every position, the
    # loss averages over all B x L of them; "last": one target per window
    every = spec.get("targets", "last") == "all" and model.SEQUENCE  # amn sees the context as a bag: last only
    per_window = L if every else 1
    batches = [(F.normalize(torch.randn(B, L, D, generator=g), dim=-1).to(device),
                F.normalize(torch.randn(B, L, D, generator=g) if every else torch.randn(B, D, generator=g),
                            dim=-1).to(device)) for _ in range(4)]

    def training_step(i, precision=precision):  # the training loop's own step, on synthetic batches
        ctx, tgt = batches[i % len(batches)]
        model.train()
        return train_step(model, ctx, tgt, opt, {**tcfg, "precision": precision}, all_targets=every).item()

    @torch.no_grad()
    def eval_step(i, precision=precision):
        ctx, _ = batches[i % len(batches)]
        with autocast(device, precision):
            pred = model(ctx)
        return pred.float().sum().item()

    def timed(step, warmup, steps):
        model.eval() if step is eval_step else model.train()
        for i in range(warmup):
            step(i)
        _sync(device)
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            step(i)
            _sync(device)
            times.append(time.perf_counter() - t0)
        return times

    cuda = device.type == "cuda"

    def mem_baseline():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)
        return proc_status(("VmRSS",)).get("VmRSS")

    def mem_peak(base):
        if cuda:
            return torch.cuda.max_memory_allocated(device) - base
        hwm = proc_status(("VmHWM",)).get("VmHWM")
        return hwm - base if hwm is not None and base is not None else None

    # CPU baseline: RSS before the first step (model, optimizer without state, batches), VmHWM reset
    # before each phase; the training peak therefore includes whatever the allocator kept from eval
    base = mem_baseline()
    can_reset = cuda or _reset_peak_rss()
    eval_times = timed(eval_step, spec["warmup"], spec["eval_steps"])
    eval_mem = mem_peak(base) if can_reset else None
    if cuda:
        base = mem_baseline()
    else:
        _reset_peak_rss()
    train_times = timed(training_step, spec["warmup"], spec["steps"])
    train_mem = mem_peak(base) if can_reset else None
    # FLOPs last: the counting pass runs slower kernels and must not touch the timings or peaks. It runs
    # in fp32 (the same matmuls; bf16 GEMMs without oneDNN would take minutes). The parent asks for it
    # once per (model, D): precision and the ablations do not change the matmuls.
    train_flops = eval_flops = None
    if spec.get("count_flops", True):
        train_flops = _flop_count(lambda: training_step(0, "fp32"), device)
        model.eval()
        eval_flops = _flop_count(lambda: eval_step(0, "fp32"), device)

    med_t, med_e = statistics.median(train_times), statistics.median(eval_times)
    return {
        "model": spec["model"], "dim": D, "precision": precision, "device": str(device),
        "fast_gru": bool(fastrnn.ENABLED and device.type == "cpu"), "malloc_tuned": tune_malloc(), "params": count_parameters(model),
        "train": {
            "seq_per_s_median": round(B / med_t, 2), "ms_per_step_median": round(med_t * 1e3, 2),
            "targets": "all" if every else "last", "targets_per_s_median": round(B * per_window / med_t, 1),
            "ms_per_step_min": round(min(train_times) * 1e3, 2), "ms_per_step_max": round(max(train_times) * 1e3, 2),
            "steps": len(train_times), "flops_per_step": train_flops,
            "peak_mem_delta_mib": round(train_mem / MIB, 1) if train_mem is not None else None,
        },
        "eval": {
            "seq_per_s_median": round(B / med_e, 2), "ms_per_batch_median": round(med_e * 1e3, 2),
            "batches": len(eval_times), "flops_per_batch": eval_flops,
            "peak_mem_delta_mib": round(eval_mem / MIB, 1) if eval_mem is not None else None,
        },
        "memory_method": ("torch.cuda.max_memory_allocated minus memory_allocated before the steps" if cuda else
                          "VmHWM (reset through /proc/self/clear_refs) minus VmRSS before the first step"
                          if can_reset else "unavailable"),
    }


# --- parent --------------------------------------------------------------------------------------

def run_child(kind: str, spec: dict, env_extra: dict | None = None) -> dict:
    import resource

    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO / "src")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    busy0, self0 = _machine_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    busy1, self1 = _machine_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"child {kind} {spec} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    if busy0 is not None:
        # CPU time other processes used while this child ran, in cores: ~0 on an idle machine
        res["foreign_cpu_cores"] = round(max(0.0, (busy1 - busy0) - own) / wall, 3)
    res["child_wall_s"] = round(wall, 1)
    return res


def wait_for_idle(max_wait: float, threshold: float = 0.1, window: float = 3.0) -> bool:
    """Block until the whole machine used < `threshold` cores for `window` seconds (max `max_wait` s)."""
    t_end = time.perf_counter() + max_wait
    while time.perf_counter() < t_end:
        b0, t0 = _machine_busy_seconds(), time.perf_counter()
        if b0 is None:
            return True
        time.sleep(window)
        if (_machine_busy_seconds() - b0) / (time.perf_counter() - t0) < threshold:
            return True
    return False


def run_measured(kind: str, spec: dict, args, env_extra: dict | None = None) -> dict:
    """run_child, repeated (up to --retries times, after waiting for an idle machine) while other
    processes used more than --max-foreign cores during the run; keeps the least disturbed result."""
    best = None
    for attempt in range(1 + args.retries):
        if attempt or args.wait_idle:
            wait_for_idle(args.idle_wait)
        res = run_child(kind, spec, env_extra)
        res["attempt"] = attempt + 1
        if best is None or res.get("foreign_cpu_cores", 0) < best.get("foreign_cpu_cores", 0):
            best = res
        if res.get("foreign_cpu_cores", 0) <= args.max_foreign:
            break
        print(f"  (other processes used {res['foreign_cpu_cores']} cores during this run; retrying)", flush=True)
    return best


def loader_bench(args) -> dict:
    """WindowDataset.batch windows/s at --batch through bench/export_bench.py's loader_bench (shuffled
    windows, in-memory vectors), on a synthetic stride-1 export per benchmarked D whose vectors table
    (--loader-mib) is larger than the L3 cache, and on the real train split when data/ctx100 exists."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)  # WindowDataset.batch gathers on the intra-op threads
    spec = importlib.util.spec_from_file_location("export_bench", HERE / "export_bench.py")
    eb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eb)
    from lvm.data import export_windows, load_corpus

    out = {"by_dim": {}}
    for dim in args.dims:
        rows = args.loader_mib * MIB // (4 * dim)
        with tempfile.TemporaryDirectory(prefix="lvm-throughput-") as tmp:
            tmp = Path(tmp)
            eb.make_input(tmp / "vectors.npz", rows, dim, max(1, rows // 500), 0)
            export_windows(load_corpus(tmp / "vectors.npz"), tmp / "ctx", args.context, args.context - 1,
                           {"train": 0.8, "val": 0.1, "test": 0.1}, 42)
            res = eb.loader_bench(tmp / "ctx" / "train.npz", [args.batch], args.loader_seconds, 3, mmap=False)
            res16 = eb.loader_bench(tmp / "ctx" / "train.npz", [args.batch], args.loader_seconds, 3, mmap=False,
                                    context_dtype=torch.bfloat16)
        out["by_dim"][str(dim)] = {"rows": rows, "context": args.context, "table_mib": args.loader_mib,
                                   "windows_per_s": res[f"batch_{args.batch}"]["windows_per_s_median"],
                                   "windows_per_s_bf16": res16[f"batch_{args.batch}"]["windows_per_s_median"],
                                   "memcpy_windows_per_s": _memcpy_rate(args.batch * args.context * dim, args),
                                   **res, "bf16": res16}
    from lvm.pipeline import windows_dir  # dvc.yaml's vars: the one place the path lives

    real = REPO / windows_dir(REPO / "dvc.yaml") / "train.npz"
    if real.is_file():
        res = eb.loader_bench(real, [args.batch], args.loader_seconds, 3, mmap=False)
        with np.load(real) as z:
            dim = int(z["vectors"].shape[1])
        out["data_ctx100_train"] = {"path": str(real.relative_to(REPO)), "dim": dim,
                                    "note": "small table (cache-resident), so faster than the synthetic one", **res}
    exp = HERE / "results" / "export.json"
    if exp.is_file():
        e = json.loads(exp.read_text()).get("loader", {})
        out["export_json_reference"] = {
            "file": "bench/results/export.json",
            "in_memory_batch_32_windows_per_s": e.get("in_memory", {}).get("batch_32", {}).get("windows_per_s_median"),
            "mmap_batch_32_windows_per_s": e.get("mmap", {}).get("batch_32", {}).get("windows_per_s_median"),
            "note": "export_bench.py: 1M x 768 rows, 636k train windows at stride 1, WindowDataset.batch as it was "
                    "then (numpy fancy indexing; in-memory vectors now use torch.index_select)",
        }
    return out


def _memcpy_rate(floats: int, args) -> float:
    """Windows/s a plain copy of one fp32 batch's bytes reaches (batch / median copy time): the ceiling
    of any loader that materialises fp32 contexts on this machine's memory bandwidth."""
    import torch

    src, dst = torch.randn(floats), torch.empty(floats)
    times = []
    t_end = time.perf_counter() + args.loader_seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return round(args.batch / statistics.median(times), 1)


def fmt(x, nd=0):
    return "—" if x is None else f"{x:,.{nd}f}"


def markdown(result: dict) -> str:
    m, peak = result["machine"], result["gemm_peak"]
    lines = [
        f"Throughput on this machine ({m['cpu_model']}, {m['threads']} threads, torch {m['torch']}, device "
        f"{result['config']['device']}): batch {result['config']['batch']}, context {result['config']['context']}, "
        f"AdamW + grad-clip as in `lvm.training`; train = sequences/s of full training steps, eval = forward only "
        f"(no_grad); median of {result['config']['steps']} steps after {result['config']['warmup']} warm-up"
        + (f", fastest of {result['config']['repeats']} passes over all configurations" if result['config']['repeats'] > 1
           else "") + ". "
        f"% peak = counted matmul FLOP/s over a {result['config']['gemm_n']}² GEMM measured in the same run "
        f"({fmt(peak['fp32']['gflop_per_s_median'])} GFLOP/s fp32, {fmt(peak['bf16']['gflop_per_s_median'])} GFLOP/s "
        f"bf16). x orig = train seq/s over the original implementation's fp32 figure (docs/performance.md, \"The original implementation\"; target 2x). "
        f"Generated by `bench/throughput.py`.",
        "",
        "| model | D | precision | train seq/s | train targets/s | x orig | eval seq/s | train GFLOP/s | % peak | "
        + ("peak GPU memory Δ (MiB) |" if str(result["config"]["device"]).startswith("cuda") else "peak RSS Δ (MiB) |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        tr, ev = r["train"], r["eval"]
        ratio = r.get("speedup_vs_original")
        lines.append(
            f"| `{r['model']}` | {r['dim']} | {r['precision']} | {fmt(tr['seq_per_s_median'], 1)} | "
            f"{fmt(tr.get('targets_per_s_median'), 0)} ({tr.get('targets', 'last')}) | "
            f"{fmt(ratio, 2) + 'x' if ratio is not None else '—'} | {fmt(ev['seq_per_s_median'], 0)} | "
            f"{fmt(tr['gflop_per_s'], 0)} | {fmt(tr.get('pct_of_peak'), 1)} | {fmt(tr['peak_mem_delta_mib'], 0)} |")
    ld = result.get("loader")
    if ld:
        lines += [""]
        for dim, f in result.get("loader_vs_fastest_train", {}).items():
            lines.append(
                f"Loader at D={dim} (`WindowDataset.batch`, batch {result['config']['batch']}, "
                f"L={result['config']['context']}, {ld['by_dim'][dim]['table_mib']:,} MiB synthetic table), against "
                f"the fastest training rate at that D (`{f['model']}` {f['precision']}, {fmt(f['seq_per_s'], 0)} "
                f"seq/s; target 20x): float32 table {fmt(f['loader_windows_per_s'])} windows/s = "
                f"{f['loader_over_train']:.1f}x ({'met' if f['meets_20x'] else 'NOT met'}; that gather runs at "
                f"{100 * f['fp32_gather_over_memcpy']:.0f}% of a plain memcpy of the same bytes, "
                f"{fmt(f['memcpy_windows_per_s'])} windows/s"
                + (", so no fp32 copy can reach 20x here" if f['memcpy_windows_per_s'] < 20 * f['seq_per_s'] else "")
                + "); bfloat16 table "
                f"(what bf16 training gathers from, `train.bf16_contexts`) {fmt(f['loader_bf16_windows_per_s'])} "
                f"windows/s = {f['loader_bf16_over_train']:.1f}x ({'met' if f['meets_20x_bf16_table'] else 'NOT met'})."
                f" With the table each configuration's training actually uses, the loader is "
                f"{f['stage_loader_min_ratio']:.1f}x or more of every configuration's training rate.  ")
        if "data_ctx100_train" in ld:
            real = ld["data_ctx100_train"]
            rate = real[f"batch_{result['config']['batch']}"]["windows_per_s_median"]
            lines.append(f"On the embedded data (data/ctx100 train split, D={real['dim']}, cache-resident): "
                         f"{fmt(rate)} windows/s.")
    if result.get("ablations"):
        lines += ["", f"Ablations at D={ORIGINAL_D} (each run right after the default configuration it is compared "
                      "with; `vs default` = its train seq/s over the default's, median over passes):", "",
                  "| model | precision | variant | train seq/s | vs default | eval seq/s |",
                  "|---|---|---|---:|---:|---:|"]
        main = {(r["model"], r["dim"], r["precision"]): r for r in result["runs"]}
        for a in result["ablations"]:
            f = main.get((a["model"], a["dim"], a["precision"]))
            rel = a.get("vs_default_median")
            lines.append(f"| `{a['model']}` | {a['precision']} | {a['ablation']} | {fmt(a['train']['seq_per_s_median'], 1)} | "
                         f"{fmt(rel, 2) + 'x' if rel else '—'} | {fmt(a['eval']['seq_per_s_median'], 0)} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # sparse_transformer on request only (its point is long contexts: --context 500 / 1000)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=(*MODELS, "sparse_transformer"))
    ap.add_argument("--dims", nargs="+", type=int, default=[768, 384])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per configuration")
    ap.add_argument("--repeats", type=int, default=1,
                    help="passes over all configurations; each reports its fastest pass (all are kept)")
    ap.add_argument("--eval-steps", type=int, default=None, help="timed eval batches (default: 2 x --steps)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=100)
    ap.add_argument("--targets", default="last", choices=["last", "all"],
                    help="training targets per window: last (one) or all (every position, train.targets: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the reference used 2)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--no-ablation", action="store_true",
                    help="skip the ablations (ABLATIONS: levers switched off one at a time, at D=768, CPU only)")
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--loader-mib", type=int, default=440, help="size of each synthetic vectors table (> L3 cache)")
    ap.add_argument("--loader-seconds", type=float, default=2.0)
    ap.add_argument("--max-foreign", type=float, default=0.1,
                    help="rerun a configuration when other processes used more than this many cores meanwhile")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--idle-wait", type=float, default=300, help="max seconds to wait for an idle machine per retry")
    ap.add_argument("--wait-idle", action="store_true", help="also wait for an idle machine before every first try")
    ap.add_argument("--out", default=str(HERE / "results" / "throughput.json"))
    ap.add_argument("--md", default=None, help="markdown table (default: --out with .md)")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        res = child_gemm(spec) if kind == "gemm" else child_model(spec)
        print(json.dumps(res))
        return

    import torch

    from lvm.hardware import native_bf16

    device = str(_resolve_device(args.device))
    if "bf16" in args.precisions and not native_bf16(torch.device(device)):
        # emulated bf16 is not a configuration anyone trains in (precision: auto picks fp32 here)
        print(f"bench: {device} has no native bf16; measuring fp32 only", flush=True)
        args.precisions = [x for x in args.precisions if x != "bf16"] or ["fp32"]
    args.eval_steps = args.eval_steps or 2 * args.steps
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    records, flops, gemms = measure_all(args, device)
    runs, ablations = best_passes(records, flops)
    gemms.append(measure_gemm(args, device, "end of run"))
    # the peak: the best of the GEMM measurements spread over the run (each the median of its reps)
    peak = {k: max((g[k] for g in gemms), key=lambda x: x["gflop_per_s_median"] or 0) for k in ("fp32", "bf16")}
    compare_with_peak_and_original(runs + ablations, peak, device, args)
    result = {
        "config": {"models": args.models, "dims": args.dims, "precisions": args.precisions, "batch": args.batch,
                   "context": args.context, "threads": args.threads, "device": device, "steps": args.steps,
                   "eval_steps": args.eval_steps, "warmup": args.warmup, "repeats": args.repeats,
                   "gemm_n": args.gemm_n, "model_params": "params.yaml's model section (the original sizes)",
                   "optimizer": "AdamW(lr 5e-4, wd 0.01), clip_grad_norm_ 1.0, loss mse (lvm.training, params of "
                                "the original)"},
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "threads": args.threads,
                    "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "loadavg_before": [round(x, 2) for x in load_before]},
        "gemm_peak": peak,
        "gemm_measurements": gemms,
        "original_fp32_seq_per_s": ORIGINAL_FP32_SEQ_PER_S,
        "runs": runs,
        "ablations": ablations,
    }
    if not args.no_loader:
        print("loader ...", flush=True)
        wait_for_idle(args.idle_wait)
        result["loader"] = loader_bench(args)
        result["loader_vs_fastest_train"], result["loader_over_train"] = loader_vs_training(result["loader"], runs)
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    result["notes"] = NOTES
    write_outputs(result, args)


def measure_gemm(args, device: str, when: str) -> dict:
    g = run_measured("gemm", {"threads": args.threads, "device": device, "n": args.gemm_n, "reps": 20}, args)
    g["when"] = when
    print(f"GEMM {args.gemm_n}^2 ({when}): fp32 {g['fp32']['gflop_per_s_median']:,.0f} GFLOP/s, "
          f"bf16 {fmt(g['bf16']['gflop_per_s_median'])} GFLOP/s", flush=True)
    return g


def measure_all(args, device: str):
    """--repeats passes over every configuration (ablations right after the configuration they are
    compared with): ({(model, dim, precision, ablation label): [result per pass]}, {(model, dim): (train
    FLOPs, eval FLOPs)} counted once, the GEMM measurements)."""
    records, flops, gemms = {}, {}, []
    for n_pass in range(args.repeats):
        gemms.append(measure_gemm(args, device, f"start of pass {n_pass + 1}"))
        for dim in args.dims:
            for model in args.models:
                for precision in args.precisions:
                    todo = [(None, {})]
                    if not args.no_ablation and device == "cpu" and dim == ORIGINAL_D:
                        todo += [(label, env) for label, env, models, precisions in ABLATIONS
                                 if model in models and precision in precisions]
                    for label, env in todo:
                        count = (model, dim) not in flops
                        spec = {"model": model, "dim": dim, "precision": precision, "threads": args.threads,
                                "device": device, "batch": args.batch, "context": args.context,
                                "steps": args.steps, "eval_steps": args.eval_steps, "warmup": args.warmup,
                                "count_flops": count, "targets": args.targets}
                        r = run_measured("model", spec, args, env)
                        if count:
                            flops[(model, dim)] = (r["train"]["flops_per_step"], r["eval"]["flops_per_batch"])
                        if label:
                            r["ablation"], r["env"] = label, env
                        show(r, f" [{label}]" if label else "")
                        records.setdefault((model, dim, precision, label), []).append(r)
    return records, flops, gemms


def show(r: dict, tag: str = "") -> None:
    tr, ev = r["train"], r["eval"]
    print(f"{r['model']:17s} D={r['dim']} {r['precision']}{tag}: train {tr['seq_per_s_median']:8.1f} seq/s, "
          f"eval {ev['seq_per_s_median']:8.0f} seq/s, "
          f"peak mem +{fmt(tr['peak_mem_delta_mib'])} MiB, foreign cpu {r.get('foreign_cpu_cores')}", flush=True)


def best_passes(records: dict, flops: dict) -> tuple[list, list]:
    """(runs, ablations): each configuration's fastest pass (train and eval chosen separately; every
    pass kept under "passes"): on a shared VM, interference only slows a run down."""
    runs, ablations = [], []
    for (model, dim, precision, label), passes in records.items():
        f_train, f_eval = flops[(model, dim)]
        for r in passes:
            r["train"]["flops_per_step"], r["eval"]["flops_per_batch"] = f_train, f_eval
            r["train"]["gflop_per_s"] = round(f_train / r["train"]["ms_per_step_median"] / 1e6, 2)
            r["eval"]["gflop_per_s"] = round(f_eval / r["eval"]["ms_per_batch_median"] / 1e6, 2)
        best = dict(max(passes, key=lambda r: r["train"]["seq_per_s_median"]))
        best["eval"] = max(passes, key=lambda r: r["eval"]["seq_per_s_median"])["eval"]
        best["passes"] = [{"train_seq_per_s": r["train"]["seq_per_s_median"], "eval_seq_per_s":
                           r["eval"]["seq_per_s_median"], "foreign_cpu_cores": r.get("foreign_cpu_cores"),
                           "attempt": r.get("attempt")} for r in passes]
        if label:
            default = records[(model, dim, precision, None)]
            ratios = [a["train"]["seq_per_s_median"] / d["train"]["seq_per_s_median"] for a, d in zip(passes, default)]
            best["vs_default_by_pass"] = [round(x, 3) for x in ratios]
            best["vs_default_median"] = round(statistics.median(ratios), 3)
            ablations.append(best)
        else:
            runs.append(best)
    return runs, ablations


def compare_with_peak_and_original(results: list, peak: dict, device: str, args) -> None:
    """Adds % of the GEMM peak, and the speedup over the original implementation where comparable."""
    for r in results:
        ref = peak[r["precision"]]["gflop_per_s_median"]
        for part in ("train", "eval"):
            r[part]["pct_of_peak"] = round(100 * r[part]["gflop_per_s"] / ref, 1) if ref else None
        orig = ORIGINAL_FP32_SEQ_PER_S.get(r["model"])
        if r["dim"] == ORIGINAL_D and device == "cpu" and args.batch == 32 and args.context == 100 and orig:
            r["original_fp32_seq_per_s"] = orig
            r["speedup_vs_original"] = round(r["train"]["seq_per_s_median"] / orig, 2)
            r["meets_2x_target"] = r["speedup_vs_original"] >= TARGET_SPEEDUP


def loader_vs_training(loader: dict, runs: list) -> tuple[dict, dict]:
    """(loader against the fastest training rate per D, loader over every run's training rate)."""
    from lvm.models import _REGISTRY

    def stage_loader_rate(ld, r):
        # the table training gathers from for this run (train.bf16_contexts, default true)
        bf16 = r["precision"] == "bf16" and _REGISTRY[r["model"]].BF16_CONTEXTS
        return ld["windows_per_s_bf16"] if bf16 else ld["windows_per_s"]

    vs_fastest, over_train = {}, {}
    for dim, ld in loader["by_dim"].items():
        at_dim = sorted((r for r in runs if str(r["dim"]) == dim), key=lambda r: -r["train"]["seq_per_s_median"])
        if not at_dim:
            continue
        best = at_dim[0]
        others = [r for r in at_dim if r["model"] != best["model"]]
        lrate, lrate16 = ld["windows_per_s"], ld["windows_per_s_bf16"]
        seq = best["train"]["seq_per_s_median"]
        vs_fastest[dim] = {
            "model": best["model"], "precision": best["precision"], "seq_per_s": seq,
            "loader_windows_per_s": lrate, "loader_over_train": round(lrate / seq, 2),
            "loader_bf16_windows_per_s": lrate16, "loader_bf16_over_train": round(lrate16 / seq, 2),
            "memcpy_windows_per_s": ld["memcpy_windows_per_s"],
            "fp32_gather_over_memcpy": round(lrate / ld["memcpy_windows_per_s"], 2),
            "meets_20x": lrate >= 20 * seq, "meets_20x_bf16_table": lrate16 >= 20 * seq,
            "stage_loader_min_ratio": round(min(stage_loader_rate(ld, r) / r["train"]["seq_per_s_median"]
                                                for r in at_dim), 1),
            "others_min_ratio": round(min((lrate / r["train"]["seq_per_s_median"] for r in others),
                                          default=float("nan")), 1)}
        for r in at_dim:
            over_train[f"{r['model']}/{r['dim']}/{r['precision']}"] = round(
                stage_loader_rate(ld, r) / r["train"]["seq_per_s_median"], 1)
    return vs_fastest, over_train


def write_outputs(result: dict, args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = Path(args.md) if args.md else out.with_suffix(".md")
    md.write_text(markdown(result))
    # docs/performance.md shows bench/results/throughput.md and throughput_cuda.md: `make docs`
    print(f"wrote {out} and {md} in {result['wall_seconds']:.0f} s; `make docs` shows them in the docs")


# what the JSON's fields mean and how they were measured (written into it as "notes")
NOTES = [
    "With --repeats N every configuration is measured in N passes spread over the run and reports its fastest "
    "pass (train and eval chosen separately; all passes under 'passes'): on a shared VM, interference only "
    "slows a run down. Ablation ratios (vs_default_*) pair each pass with the default run just before it.",
    "seq/s = batch / median wall time of one step; a training step is forward (autocast for bf16), MSE, "
    "zero_grad, backward, clip_grad_norm_, AdamW step and loss.item(), as in lvm.training minus the loader.",
    "FLOPs: torch.utils.flop_counter.FlopCounterMode over one step (matmul-class ops only: mm/addmm/bmm/"
    "baddbmm/SDPA; pointwise, softmax, norms and the optimizer are not counted). nn.LSTM runs through oneDNN's "
    "fused RNN op on CPU, which the counter does not see, so counting runs with oneDNN disabled (ATen's "
    "per-step cell: the same matmuls). The CPU flash-attention op is not in the counter's registry; it is "
    "counted with the registry's SDPA formulas (full L x L, causal masking not discounted). GRU layers "
    "(nn.GRU and lvm.models.fastrnn) decompose into counted addmm/mm; fastrnn's pre-packed oneDNN linear "
    "(torch.ops.mkldnn._linear_pointwise) is not counted either, so the counting pass uses torch.mm there. "
    "Cross-check: gru at D=768 counts 42.8 GFLOP per forward of 32 sequences = 2*B*L*(D*H + 4*(2*3H*H)) + head, "
    "the analytic value.",
    "% peak: counted FLOP/s over the dense-matmul peak of the run's precision: a square GEMM (--gemm-n) "
    "measured at the start of every pass and at the end of the run (gemm_measurements, each the median of 20 "
    "products); gemm_peak is the best of them. Under bf16 autocast some matmuls still run in fp32 "
    "(memory_gru's write/second read), so bf16 % peak is a slight underestimate.",
    "peak_mem_delta_mib (CPU): peak resident memory during the timed steps minus the process's RSS before the "
    "first step (VmHWM reset via /proc/self/clear_refs); it includes gradients, AdamW state (created at the "
    "first step), activations, and allocator/oneDNN caches. Eval peaks are measured before any training step.",
    "foreign_cpu_cores: CPU time used by OTHER processes while a configuration ran, in cores (from /proc/stat "
    "minus the child's own rusage); ~0 means the figure comes from an idle machine.",
    "original_fp32_seq_per_s / speedup_vs_original: docs/performance.md (the original implementation, D=768, "
    "fp32, batch 32, 2 threads, this machine); bf16 rows are compared with the same fp32 figure.",
    "ablations: one lever switched off through its environment variable (env), run right after the default "
    "configuration it is compared with: LVM_FAST_GRU=0 runs nn.GRU (the implementation before "
    "lvm.models.fastrnn; same parameters, same outputs to float32 rounding), LVM_PACKED_GEMM=0 makes fastrnn's "
    "recurrent GEMM a torch.mm, LVM_MALLOC_TUNE=0 leaves glibc's malloc thresholds alone.",
    "loader: bench/export_bench.py's loader_bench (shuffled WindowDataset.batch calls, in-memory vectors) on a "
    "synthetic stride-1 export per benchmarked D (table larger than the L3 cache), and on the real data/ctx100 "
    "train split when present; loader_vs_fastest_train compares it with the fastest training rate at the same D. "
    "windows_per_s_bf16: contexts gathered from a bfloat16 copy of the table (lvm.training does this for bf16 "
    "training of every model but hierarchical_gru: train.bf16_contexts); loader_over_train uses, per run, the "
    "table its training uses. memcpy_windows_per_s: a plain copy of one fp32 batch's bytes, the bandwidth ceiling.",
]


if __name__ == "__main__":
    main()
