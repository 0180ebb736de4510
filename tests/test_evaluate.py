"""The evaluate stage end to end on tiny trained models: nested metrics, guard, table, figures."""
from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

from lvm import LvmError
from lvm.io import NpzReader, save_npz
from lvm.metrics import METRIC_KEYS
from lvm.stages import evaluate
from lvm.train import EXPERIMENTS, run
from test_train import tiny_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("eval")
    for experiment, model in EXPERIMENTS.items():
        run(tiny_params(epochs=1), model, experiment, data_dir=str(data_dir), models_dir=str(root / "models"),
            metrics_dir=str(root / "metrics"), live_dir=str(root / "live"), progress=False)
    return root


from test_train import data_dir  # noqa: E402,F401  (shared module fixture)


def evaluate_into(root, data_dir, readme=None):
    p = tiny_params()
    p["data"]["vectors"] = str(data_dir.parent / "vectors.npz")  # no concept_texts: the sample says so
    return evaluate.run(p, data_dir=str(data_dir), models_dir=str(root / "models"),
                        out_json=str(root / "metrics/evaluate.json"), out_md=str(root / "metrics/results.md"),
                        plots_dir=str(root / "plots"), readme=readme, live_dir=str(root / "live"),
                        out_sample=str(root / "metrics/inspect_sample.md"))


def test_metrics_are_nested_predictor_split_metric(trained, data_dir):
    readme = trained / "README.md"
    readme.write_text(f"# x\n\n{evaluate.MARK_START}\nold\n{evaluate.MARK_END}\ntail\n")
    results = evaluate_into(trained, data_dir, readme=str(readme))
    on_disk = json.loads((trained / "metrics/evaluate.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert set(on_disk) == {"copy_last", "context_mean", "exp_decay_mean", "ridge", *EXPERIMENTS.values()}
    for name, splits in on_disk.items():
        assert set(splits) == {"val", "test"}
        for split, metrics in splits.items():
            assert tuple(metrics) == METRIC_KEYS
            assert metrics["cosine_ci_low"] <= metrics["cosine_mean"] <= metrics["cosine_ci_high"]
    # copy-last's prediction is the last context vector, so its direction score is cos(last, next) - 1
    assert on_disk["copy_last"]["test"]["directional_mean"] < 0
    table = (trained / "metrics/results.md").read_text()
    assert table.count("\n| ") == 1 + len(on_disk)  # header, then one row per predictor
    assert "best baseline" in table
    text = readme.read_text()
    assert "old" not in text and table.strip() in text and text.endswith("tail\n")
    assert "No text sample" in (trained / "metrics/inspect_sample.md").read_text()
    for png in ("test_comparison", "cosine_hist", "directional", "training_curves"):
        img = matplotlib.image.imread(trained / "plots" / f"{png}.png")
        assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 0.01  # a real, non-blank figure


def test_evaluation_is_deterministic(trained, data_dir):
    a = evaluate_into(trained, data_dir)
    b = evaluate_into(trained, data_dir)
    assert a == b


def test_guard_fails_when_a_test_article_is_in_train(trained, data_dir, tmp_path):
    leaky = tmp_path / "ctx"
    leaky.mkdir()
    for split in ("train", "val", "test"):
        with NpzReader(data_dir / f"{split}.npz") as r:
            arrays = {k: np.array(r.load(k)) for k in r.keys}
        if split == "test":
            with NpzReader(data_dir / "train.npz") as r:
                arrays["article_indices"][:3] = np.asarray(r.load("article_indices"))[0]
        save_npz(leaky / f"{split}.npz", **arrays)
    with pytest.raises(LvmError, match="test articles also in train"):
        evaluate_into(trained, leaky)


def test_verdict_names_a_model_only_when_it_beats_the_best_baseline():
    def entry(c, lo, hi):
        return {"test": {"cosine_mean": c, "cosine_ci_low": lo, "cosine_ci_high": hi}}

    results = {"copy_last": entry(0.30, 0.28, 0.32), "ridge": entry(0.40, 0.38, 0.42),
               "gru": entry(0.39, 0.37, 0.41), "big": entry(0.50, 0.45, 0.55)}
    v = evaluate.verdict(results, ["copy_last", "ridge"], ["gru"], "cosine")
    assert v.startswith("No model beats the best baseline (ridge")
    v = evaluate.verdict(results, ["copy_last", "ridge"], ["gru", "big"], "cosine")
    assert "big (0.5000)" in v and "gru" not in v and "intervals do not overlap for big" in v
