"""Checkpoints: the one writer and the one reader, used by training, resume, evaluate, analyze and
`lvm inspect`; and a loaded model's predictions.

    save_checkpoint(path, model, epoch, metrics)      # tensors and plain values only (no pickle)
    model = load_model(path, expect_name="gru", data=test_split)   # checked, rebuilt, eval mode
    pred = predict(model, test_split)                 # [windows, D], L2-normalised

Every way a file can be wrong (missing, empty, truncated, text, a zip that is no torch file, pickled
objects, wrong keys, a state_dict that does not fit, another model, other D or L, an older lvm's
checkpoint) is one `LvmError` naming the file and what is wrong, never a traceback; and a checkpoint
is only scored on data of the vector dimension and context length it was trained on.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from lvm import LvmError
from lvm.hardware import autocast
from lvm.io import atomic_path

# what every lvm checkpoint holds; resume also needs RESUME_KEYS (written into last.pt only)
REQUIRED_KEYS = {"model_name": str, "model_config": dict, "state_dict": dict}
RESUME_KEYS = ("optimizer", "scheduler", "rng", "history", "best", "best_state", "best_row",
               "train_seconds", "seen", "epoch")
RETRAIN = "retrain it (`dvc repro` runs the train stages)"
# what to do about a bad last.pt (train.resume): starting over is the retraining
RESUME_FIX = "delete it or set train.resume: false to retrain from scratch"


def save_checkpoint(path, model, epoch: int, metrics: dict, state_dict: dict | None = None, **extra) -> None:
    """A checkpoint loadable with torch.load(weights_only=True): tensors and plain values only.
    `state_dict` replaces the model's current weights (best.pt is written from a kept copy)."""
    state = {"model_name": model.config["name"], "model_config": dict(model.config),
             "state_dict": model.state_dict() if state_dict is None else state_dict,
             "epoch": epoch, "metrics": metrics, **extra}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # to a file object: torch.save names the zip's folder after a path's stem, here the random temp
        # name, so the same checkpoint would differ in bytes on every run (and DVC would see a change)
        torch.save(state, f)


def untimed(row: dict) -> dict:
    """An epoch's history row without its wall time: what best.pt and final.pt keep (their bytes must
    not change when a rerun with the same inputs and params trains the same weights)."""
    return {k: v for k, v in row.items() if k != "seconds"}


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:  # a cut multi-byte char at the end of the sample is still text
        try:
            head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def _check_file(path: Path, fix: str = RETRAIN) -> None:
    """Refuse, by what they are, the files torch.load would answer with a misleading traceback
    (a text file reads as 'weights only load failed'; a cut file as an 'internal miniz error')."""
    if not path.exists():
        raise LvmError(f"{path}: checkpoint not found; run `dvc repro` to train it (or `dvc checkout`)")
    if not path.is_file():
        raise LvmError(f"{path}: not a file; a checkpoint is one .pt file")
    if path.stat().st_size == 0:
        raise LvmError(f"{path}: empty file (0 bytes), not a checkpoint; copy it again or {fix}")
    with open(path, "rb") as f:
        head = f.read(512)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK\x03\x04"):
            raise LvmError(f"{path}: truncated checkpoint (a zip archive whose end is missing); "
                           f"copy it again or {fix}")
        if _looks_like_text(head):
            first = head.decode("utf-8", "replace").splitlines()[0][:60] if head.strip() else ""
            raise LvmError(f"{path}: a text file, not a checkpoint (starts {first!r}); {fix}")
        return  # perhaps torch's legacy (pre-zip) format: torch.load decides
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if not any(n.endswith("/data.pkl") for n in names):
                raise LvmError(f"{path}: a zip archive but not a torch checkpoint (no data.pkl member; it holds "
                               f"{', '.join(names[:3]) or 'nothing'}{', ...' if len(names) > 3 else ''})")
            bad = z.testzip()  # torch itself does not check the members' CRCs: flipped bits load silently
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise LvmError(f"{path}: corrupted checkpoint ({e}); copy it again or {fix}") from None
    if bad is not None:
        member = bad.split("/", 1)[-1]  # under torch's archive folder (the temp name it was written as)
        raise LvmError(f"{path}: corrupted checkpoint (member {member} fails its CRC check); copy it again or {fix}")


def load_checkpoint(path, resume: bool = False) -> dict:
    """The checkpoint's dict, checked to be an lvm checkpoint (and a resumable one with `resume`)."""
    path = Path(path)
    fix = RESUME_FIX if resume else RETRAIN
    _check_file(path, fix)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise LvmError(f"{path}: not a torch checkpoint ({str(e).strip().splitlines()[0][:120]})") from None
        # weights_only refuses to run pickled code: right, and an lvm checkpoint never holds any
        what = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        raise LvmError(f"{path}: holds pickled Python objects ({what.group(1) if what else 'not tensors'}) that "
                       "torch.load(weights_only=True) refuses to run; lvm checkpoints hold tensors and plain "
                       "values only, so it was not written by lvm") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError, ... for broken files
        msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise LvmError(f"{path}: cannot be read as a torch checkpoint ({msg}); copy it again or {fix}") from None
    if not isinstance(ckpt, dict):
        raise LvmError(f"{path}: holds a {type(ckpt).__name__}, not an lvm checkpoint (a dict with "
                       f"{', '.join(REQUIRED_KEYS)})")
    need = (*REQUIRED_KEYS, *(RESUME_KEYS if resume else ()))
    missing = [k for k in need if k not in ckpt]
    if missing:
        what = "a resumable checkpoint (last.pt)" if resume and set(missing) <= set(RESUME_KEYS) else "an lvm checkpoint"
        raise LvmError(f"{path}: not {what}: missing key(s) {', '.join(missing)} (has "
                       f"{', '.join(map(str, list(ckpt)[:6])) or 'none'}); {fix}")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(ckpt[key], kind):
            raise LvmError(f"{path}: key {key!r} is a {type(ckpt[key]).__name__}, not a {kind.__name__}; "
                           f"not an lvm checkpoint")
    return ckpt


