"""One training loop for every model: resume, validation, early stopping, DVCLive curves, and the
outputs (best.pt, final.pt, metrics/train_<experiment>.json, dvclive/<experiment>) published together.

    metrics = run(params, "gru", "baseline", "data/ctx100", "models", "metrics", "dvclive")  # the train stage

Runs data-parallel (DistributedDataParallel) when started by torchrun: every rank trains on its
share of the same global batches and rank 0 writes the outputs.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from lvm import LvmError
from lvm.checkpoints import RESUME_FIX, resume_checkpoint, save_checkpoint, untimed
from lvm.data import WindowDataset, check_same_export, should_mmap
from lvm.distributed import all_sum, dist_env, init_distributed
from lvm.hardware import autocast, resolve_device, resolve_precision
from lvm.io import atomic_outputs, log_run, no_signals, remove_stale_temps, replace_dir, write_json
from lvm.losses import compute_loss, target_ids
from lvm.models import MODEL_NAMES, count_parameters, create_model
from lvm.models.base import fit_normalizer
from lvm.runtime import Clock, set_seed, set_threads


def run(p: dict, model_name: str, experiment: str, data_dir: str, models_dir: str, metrics_dir: str,
        live_dir: str, progress: bool = True) -> dict:
    """Train `model_name` with validated params `p`: models_dir/<experiment>/{best,final,last}.pt,
    metrics_dir/train_<experiment>.json and the curves in live_dir/<experiment>. Returns the run's
    metrics (with its wall-clock "timings", which stay out of every file DVC tracks)."""
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
        return _train(TrainJob(params=p, train=cfg, model_name=model_name, experiment=experiment,
                               data_dir=data_dir, models_dir=models_dir, metrics_dir=metrics_dir,
                               live_dir=live_dir, show_progress=progress, device=device, rank=rank, world=world,
                               local_procs=local_procs))
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class TrainJob:
    """One training run: what it trains, with which params, where its files go, and where it runs."""
    params: dict  # the experiment's validated params (its model section builds the model)
    train: dict  # params["train"], train.precision resolved for the device
    model_name: str
    experiment: str
    data_dir: str  # train.npz, val.npz
    models_dir: str  # checkpoints in <models_dir>/<experiment>/
    metrics_dir: str
    live_dir: str
    show_progress: bool  # a progress bar, when stderr is a terminal
    device: torch.device
    rank: int = 0  # under torchrun: this process's rank among `world`
    world: int = 1
    local_procs: int = 1  # processes on this node (they share its cores and its RAM)

    @property
    def main(self) -> bool:
        """Only rank 0 logs, prints, writes checkpoints and metrics."""
        return self.rank == 0

    @property
    def out_dir(self) -> Path:
        return Path(self.models_dir) / self.experiment

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"


@dataclass
class Progress:
    """What the run has done so far: kept in last.pt after every epoch, where a resumed run picks it up."""
    epoch: int = 0  # epochs finished
    history: list = field(default_factory=list)  # one row per epoch
    best: dict = field(default_factory=lambda: {"loss": float("inf"), "cosine": float("nan"), "epoch": -1})
    # best.pt is written at the end of the run from this copy of the best epoch's weights (kept in
    # last.pt too, so a resumed run publishes the true best even if it never improves again)
    best_state: dict | None = None
    best_row: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    seen: int = 0  # train windows seen
    stale: int = 0  # epochs since the best one


def _train(job: TrainJob) -> dict:
    """The run, in the order it happens: data, model, optimiser, resume, DDP, EMA, curves; then per
    epoch train, validate, keep the best, save last.pt; then publish best.pt, final.pt, the metrics and
    the curves together. Ctrl-C or SIGTERM at any point leaves the previous run's outputs in place."""
    cfg, experiment = job.train, job.experiment
    clock = Clock()
    clock.start("setup")
    set_seed(cfg["seed"])
    train_ds, val_ds = load_splits(job.data_dir, cfg, job.local_procs)
    model = new_model(job.model_name, job.params["model"], cfg, train_ds).to(job.device)
    unique_targets, per_window = count_targets(train_ds, cfg)
    train_ds = with_bf16_contexts(train_ds, model, cfg)
    val_ds, val_context = val_windows(val_ds, model, cfg)
    n_params = count_parameters(model)
    seed_dropout(cfg["seed"], job.rank)
    opt = make_optimizer(model, cfg, job.device)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg["lr_factor"], patience=cfg["lr_patience"])
    state, ckpt = resume_or_start(cfg, job.last_path, model, train_ds, opt, sched, job.rank)
    if state.epoch and job.main:
        print(f"{experiment}: resuming {job.model_name} after epoch {state.epoch} from {job.last_path}")
    ddp = wrap_ddp(model, job.device, job.world, state.epoch, job.last_path)
    ema = make_ema(model, cfg["ema"], ckpt)
    scored = ema.module if ema is not None else model  # what is validated and saved
    live, live_tmp = start_curves(job.live_dir, experiment, state.history) if job.main else (None, None)
    if job.main:
        print_start(job, n_params, train_ds, val_ds)
    epoch, saved_epoch, published = state.epoch, state.epoch, False  # saved_epoch: what last.pt holds
    restore = catch_termination()
    try:  # (inside: a failure here too must leave no temp curves behind)
        # val cosine before any training: for an anchored model exactly its anchor baseline's, so the
        # history says when (and whether) training got past the baseline it starts from
        with clock("validate"):
            start_cos = (state.history[0]["start_val_cosine"] if state.history
                         else validate(scored, val_ds, cfg, job.device, job.rank, job.world, val_context)["cosine"])
        clock.stop("setup")
        for epoch in range(state.epoch, cfg["epochs"]):
            bar = job.show_progress and job.main and sys.stderr.isatty()  # no \r frames in logs
            total, n, seconds = train_epoch(model, ddp, opt, ema, train_ds, cfg, epoch, job.device, job.rank,
                                            job.world, experiment, bar)
            state.train_seconds += seconds
            clock.add("train_steps", seconds)
            state.seen += n
            with clock("validate"):
                val = validate(scored, val_ds, cfg, job.device, job.rank, job.world, val_context)
            sched.step(val["loss"])
            row = {"epoch": epoch + 1, "train_loss": total / n, "val_loss": val["loss"],
                   "val_cosine": val["cosine"], "lr": opt.param_groups[0]["lr"], "seconds": seconds,
                   "target_passes": state.seen * per_window / unique_targets, "start_val_cosine": start_cos}
            state.history.append(row)
            if not np.isfinite(val["loss"]):
                raise LvmError(f"training {experiment}: val loss is {val['loss']} after epoch {epoch + 1}; "
                               f"lower train.lr ({cfg['lr']}) or check the vectors for extreme values")
            improved = track_best(state, row)
            state.epoch = epoch + 1
            if job.main:
                if improved:
                    with clock("checkpoint"):
                        keep_best_weights(state, scored, row)
                with clock("curves"):
                    log_row(live, row)
                print_epoch(job, row, n / seconds, improved)
                # signals held during the write: a Ctrl-C between mkstemp and atomic_path's cleanup stranded
                # a models/<exp>/.last.pt.*.tmp once; held, it lands right after, with last.pt whole
                with no_signals(), clock("checkpoint"):
                    save_last(job.last_path, model, opt, sched, ema, state)
                    saved_epoch = state.epoch
            # every rank stops together (the val figures are all-reduced, so they agree): a rank that went
            # on alone waited in the next epoch's all-reduce for a rank 0 that had finished
            if cfg["patience"] and state.stale >= cfg["patience"]:
                if job.main:
                    print(f"{experiment}: no val gain for {state.stale} epochs (train.patience); "
                          f"stopping after epoch {epoch + 1}")
                break
        clock.start("publish")
        metrics = run_metrics(job.model_name, n_params, model, train_ds, val_ds, cfg, state, unique_targets,
                              per_window, start_cos, job.device, job.world)
        metrics["val_min_context"] = val_context  # what validation scored (0: after the whole context)
        if job.main:
            finish_curves(live, live_tmp)
            with no_signals():  # a Ctrl-C now would leave half the renames done
                publish(job, live_tmp, model, scored, state, metrics)
                published = True
        clock.stop("publish")
        timings = {**run_timings(state, start_cos), **clock.summary()}
        if job.main:
            log_run(f"train_{experiment}", {"model": job.model_name, "epochs": len(state.history), **timings,
                                            "device": str(job.device), "processes": job.world})
        return {**metrics, "timings": timings}
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (catch_termination)
        signum = getattr(e, "signum", signal.SIGINT)
        if job.main:
            print(f"\n{experiment}: interrupted ({signal.Signals(signum).name}) "
                  + interrupted_note(published, epoch, saved_epoch, job.last_path), flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        restore()
        if live_tmp is not None and live_tmp.exists():  # a failed run's curves: the old ones stay
            shutil.rmtree(live_tmp, ignore_errors=True)


# --- the steps of a run, in order ------------------------------------------------------------------

def load_splits(data_dir, cfg: dict, local_procs: int) -> tuple[WindowDataset, WindowDataset]:
    """The train and val splits as this run trains on them."""
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
    return train_ds, val_ds


def new_model(model_name: str, model_params: dict, cfg: dict, train_ds: WindowDataset):
    """A fresh model for the data's D and L, its normaliser and anchor fitted on the train split."""
    model = create_model(model_name, input_dim=train_ds.dim, context_length=train_ds.context_length,
                         normalize=cfg["normalize"], **model_params)
    if cfg["targets"] == "all" and not model.SEQUENCE:
        raise LvmError(f"params: train.targets: {model_name} predicts after the whole context only; "
                       "use train.targets: last for it")
    if cfg["normalize"] != "none":  # statistics of the train split only: val/test rows never seen
        model.set_normalizer(*fit_normalizer(train_ds.kept_rows(), cfg["normalize"]))
    if model.anchor == "decay_mean":
        model.set_anchor_decay(fit_anchor_decay(train_ds))
    return model


def fit_anchor_decay(train: WindowDataset, batch_size: int = 256) -> float:
    """The exp_decay_mean baseline's decay, fitted exactly as the evaluate stage fits it (every train
    window at stride 1, same grid), so a fresh decay_mean-anchored model equals that baseline."""
    from lvm.baselines import ExpDecayMean

    baseline = ExpDecayMean()
    for _, ctx, tgt in train.restrided(1).batches(batch_size):
        baseline.partial_fit(ctx.numpy(), tgt.numpy())
    return float(baseline.finalize().decay)


def count_targets(train_ds: WindowDataset, cfg: dict) -> tuple[int, int]:
    """(distinct train targets, targets each window contributes to the loss): what the passes over the
    train targets are counted in."""
    per_window = train_ds.context_length - cfg["min_context"] + 1 if cfg["targets"] == "all" else 1
    return len(train_ds.restrided(1)), per_window


def with_bf16_contexts(train_ds: WindowDataset, model, cfg: dict) -> WindowDataset:
    """Under bf16 autocast (train.bf16_contexts) the model rounds its context inputs to bf16 anyway: a
    bf16 table of the vectors halves the bytes gathered per batch."""
    if cfg["precision"] == "bf16" and cfg["bf16_contexts"] and model.BF16_CONTEXTS:
        return train_ds.with_context_dtype(torch.bfloat16)
    return train_ds


def seed_dropout(seed: int, rank: int) -> None:
    """Every rank built the same initial weights (seeded alike); from here each draws its own dropout."""
    if rank:
        torch.manual_seed(seed + 1000003 * rank)


def resume_or_start(cfg: dict, last_path: Path, model, train_ds, opt, sched, rank: int) -> tuple[Progress, dict]:
    """With train.resume and a last.pt: its progress, weights, optimiser, scheduler and RNG state (and
    the checkpoint, for the EMA). Otherwise a fresh start, and the old last.pt is deleted (only now:
    every check before passed, so a refused run keeps it)."""
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
        state = Progress(epoch=ckpt["epoch"], history=history, best=best, best_state=ckpt["best_state"],
                         best_row=ckpt["best_row"], train_seconds=ckpt["train_seconds"], seen=ckpt["seen"],
                         stale=len(history) - best["epoch"] if best["epoch"] > 0 else 0)
        return state, ckpt
    if not cfg["resume"] and not rank:
        last_path.unlink(missing_ok=True)
    return Progress(), {}


def wrap_ddp(model, device, world: int, start_epoch: int, last_path: Path):
    """The module that runs the batches: under torchrun the DDP wrapper (it all-reduces the gradients)."""
    if world == 1:
        return model
    # every rank must start from the same epoch (multi-node: models/ on shared storage)
    total, squares = all_sum(device, start_epoch, start_epoch ** 2)  # also a barrier before rank 0
    if squares * world != total * total:                              # may overwrite last.pt
        raise LvmError(f"{last_path}: train.resume found different checkpoints on different ranks; "
                       "every node must see the same models/ directory")
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def make_ema(model, decay: float, ckpt: dict):
    """train.ema > 0: an exponential moving average of the weights is what gets validated and saved
    (Polyak averaging: with ~8 optimiser steps per pass the last step's weights are noisy). A resumed
    run's average goes on from last.pt."""
    if decay <= 0:
        return None
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)
    if ckpt.get("epoch", 0) > 0 and "ema" in ckpt:
        ema.load_state_dict(ckpt["ema"])
    return ema


