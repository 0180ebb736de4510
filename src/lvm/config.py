"""One loader and the one validator for params.yaml: every key must be there, unknown keys and bad
values fail by name (one `params: KEY: ...` error).

Stages call `load_params()` and read only their own sections; dvc.yaml declares the same keys per
stage so `dvc exp run -S section.key=value` reruns exactly the stages that read that key.

Values live in one place, params.yaml (with a comment per key). This module holds only what a key
may be: SCHEMA gives each key's type or its allowed values, `_validate` the ranges and the checks
across keys. A key missing from the file is an error naming it (DVC reads the same file and would
otherwise track a value nobody wrote down). Nothing here reads a params file on its own: the caller
names it (`--params`, default ./params.yaml), and code outside a stage (tests, benchmarks) loads the
checkout's params.yaml itself. The models take no defaults of their own: `create_model` takes every
key from its caller and checks them with `check_model`, which is also what validates the model
section here and a checkpoint's model config.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from lvm import LvmError

PARAMS_FILE = "params.yaml"
# sections an experiment's overrides may change (the ones its train stage reads)
OVERRIDABLE = ("model", "train")

# What each key may be: a type (bool, int, float, str, list), a tuple of allowed values or a nested
# section. float keys take integers too (read as floats); bool is no int; list: its elements are
# checked in _validate (evaluate.curve_k).
SCHEMA: dict = {
    "data": {"vectors": str, "context_length": int, "trust_pickle": bool, "stream_block": int},
    "ingest": {"source": str, "encoder": ("minilm", "mpnet"), "precision": ("auto", "bf16", "fp32"),
               "batch_size": int, "max_words": int, "min_words": int, "max_articles": int},
    "export": {"overlap": int, "test_stride": int, "val_stride": int, "min_target_position": int, "seed": int,
               "split": {"train": float, "val": float, "test": float}, "folds": int, "fold": int},
    "model": {"hidden_dim": int, "dropout": float, "lstm_layers": int, "gru_layers": int,
              "transformer_layers": int, "transformer_heads": int, "transformer_ff": int, "amn_hidden": int,
              "attention_window": int, "attention_stride": int,
              "chunk_size": int, "hierarchy_layers": int, "hierarchy_levels": int, "memory_slots": int, "memory_layers": int,
              "anchor": ("none", "last", "decay_mean")},
    "train": {"seed": int, "epochs": int, "batch_size": int, "lr": float, "weight_decay": float,
              "grad_clip": float,
              "loss": ("mse", "cosine", "infonce", "mse+infonce", "cosine+infonce"),
              "infonce_tau": float, "infonce_weight": float, "lr_patience": int, "lr_factor": float,
              "device": str, "precision": ("auto", "fp32", "bf16"), "bf16_contexts": bool, "threads": int,
              "window_stride": int, "max_train_windows": int, "resume": bool, "nproc": int,
              "mmap": ("auto", True, False), "targets": ("last", "all"), "min_context": int,
              "normalize": ("none", "center", "standard", "robust"), "patience": int, "ema": float,
              "article_fraction": float, "val_min_context_share": float},
    "evaluate": {"n_boot": int, "ridge_k": int, "batch_size": int, "curve_k": list, "sample_stride": int},
    # experiment -> {model: {...}, train: {...}}: keys of those sections its train_<experiment>
    # stage trains with instead of the shared ones (`for_experiment`); checked by `_check_overrides`
    "overrides": dict,
}

# ingest.source values besides `default` and a *.xml(.bz2) dump's path (lvm.sources reads them):
# one of these, `combined` (all of them) or several joined by `+` (brown+shakespeare)
CORPUS_SOURCES = ("wikipedia", "linux-doc", "python-doc", "brown", "shakespeare")


def _fail(key: str, msg: str):
    raise LvmError(f"params: {key}: {msg}")


# model keys that count something (layers, units, slots): integers >= 1
MODEL_SIZES = ("hidden_dim", "memory_slots", "lstm_layers", "gru_layers", "transformer_layers", "transformer_heads",
               "transformer_ff", "amn_hidden", "chunk_size", "hierarchy_layers", "memory_layers",
               "attention_window", "attention_stride")


def check_model(values: dict) -> dict:
    """The model keys among `values` (params.yaml's model section, or a checkpoint's model config)
    with their types and ranges checked; raises ValueError "model.KEY: what is wrong"."""
    out = dict(values)
    for key, value in values.items():
        if key not in SCHEMA["model"]:
            continue  # name, input_dim, ... of a checkpoint's config: checked by the model
        try:
            out[key] = value = _coerce(SCHEMA["model"][key], value)
        except ValueError as e:
            raise ValueError(f"model.{key}: {e}") from None
        if key in MODEL_SIZES and value < 1:
            raise ValueError(f"model.{key}: must be >= 1, got {value}")
        if key == "hierarchy_levels" and value < 2:
            raise ValueError(f"model.hierarchy_levels: must be >= 2 (chunks and the document), got {value}")
        if key == "dropout" and not 0.0 <= value < 1.0:
            raise ValueError(f"model.dropout: must be in [0, 1), got {value}")
    if "transformer_heads" in out and "hidden_dim" in out and out["hidden_dim"] % out["transformer_heads"]:
        raise ValueError(f"model.transformer_heads: must divide model.hidden_dim ({out['hidden_dim']})")
    return out


def _check(schema: dict, given, prefix: str) -> dict:
    """`given` (one section) with every key of `schema` present and of its kind; fails naming the key."""
    if not isinstance(given, dict):
        _fail(prefix.rstrip(".") or PARAMS_FILE, f"expected a mapping, got {given!r}")
    for key in given:
        if key not in schema:
            _fail(f"{prefix}{key}", f"unknown key (known: {', '.join(schema)})")
    out = {}
    for key, kind in schema.items():
        name = f"{prefix}{key}"
        if key not in given:
            _fail(name, f"missing (params.yaml sets every key; the repository's {PARAMS_FILE} lists each "
                        "one with its value and what it means)")
        if name == "overrides":
            out[key] = _check_overrides(given[key])
        elif isinstance(kind, dict):
            out[key] = _check(kind, given[key], name + ".")
        else:
            try:
                out[key] = _coerce(kind, given[key])
            except ValueError as e:
                raise LvmError(f"params: {name}: {e}") from None
    return out


def _check_overrides(given) -> dict:
    """overrides: experiment -> {model/train section -> keys of that shared section}."""
    if not isinstance(given, dict):
        _fail("overrides", f"expected a mapping of experiments, got {given!r}")
    out = {}
    for experiment, sections in given.items():
        name = f"overrides.{experiment}"
        if not isinstance(sections, dict):
            _fail(name, f"expected a mapping, got {sections!r}")
        out[experiment] = {}
        for section, keys in sections.items():
            if section not in OVERRIDABLE:
                _fail(f"{name}.{section}", f"unknown section (an experiment overrides only {', '.join(OVERRIDABLE)})")
            if not isinstance(keys, dict):
                _fail(f"{name}.{section}", f"expected a mapping, got {keys!r}")
            for key, value in keys.items():
                if key not in SCHEMA[section]:
                    _fail(f"{name}.{section}.{key}", f"unknown key (known: {', '.join(SCHEMA[section])})")
                try:
                    out[experiment].setdefault(section, {})[key] = _coerce(SCHEMA[section][key], value)
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


def _coerce(kind, value):
    """`value` as a value of SCHEMA's `kind` (an int is a number; bool is no int); ValueError if it is not."""
    if isinstance(kind, tuple):  # allowed values; `1` must not pass as `true`, nor `0` as `false`
        if not any(value == allowed and type(value) is type(allowed) for allowed in kind):
            shown = ", ".join(str(a).lower() if isinstance(a, bool) else a for a in kind)
            raise ValueError(f"must be one of {shown}; got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads a number without a dot, such as 1e-4, as text: write 1.0e-4)" \
                if isinstance(value, str) and _is_number(value) else ""
            raise ValueError(f"expected a number, got {value!r}{hint}")
        value = float(value)
    elif kind is list:  # (its elements: checked in _validate)
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        value = list(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validate(given: dict) -> dict:
    """`given` (a params.yaml's sections) checked against SCHEMA, then the ranges and the checks
    across keys, then every experiment's overrides; returns the values with ints read as floats where
    a key is a number. Raises LvmError naming the key."""
    p = _validate(_check(SCHEMA, given, ""))
    for experiment in p["overrides"]:  # a bad override fails now, not when its stage runs
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
    if export["folds"] < 0 or export["folds"] in (1, 2):
        _fail("export.folds", f"must be 0 (the one split of export.split) or >= 3 (test, val and train each need "
              f"a block of articles), got {export['folds']}")
    if not (0 <= export["fold"] < max(export["folds"], 1)):
        _fail("export.fold", f"must be in 0..{max(export['folds'] - 1, 0)} (export.folds = {export['folds']}), "
              f"got {export['fold']}")
    try:
        check_model(model)
    except ValueError as e:
        raise LvmError(f"params: {e}") from None
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
    if not 0.0 <= train["val_min_context_share"] <= 1.0:
        _fail("train.val_min_context_share", "must be in [0, 1] (0 = one target per exported val window, after "
              f"the whole context), got {train['val_min_context_share']}")
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
    if p["ingest"]["min_words"] > p["ingest"]["max_words"] or p["ingest"]["min_words"] < 1:
        _fail("ingest.min_words", "must be between 1 and ingest.max_words")
    # checked here, before any work: evaluate would otherwise fail only after scoring every model
    for key in ("n_boot", "batch_size", "sample_stride"):
        if p["evaluate"][key] < 1:
            _fail(f"evaluate.{key}", f"must be >= 1, got {p['evaluate'][key]}")
    for key in ("batch_size", "max_words"):
        if p["ingest"][key] < 1:
            _fail(f"ingest.{key}", f"must be >= 1, got {p['ingest'][key]}")
    source = p["ingest"]["source"]
    if source not in ("default", "combined") and not source.endswith((".xml", ".xml.bz2", ".bz2")):
        names = source.split("+")
        unknown = [name for name in names if name not in CORPUS_SOURCES]
        if unknown:
            _fail("ingest.source", f"unknown source {unknown[0]!r} (choose default, combined, one of "
                  f"{', '.join(CORPUS_SOURCES)}, several joined by + such as brown+shakespeare, or the path "
                  "of a MediaWiki *.xml.bz2 dump)")
        if len(set(names)) < len(names):
            _fail("ingest.source", f"{source!r} names a source twice")
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
    """Load and validate a params.yaml; raise LvmError naming the file or the bad key."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path}: params file not found")
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LvmError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(given, dict):
        raise LvmError(f"{path}: expected a mapping of sections")
    p = validate(given)
    pipeline_file = path.parent / "dvc.yaml"  # the pipeline this params file belongs to, where there is one
    if p["overrides"] and pipeline_file.is_file():
        # its train_<experiment> stages, read here rather than through lvm.pipeline.experiments (which
        # also checks their commands) so that the params loader imports no code any stage's outputs
        # depend on (tests/test_imports.py)
        try:
            stages = (yaml.safe_load(pipeline_file.read_text()) or {}).get("stages") or {}
        except (yaml.YAMLError, AttributeError):
            stages = {}  # not this loader's to judge: the stage that reads dvc.yaml says what is wrong
        known = [name[len("train_"):] for name in stages if name.startswith("train_")]
        for experiment in p["overrides"]:
            if experiment not in known:
                _fail(f"overrides.{experiment}", f"unknown experiment (the train_<experiment> stages of "
                      f"{pipeline_file}: {', '.join(known)})")
    return p

