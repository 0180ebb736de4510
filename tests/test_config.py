"""params.yaml loader: every key required, unknown keys, types and cross-key checks fail naming the key."""
import pytest
import yaml

from lvm import LvmError
from lvm.config import SCHEMA, load_params, validate

from conftest import REPO, REPO_PARAMS, merge


def _load(tmp_path, given):
    """Load the repository's params.yaml with `given` merged in (a string: the file's whole text)."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merge(REPO_PARAMS, given)) if not isinstance(given, str) else given)
    return load_params(path)


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "overrides"
                   else {f"{prefix}{key}": value})
    return out


def test_repo_params_file_sets_exactly_the_schemas_keys():
    p = load_params(REPO / "params.yaml")
    assert sorted(_leaves(p)) == sorted(_leaves(SCHEMA)) == sorted(_leaves(REPO_PARAMS))
    assert p["data"]["context_length"] >= 1
    assert validate(p) == p  # a validated dict validates to itself


def test_the_values_are_the_files():
    # nothing fills or changes a value: the loaded params are the file's own (ints of number keys as floats)
    given = _leaves(REPO_PARAMS)
    loaded = _leaves(load_params(REPO / "params.yaml"))
    assert loaded == given
    assert all(type(loaded[k]) is float for k, kind in _leaves(SCHEMA).items() if kind is float)


@pytest.mark.parametrize("missing", ["train.ema", "export.split.val", "model.anchor", "evaluate", "overrides"])
def test_a_missing_key_is_named_not_filled(tmp_path, missing):
    given = merge(REPO_PARAMS, {})
    *path, last = missing.split(".")
    section = given
    for key in path:
        section[key] = dict(section[key])
        section = section[key]
    del section[last]
    with pytest.raises(LvmError, match=rf"^params: {missing.replace('.', '[.]')}: missing \(params.yaml sets every key"):
        _load(tmp_path, yaml.safe_dump(given))


def test_numbers_read_as_the_keys_type(tmp_path):
    p = _load(tmp_path, {"export": {"overlap": 99}, "train": {"lr": 1}})
    assert p["export"]["overlap"] == 99
    assert p["train"]["lr"] == 1.0 and isinstance(p["train"]["lr"], float)
    assert p["data"] == REPO_PARAMS["data"]
    # YAML 1.1 reads 1e-4 (no dot) as text: refused with the fix, never taken as a string
    with pytest.raises(LvmError, match=r"^params: train\.lr: expected a number, got '1e-4' \(YAML reads .* write 1\.0e-4\)"):
        _load(tmp_path, yaml.safe_dump(REPO_PARAMS).replace("lr: 0.0002", "lr: 1e-4"))


@pytest.mark.parametrize("given, key", [
    ({"dataa": {}}, "params: dataa: unknown key"),
    ({"data": {"contxt_length": 5}}, "params: data.contxt_length: unknown key"),
    ({"export": {"split": {"train": 0.8, "dev": 0.1, "test": 0.1}}}, "params: export.split.dev: unknown key"),
    ({"data": 5}, "params: data: expected a mapping"),
    ({"data": {"context_length": "100"}}, "params: data.context_length: expected an integer"),
    ({"data": {"context_length": 100.5}}, "params: data.context_length: expected an integer"),
    ({"data": {"context_length": True}}, "params: data.context_length: expected an integer"),
    ({"data": {"trust_pickle": "yes please"}}, "params: data.trust_pickle: expected true/false"),
    ({"data": {"trust_pickle": 1}}, "params: data.trust_pickle: expected true/false"),
    ({"train": {"lr": "fast"}}, "params: train.lr: expected a number"),
    ({"data": {"vectors": 3}}, "params: data.vectors: expected a string"),
])
def test_unknown_keys_and_wrong_types_are_named(tmp_path, given, key):
    with pytest.raises(LvmError, match="^" + key.replace(".", r"\.")):
        _load(tmp_path, given)


@pytest.mark.parametrize("given, key", [
    ({"data": {"context_length": 0}}, "data.context_length"),
    ({"data": {"context_length": -3}}, "data.context_length"),
    ({"export": {"overlap": 100}}, "export.overlap"),
    ({"export": {"overlap": 150}}, "export.overlap"),
    ({"export": {"overlap": -1}}, "export.overlap"),
    ({"export": {"split": {"train": 0.8, "val": 0.1, "test": 0.2}}}, "export.split"),
    ({"export": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}}, "export.split"),
    ({"export": {"split": {"train": 1.2, "val": -0.1, "test": -0.1}}}, "export.split.train"),
    ({"export": {"split": {"train": 0.9, "val": 0.1, "test": 0.0}}}, "export.split"),
    ({"model": {"chunk_size": 0}}, "model.chunk_size"),
    ({"export": {"val_stride": -1}}, "export.val_stride"),
    ({"export": {"min_target_position": -1}}, "export.min_target_position"),
    # stream_block only matters for files without article ids: the long context is named first
    ({"export": {"min_target_position": 5000}}, "export.min_target_position"),
    ({"data": {"stream_block": 50}}, "data.context_length"),
    ({"export": {"seed": -1}}, "export.seed"),
    ({"export": {"folds": 2}}, "export.folds"),
    ({"export": {"folds": -1}}, "export.folds"),
    ({"export": {"folds": 5, "fold": 5}}, "export.fold"),
    ({"export": {"fold": 1}}, "export.fold"),
    ({"train": {"seed": -1}}, "train.seed"),
    ({"train": {"lr": float("nan")}}, "train.lr"),
    ({"train": {"lr": float("inf")}}, "train.lr"),
    ({"train": {"weight_decay": -0.1}}, "train.weight_decay"),
    ({"train": {"lr_factor": 0.0}}, "train.lr_factor"),
    ({"train": {"lr_factor": 1.0}}, "train.lr_factor"),
    ({"evaluate": {"n_boot": 0}}, "evaluate.n_boot"),
    ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size"),
    ({"export": {"split": {"train": 0.8, "val": float("nan"), "test": 0.1}}}, "export.split.val"),
    ({"train": {"device": "gpu"}}, "train.device"),
    ({"train": {"device": "cuda:x"}}, "train.device"),
    ({"train": {"loss": "l1"}}, "train.loss"),
    ({"ingest": {"encoder": "bert"}}, "ingest.encoder"),
    ({"ingest": {"min_words": 20}}, "ingest.min_words"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"model": {"hidden_dim": 500}}, "model.transformer_heads"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"evaluate": {"ridge_k": 101}}, "evaluate.ridge_k"),
    ({"evaluate": {"curve_k": 5}}, "evaluate.curve_k"),
    ({"evaluate": {"curve_k": [1, 0]}}, "evaluate.curve_k"),
    ({"evaluate": {"curve_k": [1, 2.5]}}, "evaluate.curve_k"),
    ({"evaluate": {"curve_k": [True]}}, "evaluate.curve_k"),
    ({"evaluate": {"curve_k": ["10"]}}, "evaluate.curve_k"),
    ({"train": {"nproc": 0}}, "train.nproc"),
    ({"train": {"nproc": 3}}, "train.batch_size"),  # 32 is not divisible by 3
    ({"train": {"mmap": "yes"}}, "train.mmap"),
    ({"train": {"mmap": 1}}, "train.mmap"),
])
def test_bad_values_are_named(tmp_path, given, key):
    with pytest.raises(LvmError, match=r"^params: " + key.replace(".", r"\.") + ":"):
        _load(tmp_path, given)


@pytest.mark.parametrize("given", [
    {"export": {"overlap": 99}},
    {"export": {"overlap": 0}},
    {"data": {"context_length": 20}, "model": {"chunk_size": 5}, "export": {"overlap": 19}},
    {"export": {"split": {"train": 0.9, "val": 0.0, "test": 0.1}}},
    {"train": {"device": "cuda:1"}},
    {"train": {"nproc": 4, "batch_size": 64, "mmap": True}},
    {"train": {"mmap": False}},
    {"train": {"mmap": "auto"}},
    {"evaluate": {"curve_k": [1, 500]}},  # k > context_length is dropped by the evaluate stage
    {"evaluate": {"curve_k": []}},  # the curve is then just k = context_length
    {"data": {"context_length": 12}, "export": {"overlap": 6}},  # hierarchical_gru left-pads to 20
    {"data": {"context_length": 5}, "export": {"overlap": 0, "min_target_position": 200, "val_stride": 5}},
    {"data": {"context_length": 1, "stream_block": 2}, "model": {"chunk_size": 1},
     "evaluate": {"ridge_k": 1}, "export": {"overlap": 0}},
])
def test_edge_values_accepted(tmp_path, given):
    _load(tmp_path, given)


def test_file_problems(tmp_path):
    with pytest.raises(LvmError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(LvmError, match="not valid YAML"):
        _load(tmp_path, "data: [unclosed\n")
    with pytest.raises(LvmError, match="expected a mapping of sections"):
        _load(tmp_path, "- a\n- b\n")