def start_curves(live_dir, experiment: str, history: list):
    """(DVCLive logger, its temp folder). DVCLive writes into a temp folder that replaces
    dvclive/<exp> only when the run succeeds: a crash or Ctrl-C keeps the previous run's curves (which
    match its best.pt and metrics). A resumed run replays the finished epochs from last.pt, so its
    curves cover the whole run."""
    from dvclive import Live  # imported only here: slow to import, and only rank 0 logs

    try:
        Path(live_dir).mkdir(parents=True, exist_ok=True)
        remove_stale_temps(Path(live_dir) / experiment)  # a SIGKILLed run's temp folder
        live_tmp = Path(tempfile.mkdtemp(prefix=f".{experiment}.", suffix=".tmp", dir=live_dir))
    except OSError as e:
        raise LvmError(f"{live_dir}: cannot create a folder there ({e.strerror or e})") from None
    live = Live(str(live_tmp), dvcyaml=False, save_dvc_exp=False, resume=False, report=None)
    for row in history:
        log_row(live, row)
    return live, live_tmp


def print_start(job: TrainJob, n_params: int, train_ds: WindowDataset, val_ds: WindowDataset) -> None:
    cfg = job.train
    print(f"{job.experiment}: {job.model_name}, {n_params:,} params, {len(train_ds)} train / {len(val_ds)} val "
          f"windows, L={train_ds.context_length}, D={train_ds.dim}, {job.device}, {cfg['precision']}, "
          f"loss {cfg['loss']}" + (f", {job.world} processes (DDP)" if job.world > 1 else "")
          + (", vectors memory-mapped" if train_ds.vectors is None else ""))


