import json

import numpy as np
import pytest

from lvm import metrics as M


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


CTX_L = 3


@pytest.fixture
def split():
    """A random split: 12 articles of 25 sentences, windows target a subset; the context of a window
    is the CTX_L bank rows just before its target."""
    rng = np.random.default_rng(1)
    n_art, per = 12, 25
    bank = _unit(rng, n_art * per, 32)
    bank_article = np.repeat(np.arange(n_art) * 7 + 3, per)  # non-dense ids
    target_index = rng.choice(np.arange(CTX_L, bank.shape[0]), size=150, replace=False)
    return rng, bank, bank_article, target_index, (target_index - CTX_L, CTX_L)


def test_cosine_rowwise():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(M.cosine(a, b), [1.0, 0.0, -1.0], atol=1e-6)


def test_perfect_prediction_is_rank_one(split):
    rng, bank, bank_article, ti, ctx = split
    target = bank[ti]
    last = _unit(rng, len(ti), bank.shape[1])
    s = M.evaluate_predictions(
        target * 3.0, target, last, bank_article[ti], bank, bank_article, ti, n_boot=200, context_rows=ctx
    )
    assert s["r_at_1_full_bank"] == 1.0
    assert s["mrr_full_bank"] == 1.0
    assert s["cand_r_at_1"] == 1.0 and s["cand_mrr"] == 1.0
    assert s["par_mean"] == pytest.approx(1.0, abs=1e-5)  # the truth copies exactly as much as the truth
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
    rng, bank, bank_article, ti, ctx = split
    pred = _unit(rng, len(ti), bank.shape[1])
    scores = pred @ bank.T  # full reference, fine at this size
    true = scores[np.arange(len(ti)), ti][:, None]
    ref_rank = 1 + (scores > true).sum(1)
    ref_less = (scores < true).sum(1)
    same = bank_article[None, :] == bank_article[ti][:, None]
    ref_art = 1 + ((scores > true) & same).sum(1)
    # candidate-only reference: mask the context rows to -inf and count again
    masked = scores.copy()
    masked[np.arange(len(ti))[:, None], ctx[0][:, None] + np.arange(ctx[1])] = -np.inf
    ref_cand = 1 + (masked > true).sum(1)
    ref_ctx_max = scores[np.arange(len(ti))[:, None], ctx[0][:, None] + np.arange(ctx[1])].max(1)
    for chunk in (1, 7, 64, 10_000):
        st = M.rank_stats(pred, bank, ti, bank_article=bank_article, chunk_size=chunk, context_rows=ctx)
        np.testing.assert_array_equal(st["cand_rank"], ref_cand)
        np.testing.assert_allclose(st["ctx_max"], ref_ctx_max, atol=1e-6)  # float32 BLAS rounding
        np.testing.assert_array_equal(st["rank"], ref_rank)
        np.testing.assert_array_equal(st["n_less"], ref_less)
        np.testing.assert_array_equal(st["article_rank"], ref_art)
    # Random predictions spread ranks out (sanity that the test has teeth).
    assert ref_rank.min() < 50 and ref_rank.max() > 250
    assert np.any(ref_cand < ref_rank)  # some context row did beat the target


