import json

import numpy as np
import pytest

from lvm import baselines as B


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _contexts(rng, n=300, length=12, d=16):
    return _unit(rng.standard_normal((n, length, d)))


def _batches(ctx, tgt, size, art=None):
    for s in range(0, len(ctx), size):
        if art is None:
            yield ctx[s : s + size], tgt[s : s + size]
        else:
            yield ctx[s : s + size], tgt[s : s + size], art[s : s + size]


def _mean_cos(a, b):
    return float(np.mean(np.sum(_unit(a) * _unit(b), axis=1)))


def test_copy_last_and_context_mean():
    rng = np.random.default_rng(0)
    ctx = _contexts(rng, n=20)
    np.testing.assert_allclose(B.CopyLast().predict(ctx), ctx[:, -1], atol=1e-6)
    np.testing.assert_allclose(B.ContextMean().predict(ctx), _unit(ctx.mean(1)), atol=1e-6)
    # Copy-last on a run of identical vectors is exact.
    const = np.repeat(ctx[:1, :1], 12, axis=1)
    assert _mean_cos(B.CopyLast().predict(const), const[:, 0]) == pytest.approx(1.0, abs=1e-6)


def test_predictions_are_unit_norm():
    rng = np.random.default_rng(1)
    ctx = _contexts(rng, n=50)
    tgt = _unit(rng.standard_normal((50, 16)))
    for name, model in B.make_baselines({"ridge_k": 3}).items():
        pred = model.fit(_batches(ctx, tgt, 16)).predict(ctx)
        assert pred.shape == (50, 16) and pred.dtype == np.float32, name
        np.testing.assert_allclose(np.linalg.norm(pred, axis=1), 1.0, atol=1e-5)
        json.dumps(model.params())


def test_exp_decay_picks_one_for_context_mean_target():
    rng = np.random.default_rng(2)
    ctx = _contexts(rng)
    model = B.ExpDecayMean().fit([(ctx, _unit(ctx.mean(1)))])
    assert model.decay == 1.0
    np.testing.assert_allclose(model.predict(ctx), B.ContextMean().predict(ctx), atol=1e-5)


def test_exp_decay_picks_small_decay_for_last_vector_target():
    rng = np.random.default_rng(3)
    ctx = _contexts(rng)
    tgt = _unit(ctx[:, -1] + 0.05 * rng.standard_normal(ctx[:, -1].shape))
    model = B.ExpDecayMean().fit([(ctx, tgt)])
    assert model.decay == 0.5
    # And a target leaning on the recent past picks something in between.
    w = 0.8 ** np.arange(11, -1, -1)
    mid = B.ExpDecayMean().fit([(ctx, _unit(np.einsum("l,nld->nd", w, ctx)))])
    assert mid.decay == 0.8


def test_ridge_recovers_linear_map():
    rng = np.random.default_rng(4)
    n, length, d, k = 2000, 8, 16, 3
    ctx = _contexts(rng, n=n, length=length, d=d)
    A = rng.standard_normal((d, d)).astype(np.float32)
    bias = rng.standard_normal(d).astype(np.float32)
    tgt = ctx[:, -1] @ A.T + bias + 0.01 * rng.standard_normal((n, d)).astype(np.float32)
    model = B.Ridge(k=k, lam=1e-3).fit(_batches(ctx, tgt, 256))
    # The block for the newest position is A^T; older positions get ~0 weight.
    np.testing.assert_allclose(model.W[-d:], A.T, atol=0.02)
    assert np.abs(model.W[:-d]).max() < 0.02
    np.testing.assert_allclose(model.b, bias, atol=0.02)
    test_ctx = _contexts(rng, n=200, length=length, d=d)
    assert _mean_cos(model.predict(test_ctx), test_ctx[:, -1] @ A.T + bias) > 0.999
    # The copy baseline is much worse here: the test has teeth.
    assert _mean_cos(B.CopyLast().predict(test_ctx), test_ctx[:, -1] @ A.T + bias) < 0.5