class NonFiniteLoss(ArithmeticError):
    """A training step's loss is NaN or Inf (raised before its backward pass)."""


def train_step(model, ctx: torch.Tensor, tgt: torch.Tensor, optimizer, cfg: dict, all_targets: bool = False,
               rows=None, articles=None, weight: float = 1.0, forward=None) -> torch.Tensor:
    """One optimiser step on a batch already on the device: forward under train.precision's autocast,
    the loss (train.loss; every position with >= train.min_context vectors of context is a target
    when `all_targets`), backward of loss * `weight`, gradient clipping (train.grad_clip), AdamW step.
    `forward` runs the batch instead of `model` (its DDP wrapper). Returns the unweighted loss."""
    with autocast(ctx.device, cfg["precision"]):
        pred, raw = (forward or model)(ctx, return_raw=True, all_positions=all_targets)
    if all_targets:
        keep = slice(cfg["min_context"] - 1, None)
        pred, raw, tgt = (t[:, keep].reshape(-1, t.shape[-1]) for t in (pred, raw, tgt))
    loss = compute_loss(pred, raw, tgt, cfg["loss"], cfg["infonce_tau"], cfg["infonce_weight"], rows, articles)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(loss.item())
    optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1 else loss).backward()
    if cfg["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    optimizer.step()
    return loss


def make_optimizer(model, cfg: dict, device) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for every parameter instead of several per tensor:
    the recurrent models are launch-bound there). CPU keeps the default (foreach) implementation."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                             **({"fused": True} if fused else {}))