def check_identity(path, config: dict, expect_name=None, expect_dim=None, expect_context=None, data=None,
                   fix: str | None = None) -> None:
    """The one check that a checkpoint is what its consumer scores: the model (evaluate knows which
    model each experiment holds), the vector dimension D and the context length L of the data. A
    checkpoint trained at L=20 would run on L=10 windows without complaint (the recurrent models take
    any length), scoring a model on a task it was not trained for: refused."""
    where = f"{data.path}" if data is not None else "the data"
    if data is not None:
        expect_dim = data.dim if expect_dim is None else expect_dim
        expect_context = data.context_length if expect_context is None else expect_context
    name = config.get("name")
    if expect_name is not None and name != expect_name:
        raise LvmError(f"{path}: a checkpoint of model {name!r}, but {expect_name!r} is expected here; "
                       f"{fix or f'put the {expect_name} checkpoint there or {RETRAIN}'}")
    dim, length = config.get("input_dim"), config.get("context_length")
    if expect_dim is not None and dim != expect_dim:
        raise LvmError(f"{path}: trained on D={dim} vectors, but {where} has D={expect_dim}; "
                       f"{fix or 're-export the data or retrain on it'}")
    if expect_context is not None and length != expect_context:
        raise LvmError(f"{path}: trained at context length L={length}, but {where} has windows of L="
                       f"{expect_context}; {fix or f'score it on L={length} windows (data.context_length) or retrain at L={expect_context}'}")


def build_model(ckpt: dict, path, expect_name=None, expect_dim=None, expect_context=None, data=None):
    """Rebuild the checkpoint's model on CPU: config and state_dict checked against this version's code."""
    from lvm.models import MODEL_NAMES, config_keys, create_model

    name, cfg = ckpt["model_name"], dict(ckpt["model_config"])
    if cfg.get("name") != name:
        raise LvmError(f"{path}: model_name {name!r} but model_config names {cfg.get('name')!r}; not an lvm checkpoint")
    if name not in MODEL_NAMES:
        raise LvmError(f"{path}: unknown model {name!r} (this version has {', '.join(MODEL_NAMES)})")
    check_identity(path, cfg, expect_name, expect_dim, expect_context, data)
    # checked before the rebuild, which would refuse a missing key without saying why it is missing
    missing, extra = sorted(config_keys(name) - set(cfg)), sorted(set(cfg) - config_keys(name))
    if missing or extra:  # e.g. no 'anchor'/'normalize': written before they existed
        raise LvmError(f"{path}: written by another lvm version (model config "
                       + "; ".join(s for s in (missing and f"lacks {', '.join(missing)}",
                                                extra and f"has unknown {', '.join(extra)}") if s)
                       + f"); {RETRAIN}")
    try:
        model = create_model(**cfg)
    except (TypeError, ValueError) as e:
        raise LvmError(f"{path}: its model config cannot be rebuilt ({e}); {RETRAIN}") from None
    load_weights(model, ckpt["state_dict"], path)
    return model


def load_weights(model, state: dict, path, check_only: bool = False, fix: str = RETRAIN) -> None:
    """load_state_dict with every mismatch named (the old-version case told apart); `check_only`
    checks that `state` would load without loading it."""
    if not isinstance(state, dict):
        raise LvmError(f"{path}: state_dict is a {type(state).__name__}, not a dict of tensors")
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    buffers = {"norm_shift", "norm_scale", "anchor_decay"}
    if missing and set(missing) <= buffers and not unexpected:
        raise LvmError(f"{path}: written by an older lvm version (state_dict lacks {', '.join(missing)}); {fix}")
    if missing or unexpected:
        parts = [f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing else "",
                 f"unexpected {', '.join(map(str, unexpected[:4]))}{' ...' if len(unexpected) > 4 else ''}"
                 if unexpected else ""]
        raise LvmError(f"{path}: state_dict does not fit a {model.name} model ({'; '.join(p for p in parts if p)}); "
                       f"{fix}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise LvmError(f"{path}: state_dict entry {k} is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(want[k].shape):
            raise LvmError(f"{path}: state_dict entry {k} has shape {tuple(v.shape)}, but the {model.name} model "
                           f"its config describes needs {tuple(want[k].shape)}; {fix}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise LvmError(f"{path}: state_dict entry {k} holds NaN or Inf; {fix}")
    if check_only:
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # dtype that cannot be copied, ...
        raise LvmError(f"{path}: state_dict cannot be loaded ({str(e).splitlines()[0][:120]})") from None


def load_model(path, expect_name=None, expect_dim=None, expect_context=None, device="cpu", data=None):
    """Rebuild a trained model from best.pt / final.pt (no pickle), checked: see the module docstring.
    `data` (a WindowDataset) sets expect_dim/expect_context and is named in the message."""
    path = Path(path)
    model = build_model(load_checkpoint(path), path, expect_name, expect_dim, expect_context, data)
    return model.to(device).eval()


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


@torch.no_grad()
def predict(model, dataset, batch_size: int = 256, device=None, precision: str = "fp32") -> np.ndarray:
    """L2-normalised predictions [n_windows, D] for every window of `dataset` (a WindowDataset), in order."""
    device = device or next(model.parameters()).device
    model.eval()
    out = np.empty((len(dataset), dataset.dim), np.float32)
    for idx, ctx, _ in dataset.batches(batch_size):
        with autocast(device, precision):
            pred = model(ctx.to(device))
        out[idx] = pred.float().cpu().numpy()
    return out
