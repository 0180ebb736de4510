"""Cross-validation pooling (lvm.crossval): the pooled intervals are the per-window paired bootstrap over
all folds' articles, every long-enough article is tested exactly once, and the committed tables say so."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from lvm import LvmError, crossval
from lvm.evaluation import Score, per_article
from lvm.metrics import group_ci, group_sums_ci, paired_difference

from conftest import REPO

CFG = {"n_boot": 500}


def test_group_sums_ci_is_the_per_window_bootstrap():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 9, 200) * 7  # unsorted ids, unequal sizes
    values = rng.normal(size=200)
    ids, codes = np.unique(groups, return_inverse=True)
    sums, sizes = np.bincount(codes, weights=values), np.bincount(codes)
    assert group_sums_ci(sums, sizes, n_boot=300, seed=5) == group_ci(values, groups, n_boot=300, seed=5)
    assert group_sums_ci(sums[:1], sizes[:1]) == (None, None)


def fold_run(fold: int, articles: list[int], n_windows: list[int], rng, best: str = "exp_decay_mean") -> tuple:
    """A fold's per_article.json as evaluate writes it, and the per-window arrays it came from."""
    art = np.repeat(articles, n_windows)
    per_window = {name: {"cosine": rng.uniform(0.2, 0.6, art.size) + bonus,
                         "cand_rank": rng.integers(1, 50, art.size).astype(np.int64)}
                  for name, bonus in (("copy_last", 0.0), ("exp_decay_mean", 0.02), ("gru", 0.03),
                                      ("hierarchical_gru", 0.031))}
    scores = {name: {"test": Score({}, pw)} for name, pw in per_window.items()}
    pa = {"split_id": "x", "best_baseline": {"cosine": best, "mrr": "copy_last"}, "reference_model": "gru",
          "test": per_article(scores, {"test": SimpleNamespace(articles=art)}, "test")}
    run = {"name": f"fold{fold}", "rev": f"rev{fold}", "folds": 2, "fold": fold, "params": {}, "per_article": pa,
           "metadata": {"total_articles": 7, "articles_skipped_too_short": 2}, "timestamp": str(fold)}
    return run, per_window, art


def test_pooled_interval_equals_the_paired_bootstrap_of_all_windows():
    rng = np.random.default_rng(0)
    r0, pw0, a0 = fold_run(0, [4, 1, 9], [5, 3, 7], rng)
    r1, pw1, a1 = fold_run(1, [2, 8], [6, 2], rng, best="copy_last")  # another best baseline on its val
    a = crossval.analyse({"folds": 2, "runs": [r0, r1], "skipped": []}, CFG)
    assert a["n_articles"] == 5 and a["n_windows"] == 23
    groups = np.concatenate([a0, a1])

    def cat(name, key):
        return np.concatenate([pw0[name][key], pw1[name][key]])

    # model − the reference model: one paired bootstrap over the 23 windows of the 5 articles
    want = paired_difference(cat("hierarchical_gru", "cosine"), cat("gru", "cosine"), groups, n_boot=500, seed=0)
    got = a["vs_model"]["hierarchical_gru"]["cosine"]
    for key in ("mean", "ci_low", "ci_high"):
        assert got[key] == pytest.approx(want[key], abs=2e-6), key
    assert got["mdd"] == pytest.approx((want["ci_high"] - want["ci_low"]) / 2, abs=2e-6)
    # model − best baseline: each fold's windows against its own fold's choice
    ref = np.concatenate([pw0["exp_decay_mean"]["cosine"], pw1["copy_last"]["cosine"]])
    want = paired_difference(cat("gru", "cosine"), ref, groups, n_boot=500, seed=0)
    got = a["vs_best_baseline"]["gru"]["cosine"]
    assert (got["mean"], got["ci_low"], got["ci_high"]) == pytest.approx(
        (want["mean"], want["ci_low"], want["ci_high"]), abs=2e-6)
    assert got["baseline"] == ["copy_last", "exp_decay_mean"]
    mrr = paired_difference(1.0 / cat("gru", "cand_rank"), 1.0 / cat("copy_last", "cand_rank"), groups, n_boot=500, seed=0)
    assert a["vs_best_baseline"]["gru"]["cand_mrr"]["mean"] == pytest.approx(mrr["mean"], abs=2e-6)
    # fold 0 alone: the single split's articles only
    assert a["fold0"]["n_articles"] == 3
    md = crossval.table(a)
    assert "each of the 5 long-enough articles is tested exactly once" in md and "| model − gru (same windows) |" in md
    assert "hierarchical_gru" in md and "MDD" in md


