"""The evaluate stage end to end on tiny trained models: nested metrics, guard, table, figures."""
from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

from lvm import LvmError
from lvm.io import NpzReader, save_npz
from lvm.metrics import METRIC_KEYS
from lvm import evaluation, report
from lvm.stages import evaluate
from lvm.pipeline import experiments, labels
from lvm.training import run
from test_train import tiny_params

from conftest import REPO

EXPERIMENTS = experiments(REPO / "dvc.yaml")  # {experiment: model} of the real pipeline
LABELS = list(labels(EXPERIMENTS).values())  # what evaluate reports them as: gru, ..., gru_retrieval


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("eval")
    for experiment, model in EXPERIMENTS.items():
        run(tiny_params(epochs=1), model, experiment, data_dir=str(data_dir), models_dir=str(root / "models"),
            metrics_dir=str(root / "metrics"), live_dir=str(root / "live"), progress=False)
    return root


from test_train import data_dir  # noqa: E402,F401  (shared module fixture)


def evaluate_into(root, data_dir, out=None):
    p = tiny_params()
    p["data"]["vectors"] = str(data_dir.parent / "vectors.npz")  # no concept_texts: the sample says so
    out = out or root
    return evaluate.run(p, data_dir=str(data_dir), models_dir=str(root / "models"),
                        out_json=str(out / "metrics/evaluate.json"), out_md=str(out / "metrics/results.md"),
                        plots_dir=str(out / "plots"), live_dir=str(root / "live"),
                        out_sample=str(out / "metrics/inspect_sample.md"),
                        out_curve=str(out / "metrics/context_curve.json"),
                        out_headline=str(out / "metrics/headline.json"), experiments=EXPERIMENTS)


PREDICTORS = {"copy_last", "context_mean", "exp_decay_mean", "ridge", "similar_successor", *LABELS}


