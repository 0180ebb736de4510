"""lvm.ablation: lever rows and data-scale runs scored against the best baseline chosen on val."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO_PARAMS, SIMPLE_TRAINING, merge, repository_params, write_vectors
from lvm.data import export_windows, load_corpus


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    write_vectors(root / "vectors.npz", [40] * 16, dim=12, seed=5)
    export_windows(load_corpus(root / "vectors.npz"), root / "ctx", 10, 5,
                   {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    params = merge(merge(REPO_PARAMS, SIMPLE_TRAINING), {
        "data": {"context_length": 10}, "export": {"overlap": 5},
        "model": {"hidden_dim": 16, "gru_layers": 1, "anchor": "decay_mean"},
        "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "threads": 1, "max_train_windows": 40,
                  "targets": "all", "normalize": "robust"},
        "evaluate": {"n_boot": 50}})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_levers_and_data_scale(workdir, capsys):
    from lvm.ablation import main
    args = ["--params", str(workdir / "params.yaml"), "--data-dir", str(workdir / "ctx"),
            "--out-dir", str(workdir / "out"), "--plots-dir", str(workdir / "plots")]
    main(args + ["--only", "default", "targets=last", "normalize=robust", "retrieval"])
    out = json.loads((workdir / "out/ablation.json").read_text())
    # normalize=robust restates params.yaml: no duplicate row; the retrieval experiment's overrides are a row
    assert [r["name"] for r in out["runs"]] == ["default", "targets=last", "retrieval"]
    retrieval = repository_params()["overrides"]["retrieval"]
    assert out["runs"][2]["overrides"] == {f"{s}.{k}": v for s, keys in retrieval.items() for k, v in keys.items()}
    best = out["best_baseline"]["cosine"]
    for r in out["runs"]:
        v = r["test"]
        assert v["cosine_baseline"] == best
        assert v["cosine_diff"] == pytest.approx(v["cosine"] - out["baselines"][best]["test"]["cosine"], abs=2e-6)
        assert v["cosine_diff_ci_low"] <= v["cosine_diff"] <= v["cosine_diff_ci_high"]
    assert out["runs"][0]["train"]["best_target_passes"] > out["runs"][1]["train"]["best_target_passes"]
    table = (workdir / "out/ablation.md").read_text()
    assert "| targets=last |" in table and best in table
    # the default row is train_baseline's own setting: the shared params with overrides.baseline
    assert f"dropout {repository_params()['overrides']['baseline']['model']['dropout']}," in table
    with pytest.raises(SystemExit) as stop:
        main(args + ["--data-scale", "--fractions", "0.5", "1.5"])
    assert stop.value.code == 2 and "error: --fractions" in capsys.readouterr().err
    main(args + ["--data-scale", "--fractions", "1", "0.5"])  # run in ascending order, whatever the order given
    scale = json.loads((workdir / "out/data_scale.json").read_text())
    targets = [r["train"]["unique_train_targets"] for r in scale["runs"]]
    assert len(targets) == 2 and targets[0] < targets[1]
    assert [r["overrides"]["train.article_fraction"] for r in scale["runs"]] == [0.5, 1.0]
    assert "--fractions 1 0.5" in (workdir / "out/data_scale.md").read_text()  # the table names its command
    assert (workdir / "plots/data_scale.png").stat().st_size > 10_000
    section = (workdir / "out/ablation_section.md").read_text()
    assert "| targets=last |" in section and "Data scale" in section