def show_json(runs: list[dict], params_of=lambda r: {"export": {"folds": r["folds"], "fold": r["fold"]}}) -> list:
    return [{"rev": "workspace", "data": {}},
            {"rev": "base", "data": {}, "experiments": [
                {"executor": {"state": "success"},
                 "revs": [{"rev": r["rev"], "name": r["name"],
                           "data": {"params": {"params.yaml": {"data": params_of(r)}}, "timestamp": r["timestamp"],
                                    "metrics": {crossval.METADATA: {"data": r["metadata"]}},
                                    "deps": {"data/corpus/vectors.npz": {"hash": r.get("vectors_md5"), "size": 1},
                                             **{f: {"hash": h, "size": 1} for f, h in r.get("code", {}).items()},
                                             "data/ctx100/train.npz": {"hash": r["rev"], "size": 1}}}}]}
                 for r in runs]}]


def test_collect_needs_every_fold_once_and_disjoint_test_articles():
    rng = np.random.default_rng(1)
    r0, _, _ = fold_run(0, [4, 1, 9], [5, 3, 7], rng)
    r1, _, _ = fold_run(1, [2, 8], [6, 2], rng)
    files = {r["rev"]: r["per_article"] for r in (r0, r1)}
    cv = crossval.collect(show_json([r0, r1]), read=files.get)
    assert [r["fold"] for r in cv["runs"]] == [0, 1]
    with pytest.raises(LvmError, match=r"folds \[1\] of 2"):
        crossval.collect(show_json([r0]), read=files.get)
    # ... unless asked to pool what there is; and a fold recorded by an earlier run (another clone) counts
    assert crossval.collect(show_json([r0]), read=files.get, partial=True)["missing"] == [1]
    assert [r["fold"] for r in crossval.collect(show_json([r0]), read=files.get,
                                                               recorded=[{**r1, "params": {"export": {"folds": 2, "fold": 1}}}])["runs"]] == [0, 1]
    # an article in two folds' test splits: not folds of one split
    r1b, _, _ = fold_run(1, [2, 9], [6, 2], rng)
    r1b["rev"] = "rev1b"
    files["rev1b"] = r1b["per_article"]
    with pytest.raises(LvmError, match="article 9 is tested in fold 0 and fold 1"):
        crossval.collect(show_json([r0, r1b]), read=files.get)
    # every long-enough article must be tested: the export had 6, the folds test 5
    r0["metadata"] = {"total_articles": 8, "articles_skipped_too_short": 2}
    with pytest.raises(LvmError, match="test 5 articles, the export has 6"):
        crossval.collect(show_json([r0, r1]), read=files.get)
    # a run with other params than the newest is not pooled
    r0["metadata"] = {"total_articles": 7, "articles_skipped_too_short": 2}
    r0b = {**r0, "rev": "rev0b", "name": "odd", "timestamp": "0"}
    files["rev0b"] = r0["per_article"]
    cv = crossval.collect(show_json([r0b, r0, r1], params_of=lambda r: {
        "export": {"folds": 2, "fold": r["fold"]}, "train": {"lr": 1.0 if r["name"] == "odd" else 2.0}}), read=files.get)
    assert any("odd: other params" in s and "train.lr" in s for s in cv["skipped"])
    # the same params on another vectors file (a re-ingest on another CPU kind): not pooled either
    with_vectors = lambda r: {"export": {"folds": 2, "fold": r["fold"]}, "data": {"vectors": "data/corpus/vectors.npz"}}
    r1["vectors_md5"], r0["vectors_md5"] = "a" * 32, "b" * 32
    cv = crossval.collect(show_json([r0, r1], params_of=with_vectors), read=files.get, partial=True)
    assert [r["fold"] for r in cv["runs"]] == [1] and cv["missing"] == [0]
    assert any(s.startswith(f"{r0['name']}: other vectors") and "bbbbbbbb vs aaaaaaaa" in s for s in cv["skipped"])
    r0["vectors_md5"] = "a" * 32
    cv = crossval.collect(show_json([r0, r1], params_of=with_vectors), read=files.get)
    assert [r["vectors_md5"] for r in cv["runs"]] == ["a" * 32] * 2
    # ... and on other code (a source file among the stages' deps changed between the folds)
    r0["code"], r1["code"] = {"src/lvm/training.py": "1" * 32}, {"src/lvm/training.py": "2" * 32}
    cv = crossval.collect(show_json([r0, r1], params_of=with_vectors), read=files.get, partial=True)
    assert [r["fold"] for r in cv["runs"]] == [1]
    assert any(s.startswith(f"{r0['name']}: other code") and "src/lvm/training.py" in s for s in cv["skipped"])


