"""Baselines that need no gradient training.

Every trained model is reported beside these, so a model has to beat "copy
the last sentence" and "average the context" before its numbers mean much.

Interface (shared by all baselines)::

    b.fit(batches)              # iterable of (context [n,L,D], target [n,D]),
                                # optionally (context, target, article [n])
    b.partial_fit(ctx, tgt)     # the same, one chunk at a time ...
    b.finalize()                # ... then solve / pick parameters
    b.predict(context) -> [n,D] float32, L2-normalised
    b.name, b.params()          # for reports (JSON-serialisable)
    b.context_tail              # how many of the last context positions
                                # predict() reads (None = all L); a caller
                                # may gather only context[:, -tail:]

Fitting must only ever see TRAIN windows; nothing here looks at val/test.
Everything works chunk by chunk: a full [n, L, D] float32 context tensor can
be several GB, so callers stream chunks through ``fit`` and ``predict``.
Baselines assume every one of the L context positions holds a real vector
(no padding).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "Baseline",
    "CopyLast",
    "ContextMean",
    "ExpDecayMean",
    "Ridge",
    "SimilarSuccessor",
    "BASELINES",
    "make_baselines",
    "predict_batches",
]

_EPS = 1e-12


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _check_context(context: np.ndarray) -> np.ndarray:
    context = np.asarray(context)
    if context.ndim != 3:
        raise ValueError(f"context must be [n, L, D], got shape {context.shape}")
    return context


def _unpack(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if len(batch) == 2:
        ctx, tgt = batch
        art = None
    elif len(batch) == 3:
        ctx, tgt, art = batch
    else:
        raise ValueError("a batch is (context, target) or (context, target, article)")
    return _check_context(ctx), np.asarray(tgt), art


class Baseline:
    """Base class: no parameters to fit, stateless prediction."""

    name: str = "baseline"
    context_tail: int | None = None

    def partial_fit(self, context, target, article=None) -> "Baseline":
        return self

    def finalize(self) -> "Baseline":
        return self

    def fit(self, batches: Iterable) -> "Baseline":
        for batch in batches:
            self.partial_fit(*_unpack(batch))
        return self.finalize()

    def predict(self, context: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


class CopyLast(Baseline):
    """Predict the last context vector: the "nothing changes" baseline."""

    name = "copy_last"
    context_tail = 1

    def fit(self, batches: Iterable) -> "CopyLast":
        return self  # nothing to fit; do not consume the iterator

    def predict(self, context: np.ndarray) -> np.ndarray:
        return _normalize(_check_context(context)[:, -1, :])


class ContextMean(Baseline):
    """Predict the (normalised) mean of the context: the "topic" baseline."""

    name = "context_mean"

    def fit(self, batches: Iterable) -> "ContextMean":
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        context = _check_context(context)
        return _normalize(context.astype(np.float32, copy=False).mean(axis=1))


DEFAULT_DECAYS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0)


def _decay_weights(decays: Sequence[float], length: int) -> np.ndarray:
    """[G, L] weights decay**(L-1-i), most recent position weight 1, rows sum to 1."""
    decays = np.asarray(decays, dtype=np.float64)
    age = np.arange(length - 1, -1, -1, dtype=np.float64)  # L-1 ... 0
    w = decays[:, None] ** age[None, :]
    return w / w.sum(axis=1, keepdims=True)


class ExpDecayMean(Baseline):
    """Exponentially weighted context mean, decay chosen on train.

    weights_i = decay**(L-1-i) (normalised); decay = 1 is ContextMean and a
    small decay approaches CopyLast, so this interpolates between the two.
    The decay maximises mean cosine to the target over all train windows; all
    grid values are scored in the same pass.  Ties go to the first grid value.
    """

    name = "exp_decay_mean"

    def __init__(self, decays: Sequence[float] = DEFAULT_DECAYS, decay: float | None = None):
        self.decays = tuple(float(d) for d in decays)
        if not self.decays or any(not (0.0 < d <= 1.0) for d in self.decays):
            raise ValueError("decays must be in (0, 1]")
        self.decay = decay  # set by finalize(), or given to skip fitting
        self._cos_sum = np.zeros(len(self.decays), dtype=np.float64)
        self._n = 0
        self._mean_cos: list[float] | None = None

    def partial_fit(self, context, target, article=None) -> "ExpDecayMean":
        context = _check_context(context)
        w = _decay_weights(self.decays, context.shape[1]).astype(np.float32)
        # Sub-chunks bound the [c, G, D] candidate tensor whatever chunk the
        # caller passes in.
        for s in range(0, context.shape[0], 1024):
            ctx = context[s : s + 1024].astype(np.float32, copy=False)
            # [c, G, D]: every candidate prediction for every window at once.
            cand = _normalize(np.einsum("gl,nld->ngd", w, ctx))
            tgt = _normalize(target[s : s + 1024])
            self._cos_sum += np.einsum("ngd,nd->ng", cand, tgt).sum(axis=0, dtype=np.float64)
        self._n += context.shape[0]
        return self

    def finalize(self) -> "ExpDecayMean":
        if self._n == 0:
            raise ValueError("ExpDecayMean.fit got no training windows")
        mean_cos = self._cos_sum / self._n
        self._mean_cos = [float(c) for c in mean_cos]
        self.decay = self.decays[int(np.argmax(mean_cos))]
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        if self.decay is None:
            raise RuntimeError("ExpDecayMean is not fitted")
        context = _check_context(context)
        w = _decay_weights([self.decay], context.shape[1])[0].astype(np.float32)
        return _normalize(np.einsum("l,nld->nd", w, context.astype(np.float32, copy=False)))

    def params(self) -> dict:
        p = {"decay": self.decay, "decay_grid": list(self.decays)}
        if self._mean_cos is not None:
            p["train_mean_cosine"] = {str(d): round(c, 6) for d, c in zip(self.decays, self._mean_cos)}
            p["n_train"] = self._n
        return p


DEFAULT_BLENDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


class SimilarSuccessor(Baseline):
    """What followed the earlier context vector most like the last one, blended with the decayed mean.

    succ = context[j* + 1] with j* = argmax_j cos(context[j], context[-1]) over j = 0 .. L-3, and
    predict normalise(w * succ + (1 - w) * m_decay), m_decay the exponentially weighted context mean
    (ExpDecayMean's). w and the decay are chosen together on train, as ExpDecayMean's decay is.

    The one predictor here built to use a long context: if a document comes back to something it
    said earlier, what followed it then is a guess for what follows now, and a longer context holds
    more earlier passages to come back to. It is the control for "is there anything past 50 vectors
    to use" (docs/experiments.md): if it gains nothing with L, the data has little there to find.
    j = L-2 is left out of the search: its successor is the last vector itself, which the decayed
    mean already weighs most (with it, the nearest neighbour is usually the previous chunk and the
    baseline collapses to copy-last). With L < 3 there is no earlier passage: succ = the last vector.
    w = 0 is ExpDecayMean, so on train this never does worse than it; the blend grid includes 0.
    """

    name = "similar_successor"

    def __init__(self, blends: Sequence[float] = DEFAULT_BLENDS, decays: Sequence[float] = DEFAULT_DECAYS,
                 blend: float | None = None, decay: float | None = None):
        self.blends = tuple(float(b) for b in blends)
        self.decays = tuple(float(d) for d in decays)
        if not self.blends or any(not (0.0 <= b <= 1.0) for b in self.blends):
            raise ValueError("blends must be in [0, 1]")
        if not self.decays or any(not (0.0 < d <= 1.0) for d in self.decays):
            raise ValueError("decays must be in (0, 1]")
        self.blend, self.decay = blend, decay  # set by finalize(), or given to skip fitting
        self._cos_sum = np.zeros((len(self.decays), len(self.blends)), dtype=np.float64)
        self._n = 0
        self._mean_cos: np.ndarray | None = None

    @staticmethod
    def successor(context: np.ndarray) -> np.ndarray:
        """[n, D] unit vectors: context[j* + 1] for the j* <= L-3 most similar to the last vector."""
        context = _check_context(context).astype(np.float32, copy=False)
        n, L, _ = context.shape
        if L < 3:
            return _normalize(context[:, -1])
        unit = _normalize(context)
        sims = np.einsum("nld,nd->nl", unit[:, : L - 2], unit[:, -1])  # j = 0 .. L-3
        best = np.argmax(sims, axis=1)  # the first on a tie
        return unit[np.arange(n), best + 1]

    def _cosines(self, succ, means, target) -> np.ndarray:
        """[n, G, A] cosine of every (decay, blend) prediction to the target, from dot products only:
        |w s + (1 - w) m|^2 = w^2 + (1 - w)^2 + 2 w (1 - w) s.m for unit s and m."""
        w = np.asarray(self.blends, dtype=np.float64)[None, None, :]
        st = np.einsum("nd,nd->n", succ, target).astype(np.float64)[:, None, None]
        mt = np.einsum("ngd,nd->ng", means, target).astype(np.float64)[:, :, None]
        sm = np.einsum("nd,ngd->ng", succ, means).astype(np.float64)[:, :, None]
        norm = np.sqrt(np.maximum(w ** 2 + (1 - w) ** 2 + 2 * w * (1 - w) * sm, _EPS))
        return (w * st + (1 - w) * mt) / norm

    def partial_fit(self, context, target, article=None) -> "SimilarSuccessor":
        context = _check_context(context)
        wdecay = _decay_weights(self.decays, context.shape[1]).astype(np.float32)
        for s in range(0, context.shape[0], 1024):  # bounds the [c, G, D] means, as ExpDecayMean does
            ctx = context[s : s + 1024].astype(np.float32, copy=False)
            means = _normalize(np.einsum("gl,nld->ngd", wdecay, ctx))
            cos = self._cosines(self.successor(ctx), means, _normalize(target[s : s + 1024]))
            self._cos_sum += cos.sum(axis=0)
        self._n += context.shape[0]
        return self

    def finalize(self) -> "SimilarSuccessor":
        if self._n == 0:
            raise ValueError("SimilarSuccessor.fit got no training windows")
        self._mean_cos = self._cos_sum / self._n
        g, a = np.unravel_index(int(np.argmax(self._mean_cos)), self._mean_cos.shape)  # first on a tie
        self.decay, self.blend = self.decays[g], self.blends[a]
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        if self.blend is None or self.decay is None:
            raise RuntimeError("SimilarSuccessor is not fitted")
        context = _check_context(context).astype(np.float32, copy=False)
        w = _decay_weights([self.decay], context.shape[1])[0].astype(np.float32)
        mean = _normalize(np.einsum("l,nld->nd", w, context))
        return _normalize(self.blend * self.successor(context) + (1 - self.blend) * mean)

    def params(self) -> dict:
        p = {"blend": self.blend, "decay": self.decay, "blend_grid": list(self.blends)}
        if self._mean_cos is not None:
            g = self.decays.index(self.decay)
            p["train_mean_cosine_by_blend"] = {str(b): round(float(c), 6) for b, c in zip(self.blends, self._mean_cos[g])}
            p["n_train"] = self._n
        return p


DEFAULT_LAMBDA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


class _GramStats:
    """Sufficient statistics of a least-squares problem with a bias column.

    With x~ = [x, 1]: G = sum x~ x~^T, C = sum x~ y^T, syy = sum ||y||^2.
    Enough to solve ridge and to score any (W, b) by squared error.
    """

    def __init__(self, d_in: int, d_out: int):
        self.G = np.zeros((d_in + 1, d_in + 1), dtype=np.float64)
        self.C = np.zeros((d_in + 1, d_out), dtype=np.float64)
        self.syy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        xa = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float64)
        xa[:, :-1] = x
        xa[:, -1] = 1.0
        y = y.astype(np.float64, copy=False)
        self.G += xa.T @ xa  # numpy uses a symmetric rank-k update here
        self.C += xa.T @ y
        self.syy += float(np.einsum("nd,nd->", y, y))

    def __iadd__(self, other: "_GramStats") -> "_GramStats":
        self.G += other.G
        self.C += other.C
        self.syy += other.syy
        return self

    @property
    def n(self) -> float:
        return float(self.G[-1, -1])

    def solve(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """Ridge with an unpenalised bias: centre, solve (Cxx + lam I) W = Cxy.

        lam is absolute, i.e. it is added to the *summed* (not averaged)
        centred Gram matrix; per window it amounts to lam / n.
        """
        n = self.n
        if n < 1:
            raise ValueError("no training windows")
        sx, sy = self.G[:-1, -1], self.C[-1]
        cxx = self.G[:-1, :-1] - np.outer(sx, sx) / n
        cxy = self.C[:-1] - np.outer(sx, sy) / n
        cxx[np.diag_indices_from(cxx)] += lam
        w = np.linalg.solve(cxx, cxy)
        b = (sy - sx @ w) / n
        return w, b

    def sse(self, w: np.ndarray, b: np.ndarray) -> float:
        """sum ||y - W^T x - b||^2 over the windows behind these statistics."""
        wa = np.vstack([w, b[None, :]])
        return float(self.syy - 2.0 * np.sum(wa * self.C) + np.sum(wa * (self.G @ wa)))


class Ridge(Baseline):
    """Linear map from the last k context vectors (concatenated) to the target.

    Closed form (X^T X + lam I)^{-1} X^T Y in float64 on centred statistics,
    i.e. the bias is fitted but not penalised.  X^T X is accumulated chunk by
    chunk, so memory is O((k D)^2) whatever the number of windows.

    ``lam`` fixed (default 1.0), or ``lambda_grid`` given: then train windows
    are split into a fit part and a held-out part, each lam is fitted on the
    fit part and scored by held-out squared error (computed from held-out
    sufficient statistics, so still one pass), and the final map is refitted
    on all train windows with the best lam.  The held-out part is chosen so
    that it does not depend on chunking: by article id (article % holdout_mod
    == 0) when batches carry article ids, otherwise contiguous blocks of
    ``holdout_block`` windows in stream order (every ``holdout_mod``-th block),
    which keeps most articles whole when windows are stored article by article.
    """

    name = "ridge"

    def __init__(
        self,
        k: int,  # evaluate.ridge_k
        lam: float = 1.0,
        lambda_grid: Sequence[float] | None = None,
        holdout_mod: int = 5,
        holdout_block: int = 512,
    ):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = int(k)
        self.lam = float(lam)
        self.lambda_grid = tuple(float(x) for x in lambda_grid) if lambda_grid else None
        self.holdout_mod = int(holdout_mod)
        self.holdout_block = int(holdout_block)
        self.context_tail = self.k
        self.W: np.ndarray | None = None  # [k*D, D] float32
        self.b: np.ndarray | None = None  # [D] float32
        self._fit_stats: _GramStats | None = None
        self._held_stats: _GramStats | None = None
        self._seen = 0
        self._heldout_mse: dict[str, float] | None = None
        self._n_train = 0

    def _features(self, context: np.ndarray) -> np.ndarray:
        context = _check_context(context)
        n, length, d = context.shape
        if length < self.k:
            raise ValueError(f"context length {length} < ridge k={self.k}")
        # Oldest-to-newest of the last k vectors, flattened: [n, k*D].
        return context[:, -self.k :, :].reshape(n, self.k * d)

    def _holdout_mask(self, n: int, article) -> np.ndarray:
        if article is not None:
            return (np.asarray(article).astype(np.int64) % self.holdout_mod) == 0
        idx = self._seen + np.arange(n)
        return (idx // self.holdout_block) % self.holdout_mod == self.holdout_mod - 1

    def partial_fit(self, context, target, article=None) -> "Ridge":
        x = self._features(context)
        y = np.asarray(target)
        if self._fit_stats is None:
            self._fit_stats = _GramStats(x.shape[1], y.shape[1])
            self._held_stats = _GramStats(x.shape[1], y.shape[1])
        if self.lambda_grid is None:
            self._fit_stats.add(x, y)
        else:
            held = self._holdout_mask(x.shape[0], article)
            self._fit_stats.add(x[~held], y[~held])
            self._held_stats.add(x[held], y[held])
        self._seen += x.shape[0]
        return self

    def finalize(self) -> "Ridge":
        if self._fit_stats is None:
            raise ValueError("Ridge.fit got no training windows")
        total = self._fit_stats
        if self.lambda_grid is not None:
            held = self._held_stats
            if held.n < 1 or self._fit_stats.n < 1:
                raise ValueError("lambda selection needs windows in both the fit and held-out parts")
            mse = {}
            for lam in self.lambda_grid:
                w, b = self._fit_stats.solve(lam)
                mse[lam] = held.sse(w, b) / (held.n * self._fit_stats.C.shape[1])
            self.lam = min(self.lambda_grid, key=lambda lam: mse[lam])  # first on ties
            self._heldout_mse = {str(k): round(v, 8) for k, v in mse.items()}
            total = _GramStats(self._fit_stats.G.shape[0] - 1, self._fit_stats.C.shape[1])
            total += self._fit_stats
            total += held
        w, b = total.solve(self.lam)
        self._n_train = int(round(total.n))
        self.W = w.astype(np.float32)
        self.b = b.astype(np.float32)
        # Drop the O((kD)^2) statistics: the fitted map is all predict() needs.
        self._fit_stats = self._held_stats = None
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        if self.W is None:
            raise RuntimeError("Ridge is not fitted")
        x = self._features(context).astype(np.float32, copy=False)
        return _normalize(x @ self.W + self.b)

    def params(self) -> dict:
        p = {"k": self.k, "lambda": self.lam, "bias": "unpenalised"}
        if self.lambda_grid is not None:
            p["lambda_grid"] = list(self.lambda_grid)
            p["heldout_mse"] = self._heldout_mse
        if self.W is not None:
            p["n_train"] = self._n_train
        return p


BASELINES: dict[str, type[Baseline]] = {
    "copy_last": CopyLast,
    "context_mean": ContextMean,
    "exp_decay_mean": ExpDecayMean,
    "ridge": Ridge,
    "similar_successor": SimilarSuccessor,
}

_CFG_KEYS = {"baselines", "ridge_k", "ridge_lambda", "ridge_lambda_grid", "exp_decay_grid"}


def make_baselines(cfg: dict | None = None) -> dict[str, Baseline]:
    """Unfitted baselines from a config dict, in registry order.

    Keys: ``baselines`` (list of names, default all), ``ridge_k`` (required
    when ridge is built: evaluate.ridge_k in params.yaml), ``ridge_lambda`` (1.0), ``ridge_lambda_grid`` (None: use
    ridge_lambda as is; a list, or "default", picks lambda on a held-out slice
    of TRAIN), ``exp_decay_grid`` (DEFAULT_DECAYS).  Unknown keys raise, so a
    typo cannot silently fall back to a default.
    """
    cfg = dict(cfg or {})
    unknown = set(cfg) - _CFG_KEYS
    if unknown:
        raise ValueError(f"unknown baseline config keys: {sorted(unknown)}")
    names = cfg.get("baselines") or list(BASELINES)
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise ValueError(f"unknown baselines {bad}; known: {list(BASELINES)}")
    grid = cfg.get("ridge_lambda_grid")
    if grid == "default":
        grid = DEFAULT_LAMBDA_GRID
    out: dict[str, Baseline] = {}
    for name in BASELINES:  # registry order, whatever order the config lists
        if name not in names:
            continue
        if name == "ridge":
            if "ridge_k" not in cfg:
                raise ValueError("ridge needs ridge_k (the context vectors it reads: evaluate.ridge_k)")
            out[name] = Ridge(k=cfg["ridge_k"], lam=cfg.get("ridge_lambda", 1.0), lambda_grid=grid)
        elif name == "exp_decay_mean":
            out[name] = ExpDecayMean(decays=cfg.get("exp_decay_grid", DEFAULT_DECAYS))
        elif name == "similar_successor":
            out[name] = SimilarSuccessor(decays=cfg.get("exp_decay_grid", DEFAULT_DECAYS))
        else:
            out[name] = BASELINES[name]()
    return out


def predict_batches(model: Baseline, contexts: Iterable[np.ndarray]) -> np.ndarray:
    """Predict chunk by chunk and stack: [sum n_i, D] float32."""
    parts = [model.predict(c) for c in contexts]
    if not parts:
        raise ValueError("no context chunks given")
    return np.concatenate(parts, axis=0)
