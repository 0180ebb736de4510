"""dvc.yaml is the one map: the experiments and the windows' directory come from it (lvm.pipeline), and
an experiment's overrides (params.yaml `overrides.<experiment>`) reach its train stage and only it."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO
from lvm import LvmError
from lvm.checkpoints import load_checkpoint
from lvm.config import for_experiment, load_params, validate
from lvm.pipeline import experiments, labels, windows_dir
from test_train import TINY, data_dir  # noqa: F401  (shared module fixture)

DVC_YAML = REPO / "dvc.yaml"


def test_the_experiments_are_the_train_stages_of_dvc_yaml():
    exps = experiments(DVC_YAML)
    assert exps == {"baseline": "gru", "hierarchical": "hierarchical_gru", "memory": "memory_gru", "retrieval": "gru"}
    # the first gru keeps the model's name (comparable across commits); the second is told apart
    assert labels(exps) == {"baseline": "gru", "hierarchical": "hierarchical_gru", "memory": "memory_gru",
                            "retrieval": "gru_retrieval"}
    assert windows_dir(DVC_YAML) == "data/ctx100"


def test_adding_an_experiment_is_one_stage_block(tmp_path):
    pipeline = yaml.safe_load(DVC_YAML.read_text())
    block = dict(pipeline["stages"]["train_baseline"])
    block["cmd"] = block["cmd"].replace("--model gru --experiment baseline", "--model lstm --experiment lstm")
    pipeline["stages"]["train_lstm"] = block
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    exps = experiments(tmp_path / "dvc.yaml")
    assert list(exps)[-1] == "lstm" and exps["lstm"] == "lstm" and labels(exps)["lstm"] == "lstm"
    # a train stage whose command names another experiment is refused by name
    block["cmd"] = "PYTHONPATH=src python -m lvm.stages.train --model lstm --experiment other"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with pytest.raises(LvmError, match="stage train_lstm: its cmd must read"):
        experiments(tmp_path / "dvc.yaml")


def test_evaluate_and_the_plots_read_every_experiment():
    pipeline = yaml.safe_load(DVC_YAML.read_text())
    deps = pipeline["stages"]["evaluate"]["deps"]
    val_curves = next(p["val_cosine"] for p in pipeline["plots"] if isinstance(p, dict) and "val_cosine" in p)
    for experiment in experiments(DVC_YAML):
        assert f"models/{experiment}/best.pt" in deps and f"dvclive/{experiment}/plots" in deps, experiment
        assert f"dvclive/{experiment}/plots/metrics/val/cosine.tsv" in val_curves["y"], experiment
        assert f"metrics/train_{experiment}.json" in pipeline["metrics"], experiment
    # the windows' directory is named once, in vars; every stage reaches it through ${windows}
    text = DVC_YAML.read_text()
    assert text.count("data/ctx100") == 1 and "  - windows: data/ctx100\n" in text
    for name, stage in pipeline["stages"].items():
        if name != "ingest":
            assert "--data ${windows}" in stage["cmd"], name


def test_overrides_change_only_their_experiment():
    p = validate(TINY)
    retrieval = for_experiment(p, "retrieval")
    assert (retrieval["model"]["anchor"], retrieval["train"]["loss"]) == ("last", "infonce")
    shared = (TINY["model"]["anchor"], TINY["train"]["loss"])
    assert shared != ("last", "infonce") and (p["model"]["anchor"], p["train"]["loss"]) == shared  # they stay
    assert for_experiment(p, "hierarchical") is p  # an experiment without overrides
    # an experiment's overrides are exactly what the file says, typed like the shared key
    q = validate({**TINY, "overrides": {"retrieval": {"train": {"epochs": 3, "lr": 1}}}})
    r = for_experiment(q, "retrieval")
    assert r["train"]["epochs"] == 3 and q["train"]["epochs"] == TINY["train"]["epochs"]
    assert r["train"]["lr"] == 1.0 and isinstance(r["train"]["lr"], float)
    assert (r["model"]["anchor"], r["train"]["loss"]) == shared


@pytest.mark.parametrize("given, message", [
    ({"retrieval": {"train": {"bogus": 1}}}, r"params: overrides\.retrieval\.train\.bogus: unknown key"),
    ({"retrieval": {"train": {"epochs": "many"}}}, r"params: overrides\.retrieval\.train\.epochs: expected an integer"),
    ({"retrieval": {"train": {"loss": "hinge"}}}, r"params: overrides\.retrieval\.train\.loss: must be one of"),
    ({"retrieval": {"model": {"anchor": "first"}}}, r"params: overrides\.retrieval\.model\.anchor: must be one of"),
    ({"retrieval": {"train": {"epochs": 0}}}, r"params: overrides\.retrieval: train\.epochs: must be >= 1"),
    ({"retrieval": {"evaluate": {"n_boot": 5}}}, r"params: overrides\.retrieval\.evaluate: unknown section"),
    ({"retrieval": {"model": {"hidden_dim": 31}}}, r"params: overrides\.retrieval: model\.transformer_heads"),
])
def test_a_bad_override_fails_at_load_by_name(given, message):
    with pytest.raises(LvmError, match=message):
        validate({**TINY, "overrides": given})


def test_overrides_name_experiments_of_the_pipeline_beside_the_params_file(tmp_path):
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY, "overrides": {"baseline": {"train": {"lr": 0.1}}}}))
    assert load_params(params)["overrides"] == {"baseline": {"train": {"lr": 0.1}}}  # any train_<experiment> stage
    params.write_text(yaml.safe_dump({**TINY, "overrides": {"retreival": {"train": {"lr": 0.1}}}}))
    with pytest.raises(LvmError, match=r"^params: overrides\.retreival: unknown experiment \(the train_<experiment> "
                                       r"stages of .*dvc\.yaml: baseline, hierarchical, memory, retrieval\)"):
        load_params(params)


def test_the_train_stage_trains_with_its_experiments_overrides(tmp_path, monkeypatch, data_dir):  # noqa: F811
    from lvm.stages import train

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 1}}))
    monkeypatch.chdir(tmp_path)
    for experiment in ("retrieval", "baseline"):
        train.main(["--model", "gru", "--experiment", experiment, "--data", str(data_dir), "--params", str(params),
                    "--models", "models", "--metrics", "metrics", "--live", "dvclive", "--no-progress"])
    got = {e: load_checkpoint(tmp_path / f"models/{e}/best.pt")["model_config"] for e in ("retrieval", "baseline")}
    shared = validate(TINY)
    assert got["retrieval"]["anchor"] == "last" and got["baseline"]["anchor"] == shared["model"]["anchor"] != "last"
    recorded = {e: json.loads((tmp_path / f"metrics/train_{e}.json").read_text())["loss"]
                for e in ("retrieval", "baseline")}
    assert recorded == {"retrieval": "infonce", "baseline": shared["train"]["loss"]} and shared["train"]["loss"] != "infonce"
