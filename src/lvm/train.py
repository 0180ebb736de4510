"""One training loop for every model; checkpoints, resume, DVCLive curves, and batched prediction.

    python -m lvm.train --model lstm --experiment lstm     # any of the six models
    dvc repro train_baseline                              # the stages call the same run()

The same loop runs data-parallel (DistributedDataParallel) when started by torchrun, or when
train.nproc > 1 (it then relaunches itself through torchrun on this node):

    torchrun --nproc-per-node 4 -m lvm.train --model gru --experiment baseline
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from lvm import LvmError
# one checkpoint writer and reader for every consumer (re-exported: `from lvm.train import load_model`)
from lvm.checkpoints import (RESUME_FIX, check_identity, load_checkpoint, load_model,  # noqa: F401
                             load_weights, save_checkpoint)
from lvm.cli import stage
from lvm.config import load_params
from lvm.hardware import autocast, resolve_device, resolve_precision, usable_cpus  # noqa: F401 (re-exported)
from lvm.data import WindowDataset, check_same_export, should_mmap
from lvm.io import atomic_outputs, log_run, replace_dir, write_json
from lvm.models import MODEL_NAMES, MODEL_PARAMS, count_parameters, create_model
from lvm.models.base import fit_normalizer

DATA_DIR = "data/ctx100"
EXPERIMENTS = {"baseline": "gru", "hierarchical": "hierarchical_gru", "memory": "memory_gru"}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int, processes: int = 1) -> None:
    """`threads` intra-op threads (0 = the cores shared evenly by this node's `processes`)."""
    torch.set_num_threads(threads or max(1, usable_cpus() // max(processes, 1)))
    torch.set_flush_denormal(True)  # denormal floats (tiny gradients) run 10-100x slower on CPUs
    tune_malloc()


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc only; LVM_MALLOC_TUNE=0 skips it).

    glibc serves blocks above a (dynamic) threshold with fresh mmap()s and unmaps them on free, so
    every multi-MB activation of every step is page-faulted and zeroed by the kernel again: on this
    2-core machine that cost ~25% of a GRU layer's training step. With the mmap threshold at its
    32 MiB maximum and trimming off, those blocks are recycled from the heap instead. Peak RSS is
    unchanged; memory freed after the peak stays mapped to the process until it exits.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("LVM_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return _MALLOC_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        ok = False
    _MALLOC_TUNED = ok
    return ok


def near_duplicates(rows: torch.Tensor, articles: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """[N, N] bool: target j is within `radius` chunks of target i in the same article (j != i). Such a
    target is no negative for i: neighbouring chunks are near-paraphrases, and with overlapping
    windows or every-position training the very same row recurs in a batch."""
    near = (articles[:, None] == articles[None, :]) & ((rows[:, None] - rows[None, :]).abs() <= radius)
    return near.fill_diagonal_(False)


def compute_loss(pred: torch.Tensor, raw: torch.Tensor, target: torch.Tensor, kind: str,
                 tau: float = 0.07, weight: float = 0.05, rows=None, articles=None) -> torch.Tensor:
    """mse (raw output vs target, as the original) | cosine (1 - cos) | infonce (in-batch negatives,
    minus the target's near-duplicates when `rows`/`articles` [N] are given) | mixtures
    `a+infonce` = a + weight * infonce. Inputs are [N, D]."""
    raw, target = raw.float(), target.float()

    def term(name):
        if name == "mse":
            return F.mse_loss(raw, target)
        if name == "cosine":
            return (1 - F.cosine_similarity(raw, target, dim=-1)).mean()
        if name == "infonce":
            logits = pred.float() @ F.normalize(target, dim=-1).T / tau
            if rows is not None:
                logits = logits.masked_fill(near_duplicates(rows, articles).to(logits.device), float("-inf"))
            return F.cross_entropy(logits, torch.arange(len(target), device=target.device))
        raise LvmError(f"params: train.loss: unknown loss {name!r}")

    if "+" in kind:
        base, extra = kind.split("+")
        return term(base) + weight * term(extra)
    return term(kind)


def target_ids(dataset: WindowDataset, idx, all_targets: bool, min_context: int = 1):
    """(rows, articles) int64 tensors of the scored targets of windows `idx`, flattened like the loss
    inputs: [B] for the last position, [B * (L - min_context + 1)] for every position."""
    rows = dataset.target_rows(idx, all_targets)
    if all_targets:
        rows = rows[:, min_context - 1:]
    rows = rows.reshape(-1)
    return torch.from_numpy(rows), torch.from_numpy(np.asarray(dataset.article_indices[rows], dtype=np.int64))


def fit_anchor_decay(train: WindowDataset, batch_size: int = 256) -> float:
    """The exp_decay_mean baseline's decay, fitted exactly as the evaluate stage fits it (every train
    window at stride 1, same grid), so a fresh decay_mean-anchored model equals that baseline."""
    from lvm.baselines import ExpDecayMean

    baseline = ExpDecayMean()
    for _, ctx, tgt in train.restrided(1).batches(batch_size):
        baseline.partial_fit(ctx.numpy(), tgt.numpy())
    return float(baseline.finalize().decay)


@torch.no_grad()
def predict(model, dataset: WindowDataset, batch_size: int = 256, device=None,
            precision: str = "fp32") -> np.ndarray:
    """L2-normalised predictions [n_windows, D] for every window of `dataset`, in order."""
    device = device or next(model.parameters()).device
    model.eval()
    out = np.empty((len(dataset), dataset.dim), np.float32)
    for idx, ctx, _ in dataset.batches(batch_size):
        with autocast(device, precision):
            pred = model(ctx.to(device))
        out[idx] = pred.float().cpu().numpy()
    return out


@torch.no_grad()
def validate(model, dataset, cfg, device, rank: int = 0, world: int = 1) -> dict:
    """Mean val loss and cosine of the prediction after the whole context (what evaluate scores,
    whatever train.targets is). Under DDP each rank scores its share of every batch and the sums are
    all-reduced (then broadcast from rank 0), so every rank takes the same LR / best-checkpoint step."""
    model.eval()
    total_loss, total_cos, n = 0.0, 0.0, 0
    for idx, ctx, tgt in dataset.batches(max(cfg["batch_size"], 256) * world, rank=rank, world=world):
        if not len(tgt):
            continue
        ctx, tgt = ctx.to(device), tgt.to(device)
        with autocast(device, cfg["precision"]):
            pred, raw = model(ctx, return_raw=True)
        rows, articles = target_ids(dataset, idx, all_targets=False)
        loss = compute_loss(pred, raw, tgt, cfg["loss"], cfg["infonce_tau"], cfg["infonce_weight"], rows, articles)
        total_loss += loss.item() * len(tgt)
        total_cos += F.cosine_similarity(pred.float(), tgt, dim=-1).sum().item()
        n += len(tgt)
    if world > 1:
        total_loss, total_cos, n = all_sum(device, total_loss, total_cos, n)
    return {"loss": total_loss / n, "cosine": total_cos / n}


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the environment torchrun sets; (0, 0, 1) otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])


def all_sum(device, *values) -> list:
    """Sum plain numbers over all ranks (float64); every rank gets rank 0's copy of the result."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    dist.broadcast(t, 0)
    return t.tolist()


def init_distributed(device: torch.device, local_rank: int) -> torch.device:
    """Join torchrun's process group: nccl on CUDA (one GPU per local rank), gloo on CPU."""
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise LvmError(f"params: train.device: {device.type} does not support multi-process training; "
                       "use cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def run(p: dict, model_name: str, experiment: str, data_dir: str = DATA_DIR,
        models_dir: str = "models", metrics_dir: str = "metrics", live_dir: str = "dvclive",
        progress: bool = True) -> dict:
    if model_name not in MODEL_NAMES:
        raise LvmError(f"--model: unknown model {model_name!r} (choose {', '.join(MODEL_NAMES)})")
    cfg = p["train"]
    rank, local_rank, world = dist_env()
    if cfg["batch_size"] % world:
        raise LvmError(f"params: train.batch_size: {cfg['batch_size']} is not divisible by the "
                       f"{world} processes (the global batch is split evenly over them)")
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    set_threads(cfg["threads"], local_procs)
    device = resolve_device(cfg["device"])
    cfg = {**cfg, "precision": resolve_precision(cfg["precision"], device)}  # auto -> what this device runs
    if world > 1:
        device = init_distributed(device, local_rank)
    try:
        return _train(p, cfg, model_name, experiment, data_dir, models_dir, metrics_dir, live_dir,
                      progress, device, rank, world, local_procs)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(p, cfg, model_name, experiment, data_dir, models_dir, metrics_dir, live_dir, progress,
           device, rank, world, local_procs) -> dict:
    from dvclive import Live

    main = rank == 0  # only rank 0 logs, prints, writes checkpoints and metrics
    set_seed(cfg["seed"])
    train_ds, val_ds = (WindowDataset(path, mmap=should_mmap(path, cfg["mmap"], local_procs))
                        for path in (Path(data_dir) / "train.npz", Path(data_dir) / "val.npz"))
    if cfg["window_stride"]:
        # Overlapping windows inside train articles leak nothing (splits are by article) and give
        # every train chunk a turn as a target instead of one in (L - overlap).
        train_ds = train_ds.restrided(cfg["window_stride"])
    check_same_export([train_ds, val_ds])  # splits from one export, never a mixture of two
    # a seeded share of the train articles (data-scale curve); val and test stay whole
    train_ds = train_ds.subset_articles(cfg["article_fraction"], cfg["seed"])
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise LvmError(f"{data_dir}: train or val split has no windows; lower data.context_length")
    model = create_model(model_name, input_dim=train_ds.dim, context_length=train_ds.context_length,
                         normalize=cfg["normalize"], **p["model"])
    all_targets = cfg["targets"] == "all"
    if all_targets and not model.SEQUENCE:
        raise LvmError(f"params: train.targets: {model_name} predicts after the whole context only; "
                       "use train.targets: last for it")
    if cfg["normalize"] != "none":  # statistics of the train split only: val/test rows never seen
        model.set_normalizer(*fit_normalizer(train_ds.kept_rows(), cfg["normalize"]))
    if model.anchor == "decay_mean":
        model.set_anchor_decay(fit_anchor_decay(train_ds))
    model = model.to(device)
    # distinct train targets, and how many each window contributes to the loss
    unique_targets = len(train_ds.restrided(1))
    per_window = train_ds.context_length - cfg["min_context"] + 1 if all_targets else 1
    if cfg["precision"] == "bf16" and cfg["bf16_contexts"] and model.BF16_CONTEXTS:
        # autocast rounds the model's context inputs to bf16 anyway; a bf16 table halves the bytes gathered
        train_ds = train_ds.with_context_dtype(torch.bfloat16)
    n_params = count_parameters(model)
    if rank:  # same initial weights on every rank (seeded above); distinct dropout draws
        torch.manual_seed(cfg["seed"] + 1000003 * rank)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg["lr_factor"], patience=cfg["lr_patience"])
    out = Path(models_dir) / experiment
    last_path = out / "last.pt"
    history, start_epoch, best = [], 0, {"loss": float("inf"), "cosine": float("nan"), "epoch": -1}
    # best.pt is written at the end of the run, from this copy of the best epoch's weights (kept in
    # last.pt too, so a resumed run publishes the true best even if it never improves again)
    best_state, best_row = None, {}
    train_seconds, seen, stale = 0.0, 0, 0
    if cfg["resume"] and last_path.is_file():
        ckpt = resume_checkpoint(last_path, model, train_ds)
        try:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            if not rank:
                torch.set_rng_state(ckpt["rng"])
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as e:
            raise LvmError(f"{last_path}: optimizer/scheduler state does not fit this model "
                           f"({str(e).splitlines()[0][:100] if str(e) else type(e).__name__}); "
                           f"{RESUME_FIX}") from None
        history, best = ckpt["history"], ckpt["best"]
        best_state, best_row = ckpt["best_state"], ckpt["best_row"]
        stale = len(history) - best["epoch"] if best["epoch"] > 0 else 0
        start_epoch, train_seconds, seen = ckpt["epoch"], ckpt["train_seconds"], ckpt["seen"]
        if main:
            print(f"{experiment}: resuming {model_name} after epoch {start_epoch} from {last_path}")
    elif not cfg["resume"] and main:
        last_path.unlink(missing_ok=True)  # only now: every check above passed (a refused run keeps it)
    if world > 1:  # every rank must start from the same epoch (multi-node: models/ on shared storage)
        total, squares = all_sum(device, start_epoch, start_epoch ** 2)  # also a barrier before rank 0
        if squares * world != total * total:                              # may overwrite last.pt
            raise LvmError(f"{last_path}: train.resume found different checkpoints on different ranks; "
                           "every node must see the same models/ directory")
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = model
    saved_epoch = start_epoch  # the epoch last.pt holds (0: none of this run)

    # train.ema > 0: an exponential moving average of the weights is what gets validated and saved
    # (Polyak averaging: with ~8 optimiser steps per pass the last step's weights are noisy)
    ema = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)
        if cfg["ema"] > 0 else None)
    if ema is not None and start_epoch > 0 and "ema" in ckpt:  # resumed: the average goes on
        ema.load_state_dict(ckpt["ema"])
    scored = ema.module if ema is not None else model

    def save_last(epoch):
        nonlocal saved_epoch
        extra = {"ema": ema.state_dict()} if ema is not None else {}
        save_checkpoint(last_path, model, epoch, history[-1] if history else {}, optimizer=opt.state_dict(), **extra,
                        scheduler=sched.state_dict(), rng=torch.get_rng_state(), history=history,
                        best=best, best_state=best_state, best_row=best_row, train_seconds=train_seconds,
                        seen=seen)
        saved_epoch = epoch

    live = live_tmp = None
    if main:
        # DVCLive writes into a temp folder that replaces dvclive/<exp> only when the run succeeds:
        # a crash or Ctrl-C keeps the previous run's curves (which match its best.pt and metrics).
        # A resumed run replays the finished epochs from last.pt, so its curves cover the whole run.
        try:
            Path(live_dir).mkdir(parents=True, exist_ok=True)
            live_tmp = Path(tempfile.mkdtemp(prefix=f".{experiment}.", suffix=".tmp", dir=live_dir))
        except OSError as e:
            raise LvmError(f"{live_dir}: cannot create a folder there ({e.strerror or e})") from None
        live = Live(str(live_tmp), dvcyaml=False, save_dvc_exp=False, resume=False, report=None)
        for row in history:
            log_row(live, row)
    if main:
        print(f"{experiment}: {model_name}, {n_params:,} params, {len(train_ds)} train / {len(val_ds)} val "
              f"windows, L={train_ds.context_length}, D={train_ds.dim}, {device}, {cfg['precision']}, "
              f"loss {cfg['loss']}" + (f", {world} processes (DDP)" if world > 1 else "")
              + (", vectors memory-mapped" if train_ds.vectors is None else ""))
    # val cosine before any training: for an anchored model exactly its anchor baseline's, so the
    # history says when (and whether) training got past the baseline it starts from
    epoch, published = start_epoch, False
    restore = catch_termination()
    try:  # (inside: a failure here too must leave no temp curves behind)
        start_cos = (history[0]["start_val_cosine"] if history
                     else validate(scored, val_ds, cfg, device, rank, world)["cosine"])
        for epoch in range(start_epoch, cfg["epochs"]):
            ddp.train()
            t0, total, n = time.perf_counter(), 0.0, 0
            n_epoch = min(len(train_ds), cfg["max_train_windows"] or len(train_ds))
            # The same seeded windows and global batches for any number of processes (see batches()).
            batches = train_ds.batches(cfg["batch_size"], shuffle=True, seed=cfg["seed"] * 1000 + epoch,
                                       limit=cfg["max_train_windows"], rank=rank, world=world,
                                       all_targets=all_targets)
            bar = tqdm(batches, total=-(-n_epoch // cfg["batch_size"]), leave=False, mininterval=2.0,
                       desc=f"{experiment} epoch {epoch + 1}/{cfg['epochs']}", disable=not (progress and main and sys.stderr.isatty()))  # no \r frames in logs
            for k, (idx, ctx, tgt) in enumerate(bar):
                # This rank's share of the global batch: DDP averages gradients over ranks, so the
                # loss is weighted by share * world / global size to give the global batch's mean
                # (1 unless the last batch splits unevenly). An empty share runs one window at weight 0.
                size = min(cfg["batch_size"], n_epoch - k * cfg["batch_size"])
                weight = len(tgt) * world / size
                if not len(tgt):
                    idx = [0]
                    ctx, tgt = train_ds.batch(idx, all_targets)
                ctx, tgt = ctx.to(device), tgt.to(device)
                with autocast(device, cfg["precision"]):
                    pred, raw = ddp(ctx, return_raw=True, all_positions=all_targets)
                if all_targets:  # every position with >= min_context vectors of context is a target
                    keep = slice(cfg["min_context"] - 1, None)
                    pred, raw, tgt = (t[:, keep].reshape(-1, t.shape[-1]) for t in (pred, raw, tgt))
                rows, articles = target_ids(train_ds, idx, all_targets, cfg["min_context"])
                loss = compute_loss(pred, raw, tgt, cfg["loss"], cfg["infonce_tau"], cfg["infonce_weight"],
                                    rows, articles)
                if not torch.isfinite(loss):
                    raise LvmError(f"training {experiment}: loss is {loss.item()} at epoch {epoch + 1}, batch {k + 1}; "
                                   f"lower train.lr ({cfg['lr']}) or check the vectors for extreme values")
                opt.zero_grad(set_to_none=True)
                (loss * weight if weight != 1 else loss).backward()
                if cfg["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                if weight:
                    total += loss.item() * len(idx)
                    n += len(idx)
                bar.set_postfix(loss=f"{total / max(n, 1):.4f}")
            if world > 1:
                total, n = all_sum(device, total, n)
                n = int(n)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            seen += n
            val = validate(scored, val_ds, cfg, device, rank, world)
            sched.step(val["loss"])
            lr = opt.param_groups[0]["lr"]
            row = {"epoch": epoch + 1, "train_loss": total / n, "val_loss": val["loss"],
                   "val_cosine": val["cosine"], "lr": lr, "seconds": epoch_seconds,
                   "target_passes": seen * per_window / unique_targets, "start_val_cosine": start_cos}
            history.append(row)
            if not np.isfinite(val["loss"]):
                raise LvmError(f"training {experiment}: val loss is {val['loss']} after epoch {epoch + 1}; "
                               f"lower train.lr ({cfg['lr']}) or check the vectors for extreme values")
            improved = val["loss"] < best["loss"]
            stale = 0 if improved else stale + 1
            if improved:
                best = {"loss": val["loss"], "cosine": val["cosine"], "epoch": epoch + 1,
                        "target_passes": row["target_passes"]}
            if not main:
                continue
            if improved:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
                best_row = row
            log_row(live, row)
            print(f"{experiment} epoch {epoch + 1:3d}/{cfg['epochs']}: train {row['train_loss']:.5f}  "
                  f"val {val['loss']:.5f}  val cos {val['cosine']:.4f}  lr {lr:.1e}  "
                  f"{n / epoch_seconds:.0f} seq/s  {row['target_passes']:.1f} passes{'  *best' if improved else ''}")
            save_last(epoch + 1)
            if cfg["patience"] and stale >= cfg["patience"]:
                print(f"{experiment}: no val gain for {stale} epochs (train.patience); stopping after epoch {epoch + 1}")
                break
        metrics = {
            "model": model_name, "params": n_params, "epochs": len(history),
            "best_epoch": best["epoch"], "best_val_loss": round(best["loss"], 6),
            "best_val_cosine": round(best["cosine"], 6),
            "final_val_cosine": round(history[-1]["val_cosine"], 6) if history else None,
            "train_windows": len(train_ds), "val_windows": len(val_ds),
            "targets": cfg["targets"], "unique_train_targets": unique_targets,
            "train_targets_seen": seen * per_window,
            "target_passes": round(seen * per_window / unique_targets, 3),
            "best_target_passes": round(best.get("target_passes", 0.0), 3),
            "anchor": model.anchor, "anchor_decay": round(float(model.anchor_decay), 6),
            "normalize": cfg["normalize"], "article_fraction": cfg["article_fraction"],
            "train_articles": int(np.unique(train_ds.article_indices[train_ds.starts]).size),
            "start_val_cosine": round(start_cos, 6),
            # the first epoch whose val cosine exceeded its value before training (null: never)
            "epochs_to_beat_start": next((r["epoch"] for r in history if r["val_cosine"] > start_cos), None),
            "device": str(device), "precision": cfg["precision"], "processes": world,
        }
        # timings change on every run, so they stay out of the metrics file (and the checkpoints): printed,
        # logged to logs/train_<exp>.jsonl, and returned with the metrics under "timings"
        timings = {
            # train seconds until val cosine first exceeded its value before training (null: never)
            "seconds_to_beat_start": next((round(sum(r["seconds"] for r in history[:i + 1]), 1)
                                           for i, r in enumerate(history) if r["val_cosine"] > start_cos), None),
            "train_seconds": round(train_seconds, 1),
            "train_seq_per_s": round(seen / train_seconds, 1) if train_seconds else None,
            "epoch_seconds": [round(r["seconds"], 2) for r in history],
        }
        if main:
            live.end()
            with no_signals():  # a Ctrl-C now would leave half the renames done
                # best.pt, final.pt and the metrics of this run replace the old ones together, then the curves
                with atomic_outputs():
                    save_checkpoint(out / "best.pt", model, best["epoch"], untimed(best_row),
                                    state_dict=best_state if best_state is not None else model.state_dict())
                    save_checkpoint(out / "final.pt", scored, len(history), untimed(history[-1] if history else {}))
                    write_json(Path(metrics_dir) / f"train_{experiment}.json", metrics)
                replace_dir(live_tmp, Path(live_dir) / experiment)
                published = True
            log_run(f"train_{experiment}", {"model": model_name, "epochs": len(history), **timings,
                                            "device": str(device), "processes": world})
        return {**metrics, "timings": timings}
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (catch_termination)
        signum = getattr(e, "signum", signal.SIGINT)
        if main and published:  # the signal was held until the outputs were all in place
            print(f"\n{experiment}: interrupted ({signal.Signals(signum).name}) after the run finished; "
                  "its outputs are complete", flush=True)
        elif main:
            kept = (f"epochs up to {saved_epoch} are saved in {last_path} (rerun with train.resume: true to "
                    "continue; the unfinished epoch is redone)" if saved_epoch else "no epoch finished, nothing saved")
            print(f"\n{experiment}: interrupted ({signal.Signals(signum).name}) in epoch {epoch + 1}; {kept}. "
                  f"best.pt, final.pt, metrics and dvclive curves are still the previous complete run's", flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        restore()
        if live_tmp is not None and live_tmp.exists():  # a failed run's curves: the old ones stay
            shutil.rmtree(live_tmp, ignore_errors=True)


def untimed(row: dict) -> dict:
    """An epoch's history row without its wall time: what best.pt and final.pt keep (their bytes must
    not change when a rerun with the same inputs and params trains the same weights)."""
    return {k: v for k, v in row.items() if k != "seconds"}


def log_row(live, row: dict) -> None:
    for key in ("train_loss", "val_loss", "val_cosine", "lr"):
        live.log_metric(key.replace("_", "/", 1) if key != "lr" else "lr", row[key])
    live.next_step()


def resume_checkpoint(path: Path, model, train_ds) -> dict:
    """last.pt checked like every checkpoint (same model, D and L as the data), resumable, with the
    config of params; its weights loaded into `model`."""
    ckpt = load_checkpoint(path, resume=True)
    cfg = ckpt["model_config"]
    check_identity(path, cfg, model.config["name"], data=train_ds, fix=RESUME_FIX)
    missing, extra = sorted(set(model.config) - set(cfg)), sorted(set(cfg) - set(model.config))
    if missing or extra:
        raise LvmError(f"{path}: written by another lvm version (model config "
                       + "; ".join(x for x in (missing and f"lacks {', '.join(missing)}",
                                                extra and f"has unknown {', '.join(extra)}") if x)
                       + f"), so it cannot be resumed; {RESUME_FIX}")
    diff = [f"{k} {cfg[k]!r} -> {v!r}" for k, v in model.config.items() if cfg[k] != v]
    if diff:
        raise LvmError(f"{path}: model config differs from params ({', '.join(diff)}); {RESUME_FIX}")
    if ckpt["best_state"] is not None:  # the weights best.pt will get: checked before any training
        load_weights(model, ckpt["best_state"], f"{path} (best_state)", check_only=True, fix=RESUME_FIX)
    load_weights(model, ckpt["state_dict"], path, fix=RESUME_FIX)
    return ckpt


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, torchrun stopping its workers) handled like Ctrl-C."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def catch_termination():
    """SIGTERM raises like SIGINT does, so an interrupted run cleans up the same way (temp outputs
    removed, previous outputs kept, last.pt of the last finished epoch). Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def no_signals():
    """Hold SIGINT/SIGTERM until the block is done (delivered right after it)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@stage
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--experiment", help="output name under models/, metrics/, dvclive/ (default: model)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    p = load_params(args.params)
    nproc = p["train"]["nproc"]
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: relaunch through it
        for split in ("train", "val"):  # bad input fails here with one error line, before any launch
            WindowDataset(Path(DATA_DIR) / f"{split}.npz", mmap=True)
        sys.exit(launch(nproc, p["train"]["threads"], sys.argv[1:] if argv is None else argv))
    run(p, args.model, args.experiment or args.model, progress=not args.no_progress)


def launch(nproc: int, threads: int, argv: list[str]) -> int:
    """Run `python -m lvm.train ARGV` as `nproc` DDP processes on this node (torchrun --standalone)."""
    env = dict(os.environ)
    # torchrun would set 1 thread per process (with a warning); share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(threads or max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lvm.train", *argv]
    print(f"train.nproc={nproc}: {' '.join(cmd[2:])}", flush=True)
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    main()
