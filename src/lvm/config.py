"""One loader and the one validator for params.yaml: fills defaults, rejects unknown keys and bad
values by name (one `params: KEY: ...` error).

Stages call `load_params()` and read only their own sections; dvc.yaml declares the same keys per
stage so `dvc exp run -S section.key=value` reruns exactly the stages that read that key.

Defaults: DEFAULTS below holds every key with the value the repository's params.yaml gives it
(tests/test_config.py fails when the two differ), so a key missing from a user's params.yaml means
what the shipped params.yaml says. The models take no defaults of their own: `create_model` fills
missing model keys from DEFAULTS["model"] and checks them with `check_model`, which is also what
validates the model section here and a checkpoint's model config.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from lvm import LvmError

PARAMS_FILE = "params.yaml"
# sections an experiment's overrides may change (the ones its train stage reads)
OVERRIDABLE = ("model", "train")

DEFAULTS: dict = {
    "data": {
        "vectors": "data/corpus/vectors.npz",  # the npz every downstream stage reads
        "context_length": 100,
        "trust_pickle": False,  # allow object (pickled) keys such as concept_texts in your own npz
        "stream_block": 2000,  # pseudo-article size when a file has no article_indices
    },
    "ingest": {
        "source": "default",  # "default" = the Wikipedia shard shipped in gensim, or a *.xml.bz2 dump
        "encoder": "minilm",  # minilm (384-D) | mpnet (768-D)
        "precision": "auto",  # encoder weights: auto (bf16 where the CPU has native bf16, else fp32) | bf16 | fp32
        "batch_size": 64,
        "max_words": 15,
        "min_words": 3,
        "max_articles": 0,  # 0 = all; small values for smoke tests
    },
    "export": {
        "overlap": 50,
        "test_stride": 1,  # stride of test windows: 1 scores every target of the held-out articles
        "val_stride": 5,  # stride of val windows; 0 = the train stride (context_length - overlap)
        "min_target_position": 0,  # targets only at positions >= this in their article; 0 = context_length
        "seed": 42,
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},
    },
    "model": {
        "hidden_dim": 512,
        "dropout": 0.0,
        "lstm_layers": 2,
        "gru_layers": 4,
        "transformer_layers": 4,
        "transformer_heads": 8,
        "transformer_ff": 2048,
        "amn_hidden": 384,
        "chunk_size": 10,
        "hierarchy_layers": 2,
        "memory_slots": 2048,
        "memory_layers": 4,
        "anchor": "decay_mean",  # none | last | decay_mean: raw prediction = anchor baseline + learned remainder
    },
    "train": {
        "seed": 42,
        "epochs": 30,
        "batch_size": 32,
        "lr": 2e-4,
        "weight_decay": 0.01,
        "grad_clip": 1.0,
        "loss": "cosine",  # mse | cosine | infonce | mse+infonce | cosine+infonce
        "infonce_tau": 0.07,
        "infonce_weight": 0.05,  # weight of the InfoNCE term in a mixture
        "lr_patience": 3,
        "lr_factor": 0.5,
        "device": "auto",  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
        "precision": "auto",  # auto (bf16 where the device has native bf16, else fp32) | fp32 | bf16 (autocast)
        "bf16_contexts": True,  # with precision bf16: gather training contexts from a bf16 table (2.2x loader)
        "threads": 0,  # torch intra-op threads; 0 = all cores
        "window_stride": 1,  # stride of TRAINING windows inside train articles; 0 = as exported
        "max_train_windows": 250,  # 0 = all; caps windows per epoch (a new seeded subsample each epoch)
        "resume": False,
        "nproc": 1,  # processes on this node; > 1 relaunches `python -m lvm.stages.train` through torchrun (DDP)
        "mmap": "auto",  # read split vectors through a memory map: auto | true | false (see README)
        "targets": "all",  # last (one target per window) | all (the next vector after every position)
        "min_context": 1,  # with targets all: positions with fewer context vectors are not scored
        "normalize": "robust",  # none | center | standard | robust: per-dimension, fitted on the train split
        "patience": 3,  # stop after this many epochs without a lower val loss (0 = never)
        "ema": 0.0,  # > 0: validate and save an exponential moving average of the weights (decay per step)
        "article_fraction": 1.0,  # train on a seeded share of the train articles (data-scale curve)
    },
    "evaluate": {
        "n_boot": 1000,
        "ridge_k": 5,  # ridge baseline reads the last k context vectors; lambda is chosen on held-out train
        "batch_size": 256,
        # per-position curve: test cosine from the last k context vectors; k > L dropped, L always added
        "curve_k": [1, 2, 5, 10, 20, 50, 100],
        # the descriptive figures (the per-position curve, the analyze stage) read every Nth test window
        # (stride N inside each article); the results table always scores every test window
        "sample_stride": 4,
    },
    # experiment -> keys of the model/train sections its train_<experiment> stage trains with instead
    # of the shared ones (`for_experiment`); only the experiments listed here take overrides
    "overrides": {
        "retrieval": {"model": {"anchor": "last"}, "train": {"loss": "infonce", "lr": 0.0005}},
    },
}

CHOICES = {
    ("ingest", "encoder"): ("minilm", "mpnet"),
    ("ingest", "precision"): ("auto", "bf16", "fp32"),
    ("train", "loss"): ("mse", "cosine", "infonce", "mse+infonce", "cosine+infonce"),
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("train", "targets"): ("last", "all"),
    ("train", "normalize"): ("none", "center", "standard", "robust"),
    ("model", "anchor"): ("none", "last", "decay_mean"),
}

# String params that also take true/false (YAML turns a bare true/false into a boolean).
BOOL_OR_STR = {"train.mmap"}


def _fail(key: str, msg: str):
    raise LvmError(f"params: {key}: {msg}")


# model keys that count something (layers, units, slots): integers >= 1
MODEL_SIZES = ("hidden_dim", "memory_slots", "lstm_layers", "gru_layers", "transformer_layers", "transformer_heads",
               "transformer_ff", "amn_hidden", "chunk_size", "hierarchy_layers", "memory_layers")


def check_model(values: dict) -> dict:
    """The model keys among `values` (params.yaml's model section, or a checkpoint's model config)
    with their types and ranges checked; raises ValueError "model.KEY: what is wrong"."""
    out = dict(values)
    for key, value in values.items():
        if key not in DEFAULTS["model"]:
            continue  # name, input_dim, ... of a checkpoint's config: checked by the model
        try:
            out[key] = value = _coerce(DEFAULTS["model"][key], value)
        except ValueError as e:
            raise ValueError(f"model.{key}: {e}") from None
        if key in MODEL_SIZES and value < 1:
            raise ValueError(f"model.{key}: must be >= 1, got {value}")
        if key == "dropout" and not 0.0 <= value < 1.0:
            raise ValueError(f"model.dropout: must be in [0, 1), got {value}")
        if ("model", key) in CHOICES and value not in CHOICES["model", key]:
            raise ValueError(f"model.{key}: must be one of {', '.join(CHOICES['model', key])}; got {value!r}")
    hidden = out.get("hidden_dim", DEFAULTS["model"]["hidden_dim"])
    if "transformer_heads" in out and hidden % out["transformer_heads"]:
        raise ValueError(f"model.transformer_heads: must divide model.hidden_dim ({hidden})")
    return out


def _merge(defaults: dict, given: dict, prefix: str) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in (given or {}).items():
        name = f"{prefix}{key}"
        if key not in defaults:
            _fail(name, f"unknown key (known: {', '.join(defaults)})")
        default = defaults[key]
        if prefix == "overrides." and isinstance(value, dict):
            out[key] = _merge_override(default, value, name)
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                _fail(name, f"expected a mapping, got {value!r}")
            out[key] = _merge(default, value, name + ".")
        elif name in BOOL_OR_STR and isinstance(value, bool):
            out[key] = value
        else:
            try:
                out[key] = _coerce(default, value)
            except ValueError as e:
                raise LvmError(f"params: {name}: {e}") from None
    return out


def _merge_override(default: dict, given: dict, name: str) -> dict:
    """An experiment's overrides: shipped ones, then the user's; each key one of the shared section's."""
    out = copy.deepcopy(default)
    for section, keys in given.items():
        if section not in OVERRIDABLE:
            _fail(f"{name}.{section}", f"unknown section (an experiment overrides only {', '.join(OVERRIDABLE)})")
        if not isinstance(keys, dict):
            _fail(f"{name}.{section}", f"expected a mapping, got {keys!r}")
        for key, value in keys.items():
            if key not in DEFAULTS[section] or isinstance(DEFAULTS[section][key], dict):
                _fail(f"{name}.{section}.{key}", f"unknown key (known: {', '.join(DEFAULTS[section])})")
            try:
                out.setdefault(section, {})[key] = _coerce(DEFAULTS[section][key], value)
            except ValueError as e:
                raise LvmError(f"params: {name}.{section}.{key}: {e}") from None
    return out