def test_ridge_lambda_grid_selects_on_heldout_and_is_chunk_invariant():
    rng = np.random.default_rng(5)
    n, d = 1500, 16
    ctx = _contexts(rng, n=n, length=6, d=d)
    A = rng.standard_normal((d, d)).astype(np.float32)
    tgt = ctx[:, -1] @ A.T + 0.01 * rng.standard_normal((n, d)).astype(np.float32)
    grid = [1e-3, 1e2, 1e5]
    fits = [
        B.Ridge(k=2, lambda_grid=grid, holdout_block=100).fit(_batches(ctx, tgt, size))
        for size in (n, 97)
    ]
    assert fits[0].lam == fits[1].lam == 1e-3  # clean linear data: least shrinkage wins
    np.testing.assert_allclose(fits[0].W, fits[1].W, rtol=1e-4, atol=1e-5)
    mse = fits[0].params()["heldout_mse"]
    assert mse["0.001"] < mse["100.0"] < mse["100000.0"]
    # Pure-noise targets: heavy shrinkage wins on held-out windows.
    noise = rng.standard_normal((n, d)).astype(np.float32)
    art = np.repeat(np.arange(n // 10), 10)
    r = B.Ridge(k=4, lambda_grid=[1e-3, 1e5]).fit(_batches(ctx, noise, 200, art))
    assert r.lam == 1e5


def test_chunked_fit_predict_equals_at_once():
    rng = np.random.default_rng(6)
    ctx = _contexts(rng, n=400)
    tgt = _unit(0.6 * ctx[:, -1] + 0.4 * ctx[:, -3] + 0.3 * rng.standard_normal(ctx[:, -1].shape))
    for name in B.BASELINES:
        whole = B.make_baselines({"baselines": [name], "ridge_k": 5})[name].fit([(ctx, tgt)])
        chunked = B.make_baselines({"baselines": [name], "ridge_k": 5})[name].fit(_batches(ctx, tgt, 37))
        if name == "exp_decay_mean":
            assert whole.decay == chunked.decay
        p_whole = whole.predict(ctx)
        p_chunk = B.predict_batches(chunked, (ctx[s : s + 53] for s in range(0, len(ctx), 53)))
        np.testing.assert_allclose(p_whole, p_chunk, atol=1e-5, err_msg=name)
    ridge = B.Ridge(k=5).fit(_batches(ctx, tgt, 37))
    # Ridge on this data beats copy-last (sanity that fitting did something).
    assert _mean_cos(ridge.predict(ctx), tgt) > _mean_cos(B.CopyLast().predict(ctx), tgt) + 0.05


def test_make_baselines_config():
    models = B.make_baselines({"ridge_k": 2, "ridge_lambda": 3.0, "exp_decay_grid": [0.9, 1.0]})
    assert list(models) == list(B.BASELINES)
    assert models["ridge"].params()["k"] == 2 and models["ridge"].params()["lambda"] == 3.0
    assert models["exp_decay_mean"].decays == (0.9, 1.0)
    assert list(B.make_baselines({"baselines": ["ridge", "copy_last"], "ridge_k": 2})) == ["copy_last", "ridge"]
    with pytest.raises(ValueError, match="ridge_k"):  # no default of its own: params.yaml's evaluate.ridge_k
        B.make_baselines({"baselines": ["ridge"]})
    assert list(B.make_baselines({"baselines": ["copy_last"]})) == ["copy_last"]
    with pytest.raises(ValueError):
        B.make_baselines({"ridge_lamda": 1.0})
    with pytest.raises(ValueError):
        B.make_baselines({"baselines": ["nope"]})
    assert B.make_baselines({"ridge_lambda_grid": "default", "ridge_k": 2})["ridge"].lambda_grid == B.DEFAULT_LAMBDA_GRID


def test_unfitted_and_short_context_errors():
    ctx = np.ones((2, 3, 4), np.float32)
    with pytest.raises(RuntimeError):
        B.Ridge(k=5).predict(ctx)
    with pytest.raises(RuntimeError):
        B.ExpDecayMean().predict(ctx)
    with pytest.raises(ValueError):
        B.Ridge(k=5).fit([(ctx, np.ones((2, 4), np.float32))])


def test_similar_successor_finds_the_earlier_passage_and_predicts_what_followed_it():
    """A context that repeats: the last vector equals an earlier one at j, so the successor is j+1."""
    rng = np.random.default_rng(7)
    ctx = _contexts(rng, n=40, length=20)
    j = rng.integers(0, 17, size=40)  # 0 .. L-3
    ctx[:, -1] = ctx[np.arange(40), j]
    succ = B.SimilarSuccessor.successor(ctx)
    np.testing.assert_allclose(succ, ctx[np.arange(40), j + 1], atol=1e-6)
    # j = L-2 is never chosen (its successor is the last vector): an exact copy there is skipped
    ctx[:, -1] = ctx[:, -2]
    best = B.SimilarSuccessor.successor(ctx)
    assert not np.allclose(best, ctx[:, -1], atol=1e-3)
    # a hand-computed argmax over j = 0 .. L-3
    unit = _unit(ctx)
    expect = unit[np.arange(40), np.argmax(np.einsum("nld,nd->nl", unit[:, :18], unit[:, -1]), 1) + 1]
    np.testing.assert_allclose(best, expect, atol=1e-6)


def test_similar_successor_chooses_its_blend_on_train():
    rng = np.random.default_rng(8)
    ctx = _contexts(rng, n=300, length=20)
    # documents that repeat: the target is what followed the most similar earlier passage
    j = rng.integers(0, 17, size=300)
    ctx[:, -1] = _unit(ctx[np.arange(300), j] + 0.1 * rng.standard_normal((300, 16)))
    repeat_target = ctx[np.arange(300), j + 1]
    model = B.SimilarSuccessor().fit([(ctx, repeat_target)])
    assert model.blend == 1.0
    assert _mean_cos(model.predict(ctx), repeat_target) > 0.99
    # nothing repeats: the target is the context mean; the blend goes to 0 and it is ExpDecayMean
    mean_target = _unit(ctx.mean(1))
    model = B.SimilarSuccessor().fit(_batches(ctx, mean_target, 64))
    edm = B.ExpDecayMean().fit([(ctx, mean_target)])
    assert model.blend == 0.0 and model.decay == edm.decay == 1.0
    np.testing.assert_allclose(model.predict(ctx), edm.predict(ctx), atol=1e-5)


def test_similar_successor_train_cosines_are_the_predictions_cosines():
    """The fit scores every (decay, blend) from dot products; they must equal the real predictions'."""
    rng = np.random.default_rng(9)
    ctx = _contexts(rng, n=120, length=10)
    tgt = _unit(0.5 * ctx[:, -1] + 0.5 * ctx[:, 3] + 0.4 * rng.standard_normal((120, 16)))
    model = B.SimilarSuccessor(blends=(0.0, 0.3, 0.7, 1.0), decays=(0.5, 0.9)).fit([(ctx, tgt)])
    for g, d in enumerate(model.decays):
        for a, w in enumerate(model.blends):
            fixed = B.SimilarSuccessor(blend=w, decay=d)
            assert model._mean_cos[g, a] == pytest.approx(_mean_cos(fixed.predict(ctx), tgt), abs=1e-5)
    with pytest.raises(RuntimeError):
        B.SimilarSuccessor().predict(ctx)
    with pytest.raises(ValueError):
        B.SimilarSuccessor(blends=(1.5,))
    short = ctx[:, -2:]  # L = 2: no earlier passage, the successor is the last vector
    np.testing.assert_allclose(B.SimilarSuccessor.successor(short), ctx[:, -1], atol=1e-6)