def test_the_committed_crossval_tests_every_long_enough_article_at_most_once():
    """The committed tables: the pooled folds' test articles are disjoint (collect checks it) and add up
    to the pooled count; complete (no missing fold) means every long-enough article; a partial record
    says so in its first line."""
    a = json.loads((REPO / "metrics" / "crossval.json").read_text())
    record = json.loads((REPO / "metrics" / "crossval_folds.json").read_text())
    meta = json.loads((REPO / "data" / "ctx100" / "metadata_ctx100.json").read_text())
    eligible = meta["total_articles"] - meta["articles_skipped_too_short"]
    tested = [x for r in record["runs"] for x in r["per_article"]["test"]["articles"]]
    assert len(tested) == len(set(tested)) == a["n_articles"] == sum(r["test_articles"] for r in a["runs"])
    folds = [r["fold"] for r in a["runs"]]
    assert sorted(folds + a["missing_folds"]) == list(range(a["folds"]))
    md = (REPO / "metrics" / "crossval.md").read_text()
    if a["missing_folds"]:
        assert a["n_articles"] < eligible and md.startswith(f"**Partial: {len(folds)} of {a['folds']} folds**")
    else:
        assert a["n_articles"] == eligible and not md.startswith("**Partial")
    # fold 0 is the committed pipeline's split: its test articles are the committed evaluate's
    committed = json.loads((REPO / "metrics" / "per_article.json").read_text())
    assert 0 in folds and record["runs"][0]["per_article"]["test"]["articles"] == committed["test"]["articles"]


def test_sweep_pairs_each_model_with_itself_at_another_context_length():
    """lvm.sweep: model at L' minus itself at L on the same targets = the per-window paired bootstrap."""
    from lvm import sweep

    rng = np.random.default_rng(2)
    arts, counts = [3, 5, 8], [4, 6, 5]
    runs, files, per_window = [], {}, {}
    for L in (5, 20, 50, 100):
        run, pw, groups = fold_run(0, arts, counts, rng)
        runs.append({"L": L, "rev": f"L{L}", "name": f"L{L}"})
        files[f"L{L}"], per_window[L] = run["per_article"], pw
    assert sweep.context_pairs([5, 20, 50, 100]) == [(5, 20), (20, 50), (50, 100), (20, 100)]
    rows = sweep.same_model_rows(runs, ["gru", "hierarchical_gru"], CFG, read=files.get)
    want = paired_difference(per_window[100]["gru"]["cosine"], per_window[20]["gru"]["cosine"], groups, n_boot=500, seed=0)
    got = rows[(20, 100)]["gru"]
    assert (got["cosine_diff"], got["ci_low"], got["ci_high"]) == pytest.approx(
        (want["mean"], want["ci_low"], want["ci_high"]), abs=2e-6)
    md = "\n".join(sweep.same_model_table(rows))
    assert "| 100 − 20 |" in md and "L=100 vs L=20: gru " in md and "MDD" in md
    # a run without the file (recorded before it existed): no pairing rather than a wrong one
    assert sweep.same_model_rows(runs, ["gru"], CFG, read=lambda rev: None) == {}
    files["L50"] = fold_run(0, [3, 5, 9], counts, rng)[0]["per_article"]
    with pytest.raises(LvmError, match="L=20 and L=50 scored other test windows"):
        sweep.same_model_rows(runs, ["gru"], CFG, read=files.get)