def test_within_article_rank_le_global(split):
    rng, bank, bank_article, ti, ctx = split
    pred = bank[ti] + 1.5 * _unit(rng, len(ti), bank.shape[1])
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
    rng, bank, bank_article, ti, ctx = split
    target = bank[ti]
    pred = target + 1.2 * _unit(rng, len(ti), bank.shape[1])
    last = _unit(rng, len(ti), bank.shape[1])
    s, pw = M.evaluate_predictions(
        pred, target, last, bank_article[ti], bank, bank_article, ti,
        n_boot=200, return_per_window=True, context_rows=ctx,
    )
    assert tuple(s) == M.METRIC_KEYS
    assert all(type(v) is float for v in s.values())
    json.dumps(s)
    assert s["n_windows"] == 150.0 and s["n_articles"] == 12.0
    assert s["cosine_ci_low"] <= s["cosine_mean"] <= s["cosine_ci_high"]
    assert s["r_at_5_full_bank_ci_low"] <= s["r_at_5_full_bank"] <= s["r_at_5_full_bank_ci_high"]
    assert s["cand_mrr_ci_low"] <= s["cand_mrr"] <= s["cand_mrr_ci_high"]
    assert s["directional_ci_low"] <= s["directional_mean"] <= s["directional_ci_high"]
    assert s["r_at_1_full_bank"] <= s["r_at_5_full_bank"] <= s["r_at_10_full_bank"]
    assert s["cand_r_at_1"] <= s["cand_r_at_5"] <= s["cand_r_at_10"]
    assert s["r_at_1_full_bank"] <= s["article_r_at_1"]
    assert s["r_at_1_full_bank"] <= s["cand_r_at_1"]  # fewer competitors, never a worse rank
    assert np.all(pw["cand_rank"] <= pw["rank"]) and np.all(pw["rank"] - pw["cand_rank"] <= CTX_L)
    for key in ("cosine", "rank", "cand_rank", "par", "directional", "article_rank", "contrastive"):
        assert pw[key].shape == (150,)
    assert np.any(pw["article_rank"] < pw["rank"])  # so the next two lines differ
    assert s["mrr_full_bank"] == pytest.approx(np.mean(1.0 / pw["rank"]), abs=1e-6)
    assert s["cand_mrr"] == pytest.approx(np.mean(1.0 / pw["cand_rank"]), abs=1e-6)
    assert s["article_mrr"] == pytest.approx(np.mean(1.0 / pw["article_rank"]), abs=1e-6)
    assert 0.0 < s["r_at_1_full_bank"] < 1.0
    # MSE of unit vectors equals (2 - 2 cos) / D.
    assert s["mse"] == pytest.approx((2 - 2 * s["cosine_mean"]) / bank.shape[1], abs=1e-5)
    # Per-window contrastive accuracy equals share of other rows strictly lower.
    assert np.all(pw["contrastive"] <= 1 - (pw["rank"] - 1) / (bank.shape[0] - 1) + 1e-12)


# --- candidate-only retrieval and PAR ---------------------------------------------------------------

def _angles(*deg):
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_candidate_rank_ignores_a_context_row_nearer_than_the_target():
    # Rows 0-1 are the window's context (5 and 80 degrees), row 2 the target (20), row 3 another
    # candidate (60); the prediction at 0 degrees is nearer context row 0 than the target.
    bank = _angles(5, 80, 20, 60)
    pred = _angles(0)
    st = M.rank_stats(pred, bank, np.array([2]), context_rows=(np.array([0]), 2))
    assert st["rank"][0] == 2  # full bank: the context row is in the way
    assert st["cand_rank"][0] == 1  # candidates only: it no longer counts
    assert st["ctx_max"][0] == pytest.approx(np.cos(np.deg2rad(5)), abs=1e-6)
    # A non-context row nearer than the target still counts
    bank2 = _angles(50, 80, 20, 5)
    assert M.rank_stats(pred, bank2, np.array([2]), context_rows=(np.array([0]), 2))["cand_rank"][0] == 2
    with pytest.raises(ValueError, match="context_rows out of range"):
        M.rank_stats(pred, bank, np.array([2]), context_rows=(np.array([3]), 2))


