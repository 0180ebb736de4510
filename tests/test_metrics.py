import json

import numpy as np
import pytest

from lvm import metrics as M


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def split():
    """A random split: 12 articles of 25 sentences, windows target a subset."""
    rng = np.random.default_rng(1)
    n_art, per = 12, 25
    bank = _unit(rng, n_art * per, 32)
    bank_article = np.repeat(np.arange(n_art) * 7 + 3, per)  # non-dense ids
    target_index = rng.choice(bank.shape[0], size=150, replace=False)
    return rng, bank, bank_article, target_index


def test_cosine_rowwise():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(M.cosine(a, b), [1.0, 0.0, -1.0], atol=1e-6)


def test_perfect_prediction_is_rank_one(split):
    rng, bank, bank_article, ti = split
    target = bank[ti]
    last = _unit(rng, len(ti), bank.shape[1])
    s = M.evaluate_predictions(
        target * 3.0, target, last, bank_article[ti], bank, bank_article, ti, n_boot=200
    )
    assert s["r_at_1"] == 1.0
    assert s["mrr"] == 1.0
    assert s["contrastive_acc"] == 1.0
    assert s["article_r_at_1"] == 1.0 and s["article_mrr"] == 1.0
    assert s["cosine_mean"] == pytest.approx(1.0, abs=1e-5)
    assert s["mse"] == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_rank():
    # 2-D bank at angles 0, 30, 60, 90 degrees; prediction at 10 degrees.
    # Cosines: 0.985, 0.940, 0.643, 0.174.  Target = 60-degree row -> rank 3.
    ang = np.deg2rad([0.0, 30.0, 60.0, 90.0])
    bank = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    pred = np.array([[np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))]], dtype=np.float32)
    assert M.retrieval_ranks(pred, bank, np.array([2]))[0] == 3
    assert M.retrieval_ranks(pred, bank, np.array([0]))[0] == 1
    assert M.retrieval_ranks(pred, bank, np.array([3]))[0] == 4
    st = M.rank_stats(pred, bank, np.array([2]))
    # Contrastive: of the 3 other rows, only the 90-degree one is farther.
    assert M.contrastive_accuracy(st["n_less"], 4)[0] == pytest.approx(1 / 3)
    # Within-article: articles [0, 1, 1, 1]; among rows 1..3 the target is 2nd.
    wa = M.within_article_ranks(pred, bank, np.array([0, 1, 1, 1]), np.array([2]))
    assert wa[0] == 2


def test_ties_not_counted_in_rank_but_hurt_contrastive():
    bank = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    pred = np.array([[1.0, 0.0]], dtype=np.float32)
    st = M.rank_stats(pred, bank, np.array([1]))  # duplicate of row 0
    assert st["rank"][0] == 1 and st["n_ties"][0] == 1 and st["n_less"][0] == 2
    # An all-zero prediction ties with every row: rank 1 but contrastive 0.
    st0 = M.rank_stats(np.zeros((1, 2), np.float32), bank, np.array([2]))
    assert st0["rank"][0] == 1 and st0["n_ties"][0] == 3
    assert M.contrastive_accuracy(st0["n_less"], 4)[0] == 0.0


def test_chunked_ranks_match_unchunked_reference(split):
    rng, bank, bank_article, ti = split
    pred = _unit(rng, len(ti), bank.shape[1])
    scores = pred @ bank.T  # full reference, fine at this size
    true = scores[np.arange(len(ti)), ti][:, None]
    ref_rank = 1 + (scores > true).sum(1)
    ref_less = (scores < true).sum(1)
    same = bank_article[None, :] == bank_article[ti][:, None]
    ref_art = 1 + ((scores > true) & same).sum(1)
    for chunk in (1, 7, 64, 10_000):
        st = M.rank_stats(pred, bank, ti, bank_article=bank_article, chunk_size=chunk)
        np.testing.assert_array_equal(st["rank"], ref_rank)
        np.testing.assert_array_equal(st["n_less"], ref_less)
        np.testing.assert_array_equal(st["article_rank"], ref_art)
    # Random predictions spread ranks out (sanity that the test has teeth).
    assert ref_rank.min() < 50 and ref_rank.max() > 250


def test_within_article_rank_le_global(split):
    rng, bank, bank_article, ti = split
    pred = bank[ti] + 0.8 * _unit(rng, len(ti), bank.shape[1])
    g = M.retrieval_ranks(pred, bank, ti)
    a = M.within_article_ranks(pred, bank, bank_article, ti)
    assert np.all(a <= g)
    assert np.any(a < g)
    assert a.max() <= 25  # at most the article's size
    np.testing.assert_array_equal(
        M.within_article_ranks(bank[ti], bank, bank_article, ti), np.ones(len(ti))
    )


