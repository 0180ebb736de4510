"""One training loop for every model; checkpoints, resume, DVCLive curves, and batched prediction.

    python -m lvm.train --model lstm --experiment lstm     # any of the six models
    dvc repro train_baseline                              # the stages call the same run()
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lvm import LvmError
from lvm.cli import stage
from lvm.config import load_params
from lvm.data import WindowDataset
from lvm.io import atomic_path, write_json
from lvm.models import MODEL_NAMES, MODEL_PARAMS, count_parameters, create_model

DATA_DIR = "data/ctx100"
EXPERIMENTS = {"baseline": "gru", "hierarchical": "hierarchical_gru", "memory": "memory_gru"}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LvmError(f"params: train.device: {name!r} requested but CUDA is not available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LvmError("params: train.device: 'mps' requested but MPS is not available")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)
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


def compute_loss(pred: torch.Tensor, raw: torch.Tensor, target: torch.Tensor, kind: str,
                 tau: float = 0.07, weight: float = 0.05) -> torch.Tensor:
    """mse (raw output vs target, as the original) | cosine (1 - cos) | infonce (in-batch negatives)
    | mixtures `a+infonce` = a + weight * infonce."""
    raw, target = raw.float(), target.float()

    def term(name):
        if name == "mse":
            return F.mse_loss(raw, target)
        if name == "cosine":
            return (1 - F.cosine_similarity(raw, target, dim=-1)).mean()
        if name == "infonce":
            logits = pred.float() @ F.normalize(target, dim=-1).T / tau
            return F.cross_entropy(logits, torch.arange(len(target), device=target.device))
        raise LvmError(f"params: train.loss: unknown loss {name!r}")

    if "+" in kind:
        base, extra = kind.split("+")
        return term(base) + weight * term(extra)
    return term(kind)


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
def validate(model, dataset, cfg, device) -> dict:
    model.eval()
    total_loss, total_cos, n = 0.0, 0.0, 0
    for _, ctx, tgt in dataset.batches(max(cfg["batch_size"], 256)):
        ctx, tgt = ctx.to(device), tgt.to(device)
        with autocast(device, cfg["precision"]):
            pred, raw = model(ctx, return_raw=True)
        loss = compute_loss(pred, raw, tgt, cfg["loss"], cfg["infonce_tau"], cfg["infonce_weight"])
        total_loss += loss.item() * len(tgt)
        total_cos += F.cosine_similarity(pred.float(), tgt, dim=-1).sum().item()
        n += len(tgt)
    return {"loss": total_loss / n, "cosine": total_cos / n}


def save_checkpoint(path, model, epoch: int, metrics: dict, **extra) -> None:
    """A checkpoint loadable with torch.load(weights_only=True): tensors and plain values only."""
    state = {"model_name": model.config["name"], "model_config": dict(model.config),
             "state_dict": model.state_dict(), "epoch": epoch, "metrics": metrics, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path}: checkpoint not found; run `dvc repro` to train it")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(path, device="cpu"):
    """Rebuild a trained model from best.pt / final.pt (no pickle)."""
    ckpt = load_checkpoint(path)
    cfg = dict(ckpt["model_config"])
    model = create_model(cfg.pop("name"), **cfg)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def run(p: dict, model_name: str, experiment: str, data_dir: str = DATA_DIR,
        models_dir: str = "models", metrics_dir: str = "metrics", live_dir: str = "dvclive",
        progress: bool = True) -> dict:
    from dvclive import Live

    if model_name not in MODEL_NAMES:
        raise LvmError(f"--model: unknown model {model_name!r} (choose {', '.join(MODEL_NAMES)})")
    cfg = p["train"]
    set_threads(cfg["threads"])
    device = resolve_device(cfg["device"])
    set_seed(cfg["seed"])
    train_ds, val_ds = WindowDataset(Path(data_dir) / "train.npz"), WindowDataset(Path(data_dir) / "val.npz")
    if cfg["window_stride"]:
        # Overlapping windows inside train articles leak nothing (splits are by article) and give
        # every train chunk a turn as a target instead of one in (L - overlap).
        train_ds = train_ds.restrided(cfg["window_stride"])
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise LvmError(f"{data_dir}: train or val split has no windows; lower data.context_length")
    model = create_model(model_name, input_dim=train_ds.dim, context_length=train_ds.context_length,
                         **p["model"]).to(device)
    if cfg["precision"] == "bf16" and cfg["bf16_contexts"] and model.BF16_CONTEXTS:
        # autocast rounds the model's context inputs to bf16 anyway; a bf16 table halves the bytes gathered
        train_ds = train_ds.with_context_dtype(torch.bfloat16)
    n_params = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg["lr_factor"], patience=cfg["lr_patience"])
    out = Path(models_dir) / experiment
    last_path = out / "last.pt"
    history, start_epoch, best = [], 0, {"loss": float("inf"), "cosine": float("nan"), "epoch": -1}
    train_seconds, seen = 0.0, 0
    if cfg["resume"] and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        if ckpt["model_config"] != model.config:
            raise LvmError(f"{last_path}: model config differs from params; delete it or set train.resume false")
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        history, best = ckpt["history"], ckpt["best"]
        start_epoch, train_seconds, seen = ckpt["epoch"], ckpt["train_seconds"], ckpt["seen"]
        print(f"{experiment}: resuming {model_name} after epoch {start_epoch} from {last_path}")
    elif not cfg["resume"]:
        last_path.unlink(missing_ok=True)

    def save_last(epoch):
        save_checkpoint(last_path, model, epoch, history[-1] if history else {}, optimizer=opt.state_dict(),
                        scheduler=sched.state_dict(), rng=torch.get_rng_state(), history=history,
                        best=best, train_seconds=train_seconds, seen=seen)

    live = Live(str(Path(live_dir) / experiment), dvcyaml=False, save_dvc_exp=False,
                resume=bool(cfg["resume"] and start_epoch > 0), report=None)
    print(f"{experiment}: {model_name}, {n_params:,} params, {len(train_ds)} train / {len(val_ds)} val "
          f"windows, L={train_ds.context_length}, D={train_ds.dim}, {device}, {cfg['precision']}, "
          f"loss {cfg['loss']}")
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            model.train()
            t0, total, n = time.perf_counter(), 0.0, 0
            batches = train_ds.batches(cfg["batch_size"], shuffle=True, seed=cfg["seed"] * 1000 + epoch,
                                       limit=cfg["max_train_windows"])
            n_batches = -(-min(len(train_ds), cfg["max_train_windows"] or len(train_ds)) // cfg["batch_size"])
            bar = tqdm(batches, total=n_batches, desc=f"{experiment} epoch {epoch + 1}/{cfg['epochs']}",
                       leave=False, disable=not progress, mininterval=2.0)
            for _, ctx, tgt in bar:
                ctx, tgt = ctx.to(device), tgt.to(device)
                with autocast(device, cfg["precision"]):
                    pred, raw = model(ctx, return_raw=True)
                loss = compute_loss(pred, raw, tgt, cfg["loss"], cfg["infonce_tau"], cfg["infonce_weight"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                opt.step()
                total += loss.item() * len(tgt)
                n += len(tgt)
                bar.set_postfix(loss=f"{total / n:.4f}")
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            seen += n
            val = validate(model, val_ds, cfg, device)
            sched.step(val["loss"])
            lr = opt.param_groups[0]["lr"]
            row = {"epoch": epoch + 1, "train_loss": total / n, "val_loss": val["loss"],
                   "val_cosine": val["cosine"], "lr": lr, "seconds": epoch_seconds}
            history.append(row)
            for key in ("train_loss", "val_loss", "val_cosine", "lr"):
                live.log_metric(key.replace("_", "/", 1) if key != "lr" else "lr", row[key])
            live.next_step()
            improved = val["loss"] < best["loss"]
            if improved:
                best = {"loss": val["loss"], "cosine": val["cosine"], "epoch": epoch + 1}
                save_checkpoint(out / "best.pt", model, epoch + 1, row)
            print(f"{experiment} epoch {epoch + 1:3d}/{cfg['epochs']}: train {row['train_loss']:.5f}  "
                  f"val {val['loss']:.5f}  val cos {val['cosine']:.4f}  lr {lr:.1e}  "
                  f"{n / epoch_seconds:.0f} seq/s{'  *best' if improved else ''}")
            save_last(epoch + 1)
    except KeyboardInterrupt:
        print(f"\n{experiment}: interrupted; progress up to epoch {epoch} saved in {last_path} "
              "(rerun with train.resume: true to continue)")
        live.end()
        raise SystemExit(128 + signal.SIGINT)
    live.end()
    save_checkpoint(out / "final.pt", model, cfg["epochs"], history[-1] if history else {})
    metrics = {
        "model": model_name, "params": n_params, "epochs": len(history),
        "best_epoch": best["epoch"], "best_val_loss": round(best["loss"], 6),
        "best_val_cosine": round(best["cosine"], 6),
        "final_val_cosine": round(history[-1]["val_cosine"], 6) if history else None,
        "train_windows": len(train_ds), "val_windows": len(val_ds),
        "wall_seconds": round(train_seconds, 1),
        "train_seq_per_s": round(seen / train_seconds, 1) if train_seconds else None,
        "device": str(device), "precision": cfg["precision"],
    }
    write_json(Path(metrics_dir) / f"train_{experiment}.json", metrics)
    return metrics


@stage
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--experiment", help="output name under models/, metrics/, dvclive/ (default: model)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run(load_params(args.params), args.model, args.experiment or args.model, progress=not args.no_progress)


if __name__ == "__main__":
    main()