def test_par_of_copy_last_is_one_over_the_true_next_max_context_cosine():
    rng = np.random.default_rng(4)
    d, L, m = 16, 4, 120
    shared = np.zeros(d, np.float32)
    shared[0] = 5.0  # a common direction: every cosine > 0, so PAR is defined on every window
    bank = M.l2_normalize(rng.standard_normal((m, d)).astype(np.float32) + shared)
    starts = np.arange(0, m - L, 3)
    ti = starts + L
    last = bank[starts + L - 1]
    bank_article = np.arange(m) // 30
    s, pw = M.evaluate_predictions(last, bank[ti], last, bank_article[ti], bank, bank_article, ti, n_boot=50,
                                   return_per_window=True, context_rows=(starts, L))
    expected = [1.0 / max(float(bank[t] @ bank[s0 + j]) for j in range(L)) for s0, t in zip(starts, ti)]
    assert np.all(np.isfinite(pw["par"]))
    assert s["par_mean"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert s["par_mean"] > 1.0  # copy-last copies more than real text does
    # Copy-last's candidate-only rank no longer fights its own input (cosine 1 on the full bank)
    assert np.all(pw["rank"] >= 2) and np.all(pw["cand_rank"] < pw["rank"])


def test_fewer_than_two_articles_gives_null_intervals(split):
    rng, bank, bank_article, ti, ctx = split
    pred = bank[ti] + 0.5 * _unit(rng, len(ti), bank.shape[1])
    one = np.zeros(len(ti), int)
    s = M.evaluate_predictions(pred, bank[ti], bank[ti - 1], one, bank, bank_article, ti, n_boot=50,
                               context_rows=ctx)
    assert s["n_articles"] == 1.0
    ci_keys = [k for k in M.METRIC_KEYS if "_ci_" in k]
    assert len(ci_keys) == 8 and all(s[k] is None for k in ci_keys)
    assert '"cosine_ci_low": null' in json.dumps(s)
    assert M.paired_difference(pred[:, 0], pred[:, 1], one)["ci_low"] is None
    # two articles are enough for an interval
    two = np.arange(len(ti)) % 2
    s2 = M.evaluate_predictions(pred, bank[ti], bank[ti - 1], two, bank, bank_article, ti, n_boot=50,
                                context_rows=ctx)
    assert all(s2[k] is not None for k in ci_keys)


# --- paired differences ------------------------------------------------------------------------------

def test_a_predictor_equal_to_the_target_beats_any_other(split):
    rng, bank, bank_article, ti, ctx = split
    art = bank_article[ti]
    exact = M.evaluate_predictions(bank[ti], bank[ti], bank[ti - 1], art, bank, bank_article, ti,
                                   n_boot=200, return_per_window=True, context_rows=ctx)[1]
    for other_pred in (bank[ti] + 1.5 * _unit(rng, len(ti), bank.shape[1]), bank[ti - 1]):
        other = M.evaluate_predictions(other_pred, bank[ti], bank[ti - 1], art, bank, bank_article, ti,
                                       n_boot=200, return_per_window=True, context_rows=ctx)[1]
        for key, a, b in (("cosine", exact["cosine"], other["cosine"]),
                          ("rr", 1.0 / exact["cand_rank"], 1.0 / other["cand_rank"])):
            d = M.paired_difference(a, b, art, n_boot=200)
            assert d["ci_low"] > 0, key
            assert M.interval_verdict(d["ci_low"], d["ci_high"]) == "beats"
            assert M.interval_verdict(-d["ci_high"], -d["ci_low"]) == "loses"


def test_identical_predictors_differ_by_exactly_zero():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(10), 15)
    a = rng.normal(size=groups.size) + rng.normal(size=10)[groups]
    d = M.paired_difference(a, a.copy(), groups, n_boot=300)
    assert d == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert M.interval_verdict(d["ci_low"], d["ci_high"]) == "no significant difference"


def test_paired_resampling_keeps_the_pairing():
    # Per-article means vary a lot (easy and hard articles) and equally for both predictors; `a` is
    # better than `b` by a small constant on every window. Resampled separately, the article variance
    # swamps the difference; resampled together it cancels.
    rng = np.random.default_rng(0)
    n_art, per, n_boot = 20, 30, 1000
    groups = np.repeat(np.arange(n_art) * 5 + 1, per)
    effect = rng.normal(scale=0.3, size=n_art)[np.repeat(np.arange(n_art), per)]
    b = effect + rng.normal(scale=0.05, size=groups.size)
    a = b + 0.02 + rng.normal(scale=0.005, size=groups.size)
    paired = M.paired_difference(a, b, groups, n_boot=n_boot)
    assert paired["ci_low"] > 0 and paired["mean"] == pytest.approx(np.mean(a - b))
    # Unpaired: each predictor's mean from its own article draws, then their difference
    _, codes = np.unique(groups, return_inverse=True)
    r = np.random.default_rng(1)

    def boot_means(v):
        sums = np.bincount(codes, weights=v)
        draws = r.integers(0, n_art, size=(n_boot, n_art))
        return sums[draws].sum(1) / (per * n_art)

    lo, hi = np.quantile(boot_means(a) - boot_means(b), [0.025, 0.975])
    assert lo < 0 < hi  # the unpaired interval cannot tell them apart
    # ... and so do the two separate intervals (the old "non-overlapping intervals" rule)
    a_lo, a_hi = M.bootstrap_ci(a, groups, n_boot=n_boot)
    b_lo, b_hi = M.bootstrap_ci(b, groups, n_boot=n_boot)
    assert a_lo < b_hi