def test_copy_last_on_constant_sequence():
    rng = np.random.default_rng(3)
    v = _unit(rng, 1, 16)
    seq = np.repeat(v, 10, axis=0)  # one article, all vectors identical
    pred = seq[:-1]  # copy-last predicts the previous (identical) vector
    cos = M.cosine(pred, seq[1:])
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    np.testing.assert_allclose(M.directional(pred, seq[1:], seq[:-1]), 0.0, atol=1e-6)


def test_directional_sign():
    t = np.array([[1.0, 0.0]], np.float32)
    last = np.array([[0.0, 1.0]], np.float32)
    assert M.directional(last, t, last)[0] == pytest.approx(-1.0)  # copying
    assert M.directional(t, t, last)[0] == pytest.approx(1.0)


def test_bootstrap_contains_point_and_is_deterministic():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 30)
    values = rng.normal(size=groups.size) + rng.normal(size=40)[groups]
    lo, hi = M.bootstrap_ci(values, groups, n_boot=500, seed=5)
    assert lo < values.mean() < hi
    assert (lo, hi) == M.bootstrap_ci(values, groups, n_boot=500, seed=5)
    assert (lo, hi) != M.bootstrap_ci(values, groups, n_boot=500, seed=6)


def test_bootstrap_generic_stat_matches_fast_mean_path():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 20, size=400)
    values = rng.normal(size=400)
    fast = M.bootstrap_ci(values, groups, n_boot=300, seed=2)
    slow = M.bootstrap_ci(values, groups, stat=lambda v: float(np.mean(v)), n_boot=300, seed=2)
    np.testing.assert_allclose(fast, slow, rtol=1e-10)
    med = M.bootstrap_ci(values, groups, stat=np.median, n_boot=300, seed=2)
    assert med[0] < np.median(values) < med[1]


def test_bootstrap_single_group_degenerate():
    values = np.array([0.1, 0.5, 0.9, 0.3])
    lo, hi = M.bootstrap_ci(values, np.zeros(4, int), n_boot=100)
    assert lo == pytest.approx(values.mean()) and hi == pytest.approx(values.mean())


def test_bootstrap_wider_for_heterogeneous_groups():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 20)
    noise = rng.normal(scale=0.1, size=groups.size)
    homo = noise
    hetero = noise + rng.normal(scale=1.0, size=30)[groups]  # article effects
    lo1, hi1 = M.bootstrap_ci(homo, groups, n_boot=400)
    lo2, hi2 = M.bootstrap_ci(hetero, groups, n_boot=400)
    assert (hi2 - lo2) > 3 * (hi1 - lo1)
    # Resampling articles, not windows: treating every window as its own group
    # ignores the article effect and must give a much narrower interval.
    lo3, hi3 = M.bootstrap_ci(hetero, np.arange(groups.size), n_boot=400)
    assert (hi2 - lo2) > 2.5 * (hi3 - lo3)


def test_evaluate_predictions_keys_and_types(split):
    rng, bank, bank_article, ti = split
    target = bank[ti]
    pred = target + 1.2 * _unit(rng, len(ti), bank.shape[1])
    last = _unit(rng, len(ti), bank.shape[1])
    s, pw = M.evaluate_predictions(
        pred, target, last, bank_article[ti], bank, bank_article, ti,
        n_boot=200, return_per_window=True,
    )
    assert tuple(s) == M.METRIC_KEYS
    assert all(type(v) is float for v in s.values())
    json.dumps(s)
    assert s["n_windows"] == 150.0 and s["n_articles"] == 12.0
    assert s["cosine_ci_low"] <= s["cosine_mean"] <= s["cosine_ci_high"]
    assert s["r_at_5_ci_low"] <= s["r_at_5"] <= s["r_at_5_ci_high"]
    assert s["directional_ci_low"] <= s["directional_mean"] <= s["directional_ci_high"]
    assert s["r_at_1"] <= s["r_at_5"] <= s["r_at_10"]
    assert s["r_at_1"] <= s["article_r_at_1"]
    for key in ("cosine", "rank", "directional", "article_rank", "contrastive"):
        assert pw[key].shape == (150,)
    assert np.any(pw["article_rank"] < pw["rank"])  # so the next two lines differ
    assert s["mrr"] == pytest.approx(np.mean(1.0 / pw["rank"]), abs=1e-6)
    assert s["article_mrr"] == pytest.approx(np.mean(1.0 / pw["article_rank"]), abs=1e-6)
    assert 0.0 < s["r_at_1"] < 1.0
    # MSE of unit vectors equals (2 - 2 cos) / D.
    assert s["mse"] == pytest.approx((2 - 2 * s["cosine_mean"]) / bank.shape[1], abs=1e-5)
    # Per-window contrastive accuracy equals share of other rows strictly lower.
    assert np.all(pw["contrastive"] <= 1 - (pw["rank"] - 1) / (bank.shape[0] - 1) + 1e-12)
