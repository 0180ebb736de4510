"""Look inside: predictions decoded to text (lvm inspect, evaluate's sample), memory-slot statistics,
hierarchy saliency, and the context-length sweep figure from a recorded `dvc exp show --json`."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, repository_params, stage_env, write_vectors
from lvm import LvmError
from lvm.data import WindowDataset, export_windows, load_corpus
from lvm.inspect import (copy_last, hierarchy_saliency, inspect_command, load_corpus_text, memory_slot_stats,
                         model_predictor, inspect_windows)
from lvm.models import create_model
from lvm.training import run
from test_train import TINY, tiny_params

LENGTHS = [30] * 14


def text(article: int, chunk: int) -> str:
    return f"article {article} chunk {chunk}"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """Tiny corpus WITH texts ('article A chunk C'), exported at L=10, and a gru trained 1 epoch on it."""
    root = tmp_path_factory.mktemp("inspect")
    ids = 10 + 3 * np.arange(len(LENGTHS))
    texts = np.array([text(a, c) for a, n in zip(ids, LENGTHS) for c in range(n)])
    titles = np.array([f"Title {i}" for i in range(ids.max() + 1)])
    write_vectors(root / "vectors.npz", LENGTHS, dim=12, seed=3, concept_texts=texts, article_titles=titles)
    export_windows(load_corpus(root / "vectors.npz"), root / "ctx", 10, 5, {"train": 0.6, "val": 0.2, "test": 0.2},
                   seed=1, test_stride=1)
    run(tiny_params(epochs=1), "gru", "baseline", data_dir=str(root / "ctx"), models_dir=str(root / "models"),
        metrics_dir=str(root / "metrics"), live_dir=str(root / "live"), progress=False)
    p = tiny_params()
    p["data"]["vectors"] = str(root / "vectors.npz")
    (root / "params.yaml").write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "vectors": p["data"]["vectors"]}}))
    return root, p


def test_inspect_prints_the_true_next_chunk_and_tags_neighbours(corpus_dir):
    root, p = corpus_dir
    test = WindowDataset(root / "ctx" / "test.npz")
    article = int(test.window_articles()[0])
    out = inspect_command(p, [str(root / "models/baseline/best.pt")], article, n_windows=3, k=5,
                          data_dir=str(root / "ctx"))
    blocks = out.split("== ")[1:]
    assert len(blocks) == 3
    for block in blocks:
        target = int(block.split("target = chunk ")[1].split()[0])
        assert target >= 10  # the first target of an article has L=10 chunks before it
        assert f"last context: {text(article, target - 1)}\n" in block
        assert f"true next:    {text(article, target)}\n" in block
        # copy-last's prediction IS the last context vector: its nearest corpus chunk is itself
        assert f"1. 1.000 [ctx-1] {text(article, target - 1)}" in block
        assert "-- gru: cos(pred, next)" in block
    assert "search over all 420 rows" in out
    listing = inspect_command(p, [], None, data_dir=str(root / "ctx"))
    assert f"{article}" in listing and "Title" in listing


def test_inspect_windows_search_includes_the_target(corpus_dir):
    root, p = corpus_dir
    test = WindowDataset(root / "ctx" / "test.npz")
    corpus = load_corpus_text(p["data"]["vectors"])
    oracle = {"oracle": lambda ctx: test.batch(np.arange(3))[1].numpy()}  # predicts the true next vector
    recs = inspect_windows(corpus, test, np.arange(3), {**oracle, "copy_last": copy_last}, k=2)
    for rec in recs:
        top = rec["predictors"]["oracle"]["neighbours"][0]
        assert top["tag"] == "TARGET" and top["text"] == rec["next_text"] and top["cos"] == pytest.approx(1.0)
        assert rec["predictors"]["oracle"]["cos_next"] == pytest.approx(1.0)


def test_inspect_cli_bad_article_is_one_error_line(corpus_dir):
    root, _ = corpus_dir
    r = subprocess.run([sys.executable, "-m", "lvm.cli", "inspect", "--article", "9999", "--params",
                        str(root / "params.yaml"), "--data-dir", str(root / "ctx")], cwd=root, env=stage_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: --article 9999")
    r = subprocess.run([sys.executable, "-m", "lvm.cli", "inspect", "--article", "10", "--model", "nope.pt",
                        "--params", str(root / "params.yaml"), "--data-dir", str(root / "ctx")], cwd=root,
                       env=stage_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope.pt" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_sample_has_every_predictor_and_the_true_next_text(corpus_dir):
    from lvm.inspect import sample_markdown as inspect_sample
    from lvm.checkpoints import load_model

    root, p = corpus_dir
    test = WindowDataset(root / "ctx" / "test.npz")
    md = inspect_sample(p, test, {"gru": load_model(root / "models/baseline/best.pt")}, torch.device("cpu"))
    article = int(test.window_articles()[0])
    assert md.count("### ") == 3 and md.count("| copy_last | ") == 3 and md.count("| gru | ") == 3
    assert f"true next chunk: **{text(article, 10)}**" in md  # the article's first window


def test_memory_slot_counts_sum_to_the_number_of_reads(corpus_dir):
    root, _ = corpus_dir
    test = WindowDataset(root / "ctx" / "test.npz")
    torch.manual_seed(0)
    model = create_model("memory_gru", input_dim=12, context_length=10, normalize="none",
                         **{**repository_params()["model"], "hidden_dim": 16, "memory_slots": 32,
                            "memory_layers": 2, "anchor": "none"}).eval()
    stats = memory_slot_stats(model, test, batch_size=7)
    n = len(test)
    for kind, reads in (("first", n * 10), ("second", n)):
        s = stats[kind]
        assert s["counts"].sum() == reads == s["summary"]["reads"]
        assert s["mass"].sum() == pytest.approx(reads, rel=1e-5)  # each read's softmax sums to 1
        assert 1 <= s["summary"]["slots_for_50pct_mass"] <= s["summary"]["slots_for_90pct_mass"] <= 32
        assert 0 < s["summary"]["mass_entropy_nats"] <= np.log(32) + 1e-9
    # the reads returned for the analysis are the ones the forward pass uses
    ctx = test.batch(np.arange(4))[0]
    reads = {}
    with torch.no_grad():
        raw = model.predict_raw(ctx, reads=reads)
        assert torch.equal(raw, model.predict_raw(ctx))
    assert reads["first"].shape == (4, 10, 32) and reads["second"].shape == (4, 32)
    with pytest.raises(LvmError, match="memory_gru"):
        memory_slot_stats(create_model("gru", input_dim=12, context_length=10, normalize="none",
                                       **{**repository_params()["model"], "hidden_dim": 16}), test)


@pytest.mark.parametrize("L, chunk", [(10, 5), (12, 5)])
def test_hierarchy_saliency_shares_sum_to_one(tmp_path, L, chunk):
    write_vectors(tmp_path / "v.npz", [40] * 6, dim=12, seed=1)
    export_windows(load_corpus(tmp_path / "v.npz"), tmp_path / "ctx", L, L - 1,
                   {"train": 0.5, "val": 0.0, "test": 0.5}, seed=1)
    test = WindowDataset(tmp_path / "ctx" / "test.npz")
    torch.manual_seed(0)
    model = create_model("hierarchical_gru", input_dim=12, context_length=L, normalize="none",
                         **{**repository_params()["model"], "hidden_dim": 16, "chunk_size": chunk, "anchor": "none"})
    sal = hierarchy_saliency(model, test, batch_size=5)
    assert sal["windows"] == len(test) and sal["padding"] == (-L) % chunk
    assert sal["n_chunks"] == -(-L // chunk) == len(sal["chunk_share"]) == len(sal["chunk_grad_x_input"])
    assert sal["position_share"].shape == (L,) and sal["position_share"].sum() == pytest.approx(1.0)
    assert sal["chunk_share"].sum() == pytest.approx(1.0)


# --- context-length sweep -----------------------------------------------------------------------

def _exp(name, L, P, copy_cos=0.3, state="success", model_cos=0.4):
    def m(c):
        return {"test": {"cosine_mean": c, "cosine_ci_low": c - 0.02, "cosine_ci_high": c + 0.02, "r_at_5": c / 4,
                         "r_at_5_ci_low": c / 5, "r_at_5_ci_high": c / 3, "n_windows": 100.0, "n_articles": 3.0}}

    ev = {"copy_last": m(copy_cos), "ridge": m(0.35), "gru": m(model_cos + L / 1000),
          "hierarchical_gru": m(model_cos), "memory_gru": m(model_cos - 0.01)}
    data = {"rev": name, "timestamp": f"2026-11-26T13:{L:02d}:00",
            "params": {"params.yaml": {"data": {"data": {"context_length": L},
                                                 "export": {"min_target_position": P}, "train": {"epochs": 5}}}},
            "metrics": {"metrics/evaluate.json": {"data": ev},
                        "metrics/train_baseline.json": {"data": {"train_windows": 500}}}}
    return {"revs": [{"rev": name * 3, "name": name, "data": data, "error": None}], "name": name,
            "executor": {"state": state}}


def _show(exps):
    return [{"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None},
            {"rev": "abc", "name": "issue-7", "data": {}, "error": None, "experiments": exps}]


def test_sweep_script_draws_the_figure_from_exp_show_json(tmp_path):
    from lvm import sweep

    show = _show([_exp("a", 5, 20), _exp("b", 20, 20), _exp("c", 10, 20), _exp("old", 50, 0),
                  _exp("q", 15, 20, state="queued")])
    (tmp_path / "show.json").write_text(json.dumps(show))
    result = sweep.run(str(tmp_path / "show.json"), str(tmp_path / "sweep.png"), str(tmp_path / "sweep.md"))
    assert [r["L"] for r in result["runs"]] == [5, 10, 20]
    img = matplotlib.image.imread(tmp_path / "sweep.png")
    assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 0.01
    md = (tmp_path / "sweep.md").read_text()
    assert "| test cosine | L=5 | L=10 | L=20 |" in md and "| gru | 0.4050 | 0.4100 | **0.4200** |" in md
    assert "old: export.min_target_position 0 != 20" in md and "q: queued" in md
    # different copy-last scores = different targets: refuse to draw a misleading comparison
    bad = copy.deepcopy(show)
    bad[1]["experiments"][1]["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["copy_last"]["test"][
        "cosine_mean"] = 0.31
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LvmError, match="copy_last test cosine_mean differs"):
        sweep.run(str(tmp_path / "bad.json"), str(tmp_path / "x.png"), str(tmp_path / "x.md"))


def test_sweep_table_shows_each_models_paired_difference_to_the_best_baseline(tmp_path):
    from lvm import sweep

    show = _show([_exp("a", 5, 20), _exp("b", 20, 20)])
    for i, exp in enumerate(show[1]["experiments"]):
        ev = exp["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]
        for j, name in enumerate(("gru", "hierarchical_gru", "memory_gru")):
            d = 0.001 * (i + 1) * (j + 1)
            ev[name]["test"]["vs_best_baseline"] = {"cosine_baseline": "ridge", "cosine_diff": d,
                                                    "cosine_diff_ci_low": d - 0.002, "cosine_diff_ci_high": d + 0.002}
    (tmp_path / "show.json").write_text(json.dumps(show))
    sweep.run(str(tmp_path / "show.json"), str(tmp_path / "p.png"), str(tmp_path / "p.md"))
    md = (tmp_path / "p.md").read_text()
    assert "Thread counts differed" not in md  # none recorded: nothing to say
    assert "| test cosine minus the best baseline (ridge at every L, chosen on val)" in md
    assert "| gru | +0.0010 [-0.0010, +0.0030] | +0.0020 [+0.0000, +0.0040] |" in md
    assert "| memory_gru | +0.0030 [+0.0010, +0.0050] | +0.0060 [+0.0040, +0.0080] |" in md
    wide = matplotlib.image.imread(tmp_path / "p.png").shape[1]
    # a -j 2 queue gave one stage of one run more threads: the table says which
    for i, exp in enumerate(show[1]["experiments"]):
        exp["revs"][0]["data"]["metrics"]["metrics/train_baseline.json"]["data"]["threads"] = 1 + i
    (tmp_path / "threads.json").write_text(json.dumps(show))
    sweep.run(str(tmp_path / "threads.json"), str(tmp_path / "t.png"), str(tmp_path / "t.md"))
    assert "Thread counts differed: 1 for most train stages, L=20 train_baseline 2" in (tmp_path / "t.md").read_text()
    # a run without the paired keys (recorded before evaluate wrote them): no such table, two panels
    del show[1]["experiments"][0]["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["gru"]["test"][
        "vs_best_baseline"]
    (tmp_path / "old.json").write_text(json.dumps(show))
    sweep.run(str(tmp_path / "old.json"), str(tmp_path / "o.png"), str(tmp_path / "o.md"))
    assert "minus the best baseline" not in (tmp_path / "o.md").read_text()
    assert matplotlib.image.imread(tmp_path / "o.png").shape[1] < wide


def test_recorded_sweep_gives_the_committed_table(tmp_path):
    from lvm import sweep

    recorded = REPO / sweep.IN_JSON
    assert recorded.is_file(), f"{sweep.IN_JSON}: the recorded sweep is committed; a missing one must fail"
    sweep.run(str(recorded), str(tmp_path / "s.png"), str(tmp_path / "s.md"))
    assert (tmp_path / "s.md").read_text() == (REPO / sweep.OUT_MD).read_text()