def one_ahead(batches, device):
    """Yield (idx, ctx, tgt) with ctx and tgt on `device`, sending batch k+1 before batch k is handed
    out: on CUDA the copy is from pinned memory and non-blocking, so it overlaps batch k's step.
    On CPU `.to` is a no-op and the order of gathering is the only difference."""
    cuda = torch.device(device).type == "cuda"

    def send(batch):
        idx, ctx, tgt = batch
        if cuda:
            return idx, ctx.pin_memory().to(device, non_blocking=True), tgt.pin_memory().to(device, non_blocking=True)
        return idx, ctx.to(device), tgt.to(device)

    ahead = None
    for batch in batches:
        batch = send(batch)
        if ahead is not None:
            yield ahead
        ahead = batch
    if ahead is not None:
        yield ahead


def train_epoch(model, ddp, opt, ema, train_ds: WindowDataset, cfg: dict, epoch: int, device, rank: int,
                world: int, experiment: str, bar: bool) -> tuple[float, int, float]:
    """One epoch of training steps: (summed loss, windows, seconds), the sums over all ranks."""
    ddp.train()
    t0, total, n = time.perf_counter(), 0.0, 0
    all_targets = cfg["targets"] == "all"
    n_epoch = min(len(train_ds), cfg["max_train_windows"] or len(train_ds))
    # The same seeded windows and global batches for any number of processes (see batches()).
    batches = train_ds.batches(cfg["batch_size"], shuffle=True, seed=cfg["seed"] * 1000 + epoch,
                               limit=cfg["max_train_windows"], rank=rank, world=world, all_targets=all_targets)
    batches = tqdm(batches, total=-(-n_epoch // cfg["batch_size"]), leave=False, mininterval=2.0,
                   desc=f"{experiment} epoch {epoch + 1}/{cfg['epochs']}", disable=not bar)
    for k, (idx, ctx, tgt) in enumerate(one_ahead(batches, device)):
        # This rank's share of the global batch: DDP averages gradients over ranks, so the loss is
        # weighted by share * world / global size to give the global batch's mean (1 unless the
        # last batch splits unevenly). An empty share runs one window at weight 0.
        size = min(cfg["batch_size"], n_epoch - k * cfg["batch_size"])
        weight = len(tgt) * world / size
        if not len(tgt):
            idx = [0]
            ctx, tgt = (t.to(device) for t in train_ds.batch(idx, all_targets))
        rows, articles = target_ids(train_ds, idx, all_targets, cfg["min_context"])
        try:
            loss = train_step(model, ctx, tgt, opt, cfg, all_targets, rows, articles,
                              weight, forward=ddp)
        except NonFiniteLoss as e:
            raise LvmError(f"training {experiment}: loss is {e.args[0]} at epoch {epoch + 1}, batch {k + 1}; "
                           f"lower train.lr ({cfg['lr']}) or check the vectors for extreme values") from None
        if ema is not None:
            ema.update_parameters(model)
        if weight:
            total += loss.item() * len(idx)
            n += len(idx)
        batches.set_postfix(loss=f"{total / max(n, 1):.4f}")
    if world > 1:
        total, n = all_sum(device, total, n)
        n = int(n)
    return total, n, time.perf_counter() - t0


def val_windows(val_ds: WindowDataset, model, cfg: dict) -> tuple[WindowDataset, int]:
    """(the val windows validation scores, min_context). With train.val_min_context_share > 0 and a
    model that predicts at every position: m = ceil(share x L), windows at stride L - m + 1, each
    scored at its positions with >= m vectors of context, so every val target past the first m of an
    article is scored once, one forward per L - m + 1 targets. The exported val windows (stride
    export.val_stride) score one target each from a fresh forward of L steps: at stride 5 and L = 100,
    ~5x fewer targets for ~10x the forwards (docs/models.md, "Validation"). Share 0, a model that
    predicts after the whole context only, or an export with export.min_target_position (targets before
    it must not be scored): the exported windows, min_context 0."""
    share, L = cfg["val_min_context_share"], val_ds.context_length
    if not share or not model.SEQUENCE or val_ds.first_target != L:
        return val_ds, 0
    m = max(1, math.ceil(share * L - 1e-9))
    restrided = val_ds.restrided(L - m + 1)
    if len(restrided) == 0:
        raise LvmError(f"params: train.val_min_context_share: {share} leaves no val window (every val article is "
                       f"shorter than {L + 1} vectors); set 0")
    return restrided, m


@torch.no_grad()
def validate(model, dataset, cfg, device, rank: int = 0, world: int = 1, min_context: int = 0) -> dict:
    """Mean val loss and cosine. min_context = 0: of the prediction after the whole context (what
    evaluate scores, whatever train.targets is). min_context = m > 0 (val_windows): of the predictions at
    every position with >= m vectors of context, in batches of train.batch_size windows (as many targets
    per batch as training has, which an in-batch ranking loss depends on). Under DDP each rank scores
    its share of every batch and the sums are all-reduced (then broadcast from rank 0), so every rank
    takes the same LR / best-checkpoint step."""
    model.eval()
    total_loss, total_cos, n = 0.0, 0.0, 0
    all_targets = min_context > 0
    batch_size = cfg["batch_size"] if all_targets else max(cfg["batch_size"], 256)
    for idx, ctx, tgt in dataset.batches(batch_size * world, rank=rank, world=world, all_targets=all_targets):
        if not len(tgt):
            continue
        ctx, tgt = ctx.to(device), tgt.to(device)
        with autocast(device, cfg["precision"]):
            pred, raw = model(ctx, return_raw=True, all_positions=all_targets)
        if all_targets:
            keep = slice(min_context - 1, None)
            pred, raw, tgt = (t[:, keep].reshape(-1, t.shape[-1]) for t in (pred, raw, tgt))
        rows, articles = target_ids(dataset, idx, all_targets, max(min_context, 1))
        loss = compute_loss(pred, raw, tgt, cfg["loss"], cfg["infonce_tau"], cfg["infonce_weight"], rows, articles)
        total_loss += loss.item() * len(tgt)
        total_cos += F.cosine_similarity(pred.float(), tgt, dim=-1).sum().item()
        n += len(tgt)
    if world > 1:
        total_loss, total_cos, n = all_sum(device, total_loss, total_cos, n)
    return {"loss": total_loss / n, "cosine": total_cos / n}


def track_best(state: Progress, row: dict) -> bool:
    """Whether this epoch's val loss is the run's lowest (then it becomes state.best)."""
    improved = row["val_loss"] < state.best["loss"]
    state.stale = 0 if improved else state.stale + 1
    if improved:
        state.best = {"loss": row["val_loss"], "cosine": row["val_cosine"], "epoch": row["epoch"],
                      "target_passes": row["target_passes"]}
    return improved


def keep_best_weights(state: Progress, scored, row: dict) -> None:
    """A CPU copy of this epoch's weights: best.pt is written from it when the run ends."""
    state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
    state.best_row = row


def save_last(last_path: Path, model, opt, sched, ema, state: Progress) -> None:
    """last.pt: everything a resumed run needs to go on exactly as this one would have."""
    extra = {"ema": ema.state_dict()} if ema is not None else {}
    save_checkpoint(last_path, model, state.epoch, state.history[-1] if state.history else {},
                    optimizer=opt.state_dict(), **extra, scheduler=sched.state_dict(), rng=torch.get_rng_state(),
                    history=state.history, best=state.best, best_state=state.best_state, best_row=state.best_row,
                    train_seconds=state.train_seconds, seen=state.seen)


def log_row(live, row: dict) -> None:
    for key in ("train_loss", "val_loss", "val_cosine", "lr"):
        live.log_metric(key.replace("_", "/", 1) if key != "lr" else "lr", row[key])
    live.next_step()


def print_epoch(job: TrainJob, row: dict, seq_per_s: float, improved: bool) -> None:
    print(f"{job.experiment} epoch {row['epoch']:3d}/{job.train['epochs']}: train {row['train_loss']:.5f}  "
          f"val {row['val_loss']:.5f}  val cos {row['val_cosine']:.4f}  lr {row['lr']:.1e}  "
          f"{seq_per_s:.0f} seq/s  {row['target_passes']:.1f} passes{'  *best' if improved else ''}")


def run_metrics(model_name, n_params, model, train_ds, val_ds, cfg, state: Progress, unique_targets: int,
                per_window: int, start_cos: float, device, world: int) -> dict:
    """metrics/train_<experiment>.json: what the run trained on and reached (no timings: they change
    on every run, and the file must not)."""
    history, best = state.history, state.best
    return {
        "model": model_name, "params": n_params, "epochs": len(history),
        "best_epoch": best["epoch"], "best_val_loss": round(best["loss"], 6),
        "best_val_cosine": round(best["cosine"], 6),
        "final_val_cosine": round(history[-1]["val_cosine"], 6) if history else None,
        "train_windows": len(train_ds), "val_windows": len(val_ds),
        "loss": cfg["loss"], "targets": cfg["targets"], "unique_train_targets": unique_targets,
        "train_targets_seen": state.seen * per_window,
        "target_passes": round(state.seen * per_window / unique_targets, 3),
        "best_target_passes": round(best.get("target_passes", 0.0), 3),
        "anchor": model.anchor, "anchor_decay": round(float(model.anchor_decay), 6),
        "normalize": cfg["normalize"], "article_fraction": cfg["article_fraction"],
        "train_articles": int(np.unique(train_ds.article_indices[train_ds.starts]).size),
        "start_val_cosine": round(start_cos, 6),
        # the first epoch whose val cosine exceeded its value before training (null: never)
        "epochs_to_beat_start": next((r["epoch"] for r in history if r["val_cosine"] > start_cos), None),
        "device": str(device), "precision": cfg["precision"], "processes": world,
        # train.threads as resolved (0 = default_threads): on CPU the thread count can move the last digits
        "threads": torch.get_num_threads(),
    }


def run_timings(state: Progress, start_cos: float) -> dict:
    """Wall-clock figures: printed, logged to logs/train_<exp>.jsonl and returned under "timings",
    kept out of the metrics file and the checkpoints."""
    history = state.history
    return {
        # train seconds until val cosine first exceeded its value before training (null: never)
        "seconds_to_beat_start": next((round(sum(r["seconds"] for r in history[:i + 1]), 1)
                                       for i, r in enumerate(history) if r["val_cosine"] > start_cos), None),
        "train_seconds": round(state.train_seconds, 1),
        "train_seq_per_s": round(state.seen / state.train_seconds, 1) if state.train_seconds else None,
        "epoch_seconds": [round(r["seconds"], 2) for r in history],
    }


def finish_curves(live, live_tmp: Path) -> None:
    """Close DVCLive and drop its own summary of the last step: metrics/train_<experiment>.json is the
    run's summary (of its best epoch), and the stage publishes only the curves dvc.yaml declares."""
    live.end()
    (live_tmp / "metrics.json").unlink(missing_ok=True)


def publish(job: TrainJob, live_tmp: Path, model, scored, state: Progress, metrics: dict) -> None:
    """best.pt, final.pt and the metrics of this run replace the old ones together, then the curves
    (the caller holds Ctrl-C meanwhile: half the renames done would mix two runs)."""
    with atomic_outputs():
        save_checkpoint(job.out_dir / "best.pt", model, state.best["epoch"], untimed(state.best_row),
                        state_dict=state.best_state if state.best_state is not None else model.state_dict())
        save_checkpoint(job.out_dir / "final.pt", scored, len(state.history),
                        untimed(state.history[-1] if state.history else {}))
        write_json(Path(job.metrics_dir) / f"train_{job.experiment}.json", metrics)
    replace_dir(live_tmp, Path(job.live_dir) / job.experiment)


# --- interruption --------------------------------------------------------------------------------

def interrupted_note(published: bool, epoch: int, saved_epoch: int, last_path: Path) -> str:
    if published:  # the signal was held until the outputs were all in place
        return "after the run finished; its outputs are complete"
    kept = (f"epochs up to {saved_epoch} are saved in {last_path} (rerun with train.resume: true to "
            "continue; the unfinished epoch is redone)" if saved_epoch else "no epoch finished, nothing saved")
    return (f"in epoch {epoch + 1}; {kept}. best.pt, final.pt, metrics and dvclive curves are still the "
            "previous complete run's")


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