def test_a_recorded_exp_show_that_is_missing_or_not_a_list_is_refused_by_name(tmp_path):
    """lvm.sweep and lvm.crossval read the recorded `dvc exp show --json` through one loader."""
    from lvm.io import read_exp_show
    from lvm import sweep

    path = tmp_path / "runs.json"
    for run in (crossval.run, sweep.run):
        with pytest.raises(LvmError, match=f"{path}: not found; record it with `dvc exp show --json -A"):
            run(str(path))
    path.write_text("{not json")
    with pytest.raises(LvmError, match=f"{path}: not valid JSON"):
        read_exp_show(path)
    path.write_text('{"a": 1}')
    with pytest.raises(LvmError, match=f"{path}: expected the list"):
        read_exp_show(path)
    path.write_text("[]")
    assert read_exp_show(path) == []


def test_per_domain_interval_is_the_paired_bootstrap_of_that_domains_windows(tmp_path):
    rng = np.random.default_rng(1)
    r0, pw0, a0 = fold_run(0, [4, 1, 9], [5, 3, 7], rng)
    r1, pw1, a1 = fold_run(1, [2, 8], [6, 2], rng, best="copy_last")
    # a vectors file of named sources: articles 1, 2, 9 are brown, 4 and 8 shakespeare (rows unsorted)
    article_rows = np.array([9, 9, 4, 1, 2, 8, 4, 1, 2, 9])
    names = ["wikipedia", "brown", "shakespeare"]
    domain_of = {1: 1, 2: 1, 9: 1, 4: 2, 8: 2}
    path = tmp_path / "vectors.npz"
    np.savez(path, vectors=np.zeros((10, 4), np.float32), article_indices=article_rows,
             chunk_indices=np.zeros(10, np.int64), domain_indices=np.array([domain_of[a] for a in article_rows], np.int8),
             domain_names=np.array(names))
    import hashlib
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    domains = crossval.article_domains(str(path), md5)
    assert domains == {1: "brown", 2: "brown", 9: "brown", 4: "shakespeare", 8: "shakespeare"}
    with pytest.raises(LvmError, match="is not the folds' vectors file"):
        crossval.article_domains(str(path), "0" * 32)
    no_domains = tmp_path / "plain.npz"
    np.savez(no_domains, vectors=np.zeros((2, 4), np.float32), article_indices=np.array([0, 0]))
    assert crossval.article_domains(str(no_domains)) is None

    a = crossval.analyse({"folds": 2, "runs": [r0, r1], "skipped": []}, CFG, domains)
    groups = np.concatenate([a0, a1])
    keep = np.isin(groups, [4, 8])  # shakespeare: article 4 in fold 0 (exp_decay_mean), 8 in fold 1 (copy_last)
    gru = np.concatenate([pw0["gru"]["cosine"], pw1["gru"]["cosine"]])
    ref = np.concatenate([pw0["exp_decay_mean"]["cosine"], pw1["copy_last"]["cosine"]])
    want = paired_difference(gru[keep], ref[keep], groups[keep], n_boot=500, seed=0)
    got = a["per_domain"]["shakespeare"]
    assert (got["n_articles"], got["n_windows"]) == (2, 7)
    v = got["vs_best_baseline"]["gru"]["cosine"]
    assert (v["mean"], v["ci_low"], v["ci_high"]) == pytest.approx((want["mean"], want["ci_low"], want["ci_high"]), abs=2e-6)
    assert sorted(a["per_domain"]) == ["brown", "shakespeare"] and a["per_domain"]["brown"]["n_articles"] == 3
    md = crossval.table(a)
    assert "| shakespeare | 2 | 7 |" in md and "hierarchical_gru − gru" in md
    assert "per_domain" not in crossval.analyse({"folds": 2, "runs": [r0, r1], "skipped": []}, CFG)