def for_experiment(p: dict, experiment: str) -> dict:
    """Validated params `p` with the model/train keys of `overrides.<experiment>` in place of the
    shared ones (an experiment without overrides: `p` unchanged)."""
    changes = p.get("overrides", {}).get(experiment)
    if not changes:
        return p
    out = copy.deepcopy(p)
    for section, keys in changes.items():
        out[section].update(keys)
    try:
        return _validate(out)
    except LvmError as e:  # name where the value came from: "params: overrides.retrieval: train.loss: ..."
        raise LvmError(str(e).replace("params: ", f"params: overrides.{experiment}: ", 1)) from None


def _coerce(default, value):
    """`value` as the type of `default` (an int is a number; bool is no int); ValueError if it is not."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        value = list(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
    return value


def validate(p: dict) -> dict:
    _validate(p)
    for experiment in p.get("overrides", {}):  # a bad override fails now, not when its stage runs
        for_experiment(p, experiment)
    return p


def _validate(p: dict) -> dict:
    import math

    data, export, model, train = p["data"], p["export"], p["model"], p["train"]
    # NaN passes every `x <= 0` check below (all comparisons are False), so refuse any NaN/Inf float
    # (YAML .nan, .inf, 1.0e+400) first, whichever key it is in.
    stack = [("", p)]
    while stack:
        prefix, section = stack.pop(0)
        for key, value in section.items():
            if isinstance(value, dict):
                stack.append((f"{prefix}{key}.", value))
            elif isinstance(value, float) and not math.isfinite(value):
                _fail(f"{prefix}{key}", f"must be a finite number, got {value}")
    L = data["context_length"]
    if L < 1:
        _fail("data.context_length", f"must be >= 1, got {L}")
    if data["stream_block"] < L + 1:
        # Only files without article_indices use stream_block, but params cannot know the file: name
        # the usual culprit (a long context) first and the other way out second.
        _fail("data.context_length", f"{L} needs data.stream_block >= data.context_length + 1 = {L + 1} "
              f"(data.stream_block is {data['stream_block']}; it sizes the pseudo-articles of files without "
              "article_indices): lower data.context_length or raise data.stream_block")
    if not 0 <= export["overlap"] < L:
        _fail("export.overlap", f"must satisfy 0 <= overlap < data.context_length ({L}), got {export['overlap']}")
    if export["test_stride"] < 1:
        _fail("export.test_stride", f"must be >= 1, got {export['test_stride']}")
    for key in ("val_stride", "min_target_position"):
        if export[key] < 0:
            _fail(f"export.{key}", f"must be >= 0 (0 = default), got {export[key]}")
    if data["stream_block"] < export["min_target_position"] + 1:
        _fail("export.min_target_position", f"{export['min_target_position']} needs data.stream_block >= "
              f"export.min_target_position + 1 = {export['min_target_position'] + 1} (data.stream_block is "
              f"{data['stream_block']}; it sizes the pseudo-articles of files without article_indices): "
              "lower export.min_target_position or raise data.stream_block")
    if export["seed"] < 0:  # numpy's default_rng refuses negative seeds, after the file was read
        _fail("export.seed", f"must be >= 0, got {export['seed']}")
    fractions = export["split"]
    for name, f in fractions.items():
        if not 0.0 <= f <= 1.0:
            _fail(f"export.split.{name}", f"must be in [0, 1], got {f}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        _fail("export.split", f"fractions must sum to 1, got {sum(fractions.values()):.6g} ({fractions})")
    if fractions["train"] <= 0 or fractions["test"] <= 0:
        _fail("export.split", "train and test fractions must be > 0")
    try:
        check_model(model)
    except ValueError as e:
        raise LvmError(f"params: {e}") from None
    for (section, key), allowed in CHOICES.items():
        if section != "model" and p[section][key] not in allowed:  # (model: check_model above)
            _fail(f"{section}.{key}", f"must be one of {', '.join(allowed)}; got {p[section][key]!r}")
    device = train["device"]
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        _fail("train.device", f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    for key in ("epochs", "batch_size"):
        if train[key] < 1:
            _fail(f"train.{key}", f"must be >= 1, got {train[key]}")
    for key in ("lr", "infonce_tau"):
        if train[key] <= 0:
            _fail(f"train.{key}", f"must be > 0, got {train[key]}")
    for key in ("threads", "window_stride", "max_train_windows", "lr_patience", "weight_decay", "grad_clip",
                "infonce_weight"):
        if train[key] < 0:
            _fail(f"train.{key}", f"must be >= 0, got {train[key]}")
    if not 1 <= train["min_context"] <= L:
        _fail("train.min_context", f"must be between 1 and data.context_length ({L}), got {train['min_context']}")
    if not 0.0 <= train["ema"] < 1.0:
        _fail("train.ema", f"must be in [0, 1) (0 = off), got {train['ema']}")
    if not 0.0 < train["article_fraction"] <= 1.0:
        _fail("train.article_fraction", f"must be in (0, 1], got {train['article_fraction']}")
    if train["patience"] < 0:
        _fail("train.patience", f"must be >= 0 (0 = no early stopping), got {train['patience']}")
    if not 0 <= train["seed"] < 2 ** 32:  # np.random.seed's range
        _fail("train.seed", f"must be in [0, 2**32), got {train['seed']}")
    if not 0.0 < train["lr_factor"] < 1.0:  # ReduceLROnPlateau: the factor must shrink the rate
        _fail("train.lr_factor", f"must be in (0, 1), got {train['lr_factor']}")
    if train["nproc"] < 1:
        _fail("train.nproc", f"must be >= 1, got {train['nproc']}")
    if train["batch_size"] % train["nproc"]:
        _fail("train.batch_size", f"must be divisible by train.nproc ({train['nproc']}): the global batch "
              f"is split evenly over the processes; got {train['batch_size']}")
    if train["mmap"] not in ("auto", True, False):
        _fail("train.mmap", f"must be auto, true or false; got {train['mmap']!r}")
    if p["ingest"]["min_words"] > p["ingest"]["max_words"] or p["ingest"]["min_words"] < 1:
        _fail("ingest.min_words", "must be between 1 and ingest.max_words")
    # checked here, before any work: evaluate would otherwise fail only after scoring every model
    for key in ("n_boot", "batch_size", "sample_stride"):
        if p["evaluate"][key] < 1:
            _fail(f"evaluate.{key}", f"must be >= 1, got {p['evaluate'][key]}")
    for key in ("batch_size", "max_words"):
        if p["ingest"][key] < 1:
            _fail(f"ingest.{key}", f"must be >= 1, got {p['ingest'][key]}")
    if p["ingest"]["max_articles"] < 0:
        _fail("ingest.max_articles", f"must be >= 0 (0 = all), got {p['ingest']['max_articles']}")
    if p["evaluate"]["ridge_k"] < 1 or p["evaluate"]["ridge_k"] > L:
        _fail("evaluate.ridge_k", f"must be between 1 and data.context_length ({L})")
    bad = [k for k in p["evaluate"]["curve_k"] if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad:
        _fail("evaluate.curve_k", f"must be a list of positive integers (context vectors), got {bad[0]!r} "
              f"in {p['evaluate']['curve_k']!r}")
    return p


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """Load, fill defaults and validate params.yaml; raise LvmError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path}: params file not found")
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LvmError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(given, dict):
        raise LvmError(f"{path}: expected a mapping of sections")
    return validate(_merge(DEFAULTS, given, ""))