def test_metrics_are_nested_predictor_split_metric(trained, data_dir, capsys):
    results = evaluate_into(trained, data_dir)
    stdout = capsys.readouterr().out
    on_disk = json.loads((trained / "metrics/evaluate.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert set(on_disk) == {"best_baseline", *PREDICTORS}
    best = on_disk.pop("best_baseline")
    assert set(best) == {"cosine", "mrr"} and {best["cosine"], best["mrr"]} <= PREDICTORS - set(LABELS)
    # chosen on val
    baselines = ["copy_last", "context_mean", "exp_decay_mean", "ridge", "similar_successor"]
    assert best["cosine"] == max(baselines, key=lambda b: on_disk[b]["val"]["cosine_mean"])
    assert best["mrr"] == max(baselines, key=lambda b: on_disk[b]["val"]["cand_mrr"])
    for name, splits in on_disk.items():
        assert set(splits) == {"val", "test"}
        for split, metrics in splits.items():
            vs = metrics.pop("vs_best_baseline")
            # every model but the reference (train_baseline's gru) is also paired with it, window by window
            vm = metrics.pop("vs_model", None)
            assert (vm is not None) == (name in LABELS and name != "gru"), name
            if vm is not None:
                assert vm["model"] == "gru" and vm["cosine_diff_ci_low"] <= vm["cosine_diff"] <= vm["cosine_diff_ci_high"]
                assert vm["cosine_diff"] == pytest.approx(metrics["cosine_mean"] - on_disk["gru"][split]["cosine_mean"],
                                                          abs=2e-6)
            assert tuple(metrics) == METRIC_KEYS
            assert metrics["cosine_ci_low"] <= metrics["cosine_mean"] <= metrics["cosine_ci_high"]
            assert vs["cosine_baseline"] == best["cosine"] and vs["mrr_baseline"] == best["mrr"]
            for key in ("cosine_diff", "cand_mrr_diff"):
                assert vs[key + "_ci_low"] <= vs[key] <= vs[key + "_ci_high"]
            ref = on_disk[best["cosine"]][split]
            assert vs["cosine_diff"] == pytest.approx(metrics["cosine_mean"] - ref["cosine_mean"], abs=2e-6)
    for split in ("val", "test"):  # the reference against itself: exactly 0, zero width
        vs = results[best["cosine"]][split]["vs_best_baseline"]
        assert vs["cosine_diff"] == vs["cosine_diff_ci_low"] == vs["cosine_diff_ci_high"] == 0.0
    # copy-last's prediction is the last context vector, so its direction score is cos(last, next) - 1
    assert on_disk["copy_last"]["test"]["directional_mean"] < 0
    # ... it is one of the context vectors: PAR = 1 / max cos(next, context) >= 1
    assert on_disk["copy_last"]["test"]["par_mean"] >= 1.0
    # ... and without its own input in the bank it ranks better
    assert on_disk["copy_last"]["test"]["r_at_1_full_bank"] == 0.0
    assert on_disk["copy_last"]["test"]["cand_mrr"] > on_disk["copy_last"]["test"]["mrr_full_bank"]
    table = (trained / "metrics/results.md").read_text()
    # three tables (cosine, retrieval, per-position curve): header, then one row per predictor each; and
    # model − gru: header and one row per other model, with its verdict lines and minimum detectable differences
    assert table.count("\n| ") == 3 * (1 + len(on_disk)) + len(LABELS)
    assert "| model − gru |" in table and "Test cosine, model − gru, paired: " in table and "MDD" in table
    assert "vs best baseline [95% CI]" in table and "paired difference to" in table and "reference" in table
    assert "ridge at k=1, 2" in table and " s to this stage" not in table  # its time: logs/evaluate.jsonl
    # the headline: the figures of evaluate.json that say which experiment is better, nothing else
    headline = json.loads((trained / "metrics/headline.json").read_text())
    assert list(headline) == ["best_baseline", *LABELS]
    assert headline["best_baseline"] == {
        "cosine": best["cosine"], "test_cosine": results[best["cosine"]]["test"]["cosine_mean"],
        "mrr": best["mrr"], "test_cand_mrr": results[best["mrr"]]["test"]["cand_mrr"]}
    for model in LABELS:
        t = results[model]["test"]
        assert headline[model]["test_cosine"] == t["cosine_mean"]
        assert headline[model]["cosine_diff_ci_low"] == t["vs_best_baseline"]["cosine_diff_ci_low"]
        assert headline[model]["cand_mrr_diff"] == t["vs_best_baseline"]["cand_mrr_diff"]
        if model != "gru":
            assert headline[model]["cosine_diff_vs_gru_ci_low"] == t["vs_model"]["cosine_diff_ci_low"]
    assert "No text sample" in (trained / "metrics/inspect_sample.md").read_text()
    for png in ("test_comparison", "cosine_hist", "directional", "training_curves", "context_curve"):
        img = matplotlib.image.imread(trained / "plots" / f"{png}.png")
        assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 0.01  # a real, non-blank figure
    assert "context curve:" in stdout and "WARNING" not in stdout

    curve = json.loads((trained / "metrics/context_curve.json").read_text())
    L = tiny_params()["data"]["context_length"]
    ridge_k = tiny_params()["evaluate"]["ridge_k"]
    grid = sorted({k for k in tiny_params()["evaluate"]["curve_k"] if k <= L} | {L})
    # the curve reads every sample_stride-th test window (fewer than the table when the stride is > 1)
    stride = tiny_params()["evaluate"]["sample_stride"]
    n_test = int(on_disk["copy_last"]["test"]["n_windows"])
    assert stride > 1 and curve["sample_stride"] == stride and curve["n_windows"] == len(range(0, n_test, stride))
    from lvm.data import WindowDataset
    from lvm.metrics import cosine

    test = WindowDataset(data_dir / "test.npz")
    rows = slice(None, None, stride)
    copy_last = cosine(test.vectors_np[test.last_context_rows()][rows], test.vectors_np[test.targets_rows()][rows])
    assert curve["copy_last"][str(L)]["cosine_mean"] == pytest.approx(float(copy_last.mean()), abs=1e-6)
    for name in PREDICTORS:
        expected = [k for k in grid if name != "ridge" or k >= ridge_k]
        assert list(curve[name]) == [str(k) for k in expected]
        for point in curve[name].values():
            assert point["ci_low"] <= point["cosine_mean"] <= point["ci_high"]
    # copy-last reads only the last vector: the same at every k
    assert len({p["cosine_mean"] for p in curve["copy_last"].values()}) == 1
    # context_mean over one vector is copy-last
    assert curve["context_mean"]["1"] == curve["copy_last"]["1"]
    assert "ridge at k=1" in curve["skipped"]


def test_the_curve_truncates_the_context_but_keeps_the_targets(data_dir):
    from lvm.data import WindowDataset

    ds = WindowDataset(data_dir / "test.npz")
    t = evaluation.truncated(ds, 3)
    assert len(t) == len(ds) and t.context_length == 3
    np.testing.assert_array_equal(t.targets_rows(), ds.targets_rows())
    _, ctx_full, tgt_full = next(ds.batches(8))
    _, ctx, tgt = next(t.batches(8))
    np.testing.assert_array_equal(ctx.numpy(), ctx_full.numpy()[:, -3:])
    np.testing.assert_array_equal(tgt.numpy(), tgt_full.numpy())
    assert evaluation.truncated(ds, ds.context_length) is ds
    assert evaluation.curve_grid([1, 2, 5, 10, 20, 50, 100], 10) == [1, 2, 5, 10]
    assert evaluation.curve_grid([50, 3, 3], 7) == [3, 7]


def test_one_article_split_warns_and_writes_no_interval(trained, data_dir, tmp_path, capsys):
    one = tmp_path / "ctx"
    one.mkdir()
    for split in ("train", "val", "test"):
        with NpzReader(data_dir / f"{split}.npz") as r:
            arrays = {k: np.array(r.load(k)) for k in r.keys}
        if split == "test":  # every test window in one (test-only) article
            arrays["article_indices"][:] = arrays["article_indices"][0]
        save_npz(one / f"{split}.npz", **arrays)
    results = evaluate_into(trained, one, out=tmp_path)
    stdout = capsys.readouterr().out
    assert "WARNING: the test split has 1 article(s)" in stdout and "WARNING: the val split" not in stdout
    on_disk = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    for name in PREDICTORS:
        t, v = on_disk[name]["test"], on_disk[name]["val"]
        assert t["n_articles"] == 1.0
        assert all(t[k] is None for k in t if "_ci_" in k)
        assert all(t["vs_best_baseline"][k] is None for k in t["vs_best_baseline"] if "_ci_" in k)
        assert v["cosine_ci_low"] is not None  # val still has its articles
    curve = json.loads((tmp_path / "metrics/context_curve.json").read_text())
    assert curve["copy_last"]["1"]["ci_low"] is None
    table = (tmp_path / "metrics/results.md").read_text()
    assert "n/a: 1 article" in table and "WARNING" in table and "cannot be decided" in table
    assert results["copy_last"]["test"]["cosine_ci_low"] is None


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
                # a whole test article relabelled as a train article (its windows stay inside one article)
                ids = arrays["article_indices"]
                ids[ids == ids[0]] = np.asarray(r.load("article_indices"))[0]
        save_npz(leaky / f"{split}.npz", **arrays)
    with pytest.raises(LvmError, match="test articles also in train"):
        evaluate_into(trained, leaky)


def _vs(c, lo, hi, m=0.0, mlo=-0.01, mhi=0.01):
    return {"cosine_baseline": "ridge", "cosine_diff": c, "cosine_diff_ci_low": lo, "cosine_diff_ci_high": hi,
            "mrr_baseline": "copy_last", "cand_mrr_diff": m, "cand_mrr_diff_ci_low": mlo,
            "cand_mrr_diff_ci_high": mhi}


def test_verdict_comes_from_the_paired_interval():
    best = {"cosine": "ridge", "mrr": "copy_last"}
    results = {"gru": {"test": {"vs_best_baseline": _vs(0.01, -0.002, 0.02)}},
               "big": {"test": {"vs_best_baseline": _vs(0.002, 0.001, 0.003, 0.05, 0.02, 0.08)}},
               "bad": {"test": {"vs_best_baseline": _vs(-0.05, -0.07, -0.03)}}}
    v = report.verdict(results, ["copy_last", "ridge"], ["gru"], "cosine", best)
    assert "to ridge (the best baseline on val cosine)" in v
    assert "gru no significant difference (+0.0100 [-0.0020, +0.0200]; MDD 0.0110)" in v and v.endswith("No model beats it.")
    # a small difference whose whole interval is above 0 beats; a large mean does not matter by itself
    v = report.verdict(results, ["copy_last", "ridge"], ["gru", "big", "bad"], "cosine", best)
    assert "big beats" in v and "bad loses" in v and v.endswith("Beats it: big.")
    v = report.verdict(results, ["copy_last", "ridge"], ["gru", "big"], "mrr", best)
    assert "to copy_last (the best baseline on val candidate MRR)" in v and v.endswith("Beats it: big.")


def test_best_baseline_is_chosen_on_val_not_test():
    def entry(val_cos, test_cos, val_mrr, test_mrr):
        return {"val": evaluation.Score({"cosine_mean": val_cos, "cand_mrr": val_mrr}, {}),
                "test": evaluation.Score({"cosine_mean": test_cos, "cand_mrr": test_mrr}, {})}

    results = {"copy_last": entry(0.30, 0.50, 0.20, 0.10), "context_mean": entry(0.40, 0.35, 0.05, 0.30),
               "exp_decay_mean": entry(0.35, 0.45, 0.10, 0.20), "ridge": entry(0.20, 0.60, 0.15, 0.40)}
    best = evaluation.choose_best_baseline(results, list(results))
    assert best == {"cosine": "context_mean", "mrr": "copy_last"}  # test would say ridge for both


def test_the_curve_at_the_whole_context_reuses_the_test_scores(trained, data_dir):
    """evaluate passes its test scores (every sample_stride-th window) as the curve's k = L point: the
    same figures the curve computes when it predicts those windows again."""
    from lvm.checkpoints import load_model
    from lvm.data import WindowDataset
    from lvm.metrics import cosine

    cfg = tiny_params()["evaluate"]
    test = WindowDataset(data_dir / "test.npz")
    model = load_model(trained / "models" / "baseline" / "best.pt")
    predictors = {"gru": evaluation.model_predictor(model, cfg, "cpu", "fp32")}
    full = cosine(predictors["gru"](test), test.vectors_np[test.targets_rows()])
    sample, grid, L = test.every(cfg["sample_stride"]), [1, test.context_length], test.context_length
    again = evaluation.context_curve(predictors, sample, grid, cfg, {})
    reused = evaluation.context_curve(predictors, sample, grid, cfg, {}, whole={"gru": full[::cfg["sample_stride"]]})
    assert reused["gru"]["1"] == again["gru"]["1"]
    for key in ("cosine_mean", "ci_low", "ci_high"):
        assert reused["gru"][str(L)][key] == pytest.approx(again["gru"][str(L)][key], abs=2e-6)
    # and it is used: a wrong array moves the k = L point only
    wrong = evaluation.context_curve(predictors, sample, grid, cfg, {}, whole={"gru": full[::cfg["sample_stride"]] * 0})
    assert wrong["gru"][str(L)]["cosine_mean"] == 0 and wrong["gru"]["1"] == again["gru"]["1"]
