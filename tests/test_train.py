"""Training loop: determinism, checkpoints without pickle, resume, losses, precision."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_PARAMS, SIMPLE_TRAINING, merge, write_vectors
from lvm import LvmError
from lvm.config import validate
from lvm.data import WindowDataset, export_windows, load_corpus
from lvm.checkpoints import load_checkpoint, load_model, predict
from lvm.losses import compute_loss
from lvm.training import run

# tiny sizes
TINY_SIZES = {
    "data": {"context_length": 10},
    "model": {"hidden_dim": 16, "chunk_size": 5, "memory_slots": 32, "transformer_ff": 32,
              "transformer_heads": 2, "amn_hidden": 16},
    "export": {"overlap": 5},
    "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "threads": 1},
    "evaluate": {"n_boot": 50},
}
TINY = merge(merge(REPO_PARAMS, SIMPLE_TRAINING), TINY_SIZES)  # a whole params file


def tiny_params(**train):
    return validate(merge(TINY, {"train": train}))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_vectors(root / "vectors.npz", [30] * 14, dim=12, seed=3)
    corpus = load_corpus(root / "vectors.npz")
    export_windows(corpus, root / "ctx", 10, 5, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    return root / "ctx"


def train(tmp_path, data_dir, name, model="gru", **train_cfg):
    out = tmp_path / name
    metrics = run(tiny_params(**train_cfg), model, "exp", data_dir=str(data_dir), models_dir=str(out / "models"),
                  metrics_dir=str(out / "metrics"), live_dir=str(out / "live"), progress=False)
    return metrics, out


def test_same_params_give_identical_metrics_and_weights(tmp_path, data_dir):
    m1, o1 = train(tmp_path, data_dir, "a")
    m2, o2 = train(tmp_path, data_dir, "b")
    keys = ("best_val_loss", "best_val_cosine", "final_val_cosine", "best_epoch", "params")
    assert {k: m1[k] for k in keys} == {k: m2[k] for k in keys}
    s1 = load_checkpoint(o1 / "models/exp/final.pt")["state_dict"]
    s2 = load_checkpoint(o2 / "models/exp/final.pt")["state_dict"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # every output of the stage byte-identical (no wall time in the checkpoints, metrics or curves),
    # so a rerun leaves `dvc status` and `git status` clean
    outs = ["models/exp/best.pt", "models/exp/final.pt", "metrics/train_exp.json",
            *sorted(str(f.relative_to(o1)) for f in (o1 / "live/exp/plots").rglob("*") if f.is_file())]
    assert len(outs) > 3
    assert [f for f in outs if (o1 / f).read_bytes() != (o2 / f).read_bytes()] == []
    m3, _ = train(tmp_path, data_dir, "c", seed=7)
    assert m3["best_val_loss"] != m1["best_val_loss"]


def test_validation_at_a_context_share_scores_every_val_target_once_with_that_much_context(tmp_path, data_dir):
    """train.val_min_context_share = 0.5 at L = 10: m = 5, windows at stride 6, each scored at its
    positions with >= 5 vectors of context. Computed here from scratch, one target at a time from its
    own context (the chunk vectors since its window's start), best_val_cosine is the mean over every
    val target at article position >= 5 up to the last window's end."""
    metrics, out = train(tmp_path, data_dir, "share", val_min_context_share=0.5, ema=0.0)
    model = load_model(out / "models/exp/best.pt")
    val = WindowDataset(data_dir / "val.npz")
    L, m = val.context_length, 5
    assert metrics["val_min_context"] == m
    cosines, n_windows = [], 0
    articles = val.article_indices
    for a in np.unique(articles):
        rows = np.flatnonzero(articles == a)
        vecs = val.vectors_np[rows]
        starts = list(range(0, len(rows) - L, L - m + 1))  # windows whose target is inside the article
        n_windows += len(starts)
        for q in range(m, starts[-1] + L + 1):  # every target position once
            s = (q - m) // (L - m + 1) * (L - m + 1)
            with torch.no_grad():
                pred = model(torch.from_numpy(vecs[s:q][None]).float())
            cosines.append(F.cosine_similarity(pred.float(), torch.from_numpy(vecs[q][None]).float()).item())
    assert metrics["val_windows"] == n_windows
    assert metrics["best_val_cosine"] == pytest.approx(float(np.mean(cosines)), abs=1e-5)
    # the exported windows (share 0) score one target per window: another mean, other windows
    whole, _ = train(tmp_path, data_dir, "whole", ema=0.0)
    assert whole["val_min_context"] == 0 and whole["val_windows"] == len(val)
    with pytest.raises(LvmError, match="train.val_min_context_share"):
        tiny_params(val_min_context_share=1.5)


def test_checkpoint_is_pickle_free_and_rebuilds_the_model(tmp_path, data_dir):
    metrics, out = train(tmp_path, data_dir, "ck", model="hierarchical_gru")
    ckpt = torch.load(out / "models/exp/best.pt", weights_only=True)
    assert ckpt["model_name"] == "hierarchical_gru"
    assert ckpt["epoch"] == metrics["best_epoch"]
    assert ckpt["metrics"]["val_cosine"] == pytest.approx(metrics["best_val_cosine"], abs=1e-6)
    model = load_model(out / "models/exp/best.pt")
    val = WindowDataset(data_dir / "val.npz")
    pred = predict(model, val, batch_size=4)
    assert pred.shape == (len(val), val.dim)
    assert np.allclose(np.linalg.norm(pred, axis=1), 1, atol=1e-5)
    cos = (pred * val.vectors_np[val.targets_rows()]).sum(1).mean()
    assert cos == pytest.approx(metrics["best_val_cosine"], abs=1e-4)
    written = (out / "metrics/train_exp.json").read_text()
    assert '"best_val_cosine"' in written and "seconds" not in written and "_per_s" not in written
    assert {"train_seconds", "seconds_to_beat_start", "train_seq_per_s"} <= set(metrics["timings"])  # returned, logged


def test_resume_continues_to_the_same_result_as_one_run(tmp_path, data_dir):
    straight, _ = train(tmp_path, data_dir, "straight", epochs=4)
    first, out = train(tmp_path, data_dir, "resumed", epochs=2)
    assert first["epochs"] == 2
    resumed = run(tiny_params(epochs=4, resume=True), "gru", "exp", data_dir=str(data_dir),
                  models_dir=str(out / "models"), metrics_dir=str(out / "metrics"),
                  live_dir=str(out / "live"), progress=False)
    assert resumed["epochs"] == 4
    assert resumed["best_val_loss"] == pytest.approx(straight["best_val_loss"], rel=1e-6)
    assert resumed["final_val_cosine"] == pytest.approx(straight["final_val_cosine"], abs=1e-6)
    rows = (out / "live/exp/plots/metrics/val/loss.tsv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header + one row per epoch, across both runs


@pytest.mark.parametrize("model", ["lstm", "transformer", "amn", "memory_gru"])
def test_every_model_trains_through_the_same_loop(tmp_path, data_dir, model):
    metrics, out = train(tmp_path, data_dir, model, model=model, epochs=1, precision="bf16")
    assert metrics["model"] == model and np.isfinite(metrics["best_val_loss"])
    assert (out / "models/exp/final.pt").is_file()


@pytest.mark.parametrize("kind", ["mse", "cosine", "infonce", "mse+infonce", "cosine+infonce"])
def test_losses_are_lower_for_the_right_answer(kind):
    g = torch.Generator().manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    wrong = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    right = compute_loss(target, target, target, kind, tau=0.07, weight=0.05)
    bad = compute_loss(wrong, wrong, target, kind, tau=0.07, weight=0.05)
    assert torch.isfinite(right) and right < bad


@pytest.mark.parametrize("model", ["gru", "lstm", "transformer", "hierarchical_gru", "memory_gru"])
def test_bf16_context_table_changes_nothing_under_bf16_autocast(tmp_path, data_dir, model):
    # autocast rounds these models' context inputs to bf16 before any use, so gathering them from a
    # bf16 table must give bit-identical training; a model that used fp32 context values would differ
    # (hierarchical_gru's nn.GRUs run in their input's dtype on CPU, so it opts out: BF16_CONTEXTS)
    m1, o1 = train(tmp_path, data_dir, "f32", model=model, precision="bf16", bf16_contexts=False)
    m2, o2 = train(tmp_path, data_dir, "b16", model=model, precision="bf16", bf16_contexts=True)
    assert m1["best_val_cosine"] == m2["best_val_cosine"]
    s1 = load_checkpoint(o1 / "models/exp/final.pt")["state_dict"]
    s2 = load_checkpoint(o2 / "models/exp/final.pt")["state_dict"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_bf16_context_table_halves_the_gathered_bytes(data_dir):
    ds = WindowDataset(data_dir / "train.npz")
    half = ds.with_context_dtype(torch.bfloat16)
    ctx, tgt = ds.batch([0, 2])
    ctx16, tgt16 = half.batch([0, 2])
    assert ctx16.dtype == torch.bfloat16 and tgt16.dtype == torch.float32
    assert torch.equal(ctx16, ctx.to(torch.bfloat16)) and torch.equal(tgt16, tgt)
    assert ds.batch([0])[0].dtype == torch.float32  # the original dataset is untouched
    mapped = WindowDataset(data_dir / "train.npz", mmap=True)
    assert mapped.with_context_dtype(torch.bfloat16) is mapped  # no in-memory copy of a memory map


def test_bf16_context_table_barely_moves_amn(tmp_path, data_dir):
    # amn averages its raw context (in fp32): bf16-rounded inputs change it by rounding noise only
    m1, _ = train(tmp_path, data_dir, "f32", model="amn", precision="bf16", bf16_contexts=False)
    m2, _ = train(tmp_path, data_dir, "b16", model="amn", precision="bf16", bf16_contexts=True)
    assert m1["best_val_cosine"] != m2["best_val_cosine"]
    assert abs(m1["best_val_cosine"] - m2["best_val_cosine"]) < 1e-3


# --- train.targets all, model.anchor, train.normalize, train.patience --------------------------

def test_every_position_training_counts_targets_and_learns(tmp_path, data_dir):
    last, _ = train(tmp_path, data_dir, "last", epochs=2)
    every, _ = train(tmp_path, data_dir, "all", epochs=2, targets="all", min_context=3)
    assert every["targets"] == "all" and last["targets"] == "last"
    # each window scores L - min_context + 1 positions: 8x the targets of last-only training
    assert every["train_targets_seen"] == 8 * last["train_targets_seen"]
    assert every["target_passes"] == pytest.approx(every["train_targets_seen"] / every["unique_train_targets"], abs=1e-3)
    assert every["best_val_loss"] != last["best_val_loss"]


def test_amn_refuses_every_position_training(tmp_path, data_dir):
    from lvm import LvmError
    with pytest.raises(LvmError, match="train.targets"):
        train(tmp_path, data_dir, "amn", model="amn", targets="all")


def test_anchored_model_starts_at_its_baseline_with_train_statistics(tmp_path, data_dir):
    from lvm.baselines import ExpDecayMean
    from lvm.models.base import fit_normalizer
    from lvm.training import fit_anchor_decay
    # lr 0: the checkpoint is the fresh model, so it must predict exactly the baseline fitted on train
    metrics, out = train(tmp_path, data_dir, "anch", epochs=1, lr=1e-12, normalize="robust")
    p = tiny_params()
    assert metrics["anchor"] == "none"
    p["model"]["anchor"] = "decay_mean"
    p["train"].update(epochs=1, lr=1e-12, normalize="robust", targets="all")
    anchored = run(p, "gru", "exp", data_dir=str(data_dir), models_dir=str(out / "m2"), metrics_dir=str(out / "x2"),
                   live_dir=str(out / "l2"), progress=False)
    model = load_model(out / "m2/exp/best.pt")
    tr, val = WindowDataset(data_dir / "train.npz"), WindowDataset(data_dir / "val.npz")
    decay = fit_anchor_decay(tr)
    assert float(model.anchor_decay) == pytest.approx(decay)
    expected = np.concatenate([ExpDecayMean(decay=decay).predict(c.numpy()) for _, c, _ in val.batches(64)])
    np.testing.assert_allclose(predict(model, val), expected, atol=1e-4)
    # before training, the anchored model scores exactly the baseline's val cosine
    baseline_cos = float((expected * val.vectors_np[val.targets_rows()]).sum(1).mean())
    assert anchored["start_val_cosine"] == pytest.approx(baseline_cos, abs=1e-5)
    # the normaliser is the train split's, not val's or test's (and it travelled in the checkpoint)
    shift, scale = fit_normalizer(tr.vectors_np, "robust")
    torch.testing.assert_close(model.norm_shift, shift)
    torch.testing.assert_close(model.norm_scale, scale)
    everything = np.concatenate([WindowDataset(data_dir / f"{s}.npz").vectors_np for s in ("train", "val", "test")])
    assert not torch.allclose(model.norm_shift, fit_normalizer(everything, "robust")[0])


def test_patience_stops_early_and_keeps_the_best(tmp_path, data_dir):
    # lr so small that val loss cannot improve after the first epoch by more than noise... use a huge
    # lr instead: the loss gets worse, so with patience 1 training stops after epoch 2 (ema 0: the
    # validated weights are the diverging ones, not an average that moves slowly away from the start)
    metrics, out = train(tmp_path, data_dir, "pat", epochs=6, lr=5.0, patience=1, ema=0.0)
    assert metrics["epochs"] < 6
    assert metrics["epochs"] - metrics["best_epoch"] == 1


def test_infonce_ignores_near_duplicate_negatives():
    from lvm.losses import near_duplicates
    rows = torch.tensor([10, 11, 20, 10])
    articles = torch.tensor([1, 1, 1, 2])
    near = near_duplicates(rows, articles)
    assert near.tolist() == [[False, True, False, False], [True, False, False, False],
                             [False, False, False, False], [False, False, False, False]]
    # a batch where the second target is a near-duplicate of the first: masked, the loss of a
    # prediction equal to the first target no longer counts the duplicate as a rival
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t[1] = t[0]
    masked = compute_loss(t, t, t, "infonce", tau=0.07, weight=0.05, rows=rows, articles=articles)
    unmasked = compute_loss(t, t, t, "infonce", tau=0.07, weight=0.05)
    assert masked < unmasked - 0.1


def test_near_duplicates_is_the_dense_definition():
    from lvm.losses import near_duplicates
    g = torch.Generator().manual_seed(0)
    for n, span in ((1, 5), (7, 4), (300, 60), (3200, 25000)):
        rows = torch.randint(0, span, (n,), generator=g)  # repeats, neighbours and article edges
        articles = rows // 17
        dense = (articles[:, None] == articles[None, :]) & ((rows[:, None] - rows[None, :]).abs() <= 2)
        assert torch.equal(near_duplicates(rows, articles), dense.fill_diagonal_(False)), n
        assert torch.equal(near_duplicates(rows, articles, radius=0),
                           ((articles[:, None] == articles[None, :]) & (rows[:, None] == rows[None, :])).fill_diagonal_(False))


def test_article_fraction_trains_on_a_seeded_share_of_train_articles(tmp_path, data_dir):
    full, _ = train(tmp_path, data_dir, "full", epochs=1)
    half, _ = train(tmp_path, data_dir, "half", epochs=1, article_fraction=0.5)
    assert half["train_articles"] == round(full["train_articles"] / 2)
    assert half["unique_train_targets"] < full["unique_train_targets"]
    assert half["val_windows"] == full["val_windows"]
    tr = WindowDataset(data_dir / "train.npz").restrided(1)
    sub = tr.subset_articles(0.5, seed=42)
    kept = set(np.unique(sub.article_indices[sub.starts]).tolist())
    assert kept == set(sub.kept_articles.tolist())
    assert set(np.unique(sub.restrided(1).window_articles()).tolist()) == kept  # restriding keeps the subset
    assert np.isin(sub.article_indices, sub.kept_articles).sum() == len(sub.kept_rows())


def test_one_ahead_hands_out_every_batch_in_order_on_the_device():
    from lvm.training import one_ahead

    batches = [([i], torch.full((2, 3, 4), float(i)), torch.full((2, 4), float(-i))) for i in range(5)]
    seen, sent = [], []

    def source():  # records how far the prefetch has read when each batch is handed out
        for b in batches:
            sent.append(b[0][0])
            yield b

    for idx, ctx, tgt in one_ahead(source(), torch.device("cpu")):
        seen.append(idx[0])
        assert ctx.device.type == "cpu" and ctx[0, 0, 0].item() == idx[0] and tgt[0, 0].item() == -idx[0]
        # batch k is handed out only after batch k+1 was gathered (the last one has nothing behind it)
        assert sent[-1] == min(idx[0] + 1, 4)
    assert seen == [0, 1, 2, 3, 4]
    assert list(one_ahead(iter([]), torch.device("cpu"))) == []


def test_optimizer_is_fused_on_cuda_only():
    from lvm.training import make_optimizer

    cfg = {"lr": 1e-3, "weight_decay": 0.01}
    opt = make_optimizer(torch.nn.Linear(3, 3), cfg, torch.device("cpu"))
    assert not opt.defaults.get("fused")
    if torch.cuda.is_available():
        gpu = make_optimizer(torch.nn.Linear(3, 3).cuda(), cfg, torch.device("cuda"))
        assert gpu.defaults["fused"] is True


def test_a_killed_runs_curve_folder_is_removed_by_the_next_run(tmp_path, data_dir):
    # DVCLive writes into dvclive/.<exp>.<random>.tmp until the run publishes; a SIGKILL leaves it behind
    stale = tmp_path / "live" / ".exp.k1ll3d.tmp"
    (stale / "plots").mkdir(parents=True)
    other = tmp_path / "live" / ".other.k1ll3d.tmp"  # another experiment's: not this run's to remove
    other.mkdir()
    run(tiny_params(epochs=1), "gru", "exp", data_dir=str(data_dir), models_dir=str(tmp_path / "models"),
        metrics_dir=str(tmp_path / "metrics"), live_dir=str(tmp_path / "live"), progress=False)
    assert not stale.exists() and other.exists() and (tmp_path / "live" / "exp").is_dir()
