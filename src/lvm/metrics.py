"""Evaluation metrics for next-concept-vector prediction.

All functions are pure numpy.  The inputs for one predictor on one split are

- ``pred``   [n, D]  predicted next vectors (L2-normalised here, so a model
  may hand back raw outputs);
- ``target`` [n, D]  the true next vectors;
- ``last``   [n, D]  the last context vector of each window (copy baseline);
- ``article`` [n] int  article id of each window, the unit of resampling for
  confidence intervals (windows from one article overlap and are correlated,
  so resampling windows would give intervals that are far too narrow);
- ``bank``   [M, D]  retrieval bank (all vectors of the split),
  ``bank_article`` [M] int, and ``target_index`` [n] int: the row of each
  target inside the bank.  Knowing the row (rather than searching for the
  vector) keeps the rank well defined when the bank holds duplicates;
- ``context_rows`` = ``(starts [n] int, L)``: window i's context is bank rows
  ``starts[i] .. starts[i] + L - 1`` (the split's vectors are the bank, so a
  window's context is a contiguous block of it).  Used for the candidate-only
  rank (the next chunk is never one of its own context chunks, so those rows
  are not competitors) and for PAR (how much a prediction copies its context).

Rank convention (used everywhere below)::

    rank = 1 + #{bank rows j : score_j > score_true}

with ``score = cosine(pred, bank_row)`` computed in one matrix product, so the
true row's own score is bit-identical to itself.  Bank rows that *tie* with the
true row are not counted against it; the number of such rows is reported per
window (``n_ties``) so a caller can see when ties occur (in practice only for
exact duplicate sentences in the bank, or an all-zero prediction, which scores
0 against every row).  The contrastive accuracy counts only rows that are
*strictly* farther than the true row, so ties do lower it: an all-zero
prediction gets rank 1 but contrastive accuracy 0, and the two numbers side by
side expose it.

The *candidate-only* rank (``cand_rank``) is the same count with the window's
own L context rows left out of the bank (the target row stays).  On the full
bank copy-last can never reach rank 1 (its prediction *is* a bank row, at
cosine 1), which says nothing about how well it predicts.

Intervals need at least :data:`MIN_CI_ARTICLES` articles: with a single
article every resample is that article, so a percentile bootstrap returns a
zero-width "interval" that looks like certainty.  Below the minimum the
summaries hold ``None`` for every interval end (JSON ``null``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "l2_normalize",
    "cosine",
    "bootstrap_ci",
    "rank_stats",
    "retrieval_ranks",
    "within_article_ranks",
    "contrastive_accuracy",
    "directional",
    "per_window_metrics",
    "evaluate_predictions",
    "group_ci",
    "paired_difference",
    "interval_verdict",
    "context_max_cosine",
    "METRIC_KEYS",
    "MIN_CI_ARTICLES",
]

# Exact key set of ``evaluate_predictions``; fixed so reports stay comparable.
METRIC_KEYS = (
    "n_windows",
    "n_articles",
    "cosine_mean",
    "cosine_median",
    "cosine_ci_low",
    "cosine_ci_high",
    "mse",
    # candidate-only retrieval: bank minus the window's own context rows
    "cand_r_at_1",
    "cand_r_at_5",
    "cand_r_at_10",
    "cand_mrr",
    "cand_mrr_ci_low",
    "cand_mrr_ci_high",
    # the whole split as bank, context rows included (copy-last's input competes)
    "r_at_1_full_bank",
    "r_at_5_full_bank",
    "r_at_10_full_bank",
    "mrr_full_bank",
    "r_at_5_full_bank_ci_low",
    "r_at_5_full_bank_ci_high",
    "article_r_at_1",
    "article_mrr",
    "contrastive_acc",
    "par_mean",
    "directional_mean",
    "directional_ci_low",
    "directional_ci_high",
)

# Fewest articles a bootstrap interval is reported for.  One article gives a
# zero-width interval by construction; 2-4 give intervals that are themselves
# very noisy (README: "unreliable below ~5"), but at least not degenerate.
MIN_CI_ARTICLES = 2

_EPS = 1e-12


def _as_float(x: np.ndarray) -> np.ndarray:
    """Float array, keeping float64 if given, otherwise float32 (BLAS speed)."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        return x
    return x.astype(np.float32, copy=False)


def l2_normalize(x: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """Rowwise L2 normalisation; all-zero rows stay zero (no NaNs)."""
    x = _as_float(x)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rowwise cosine similarity of two [n, D] arrays -> [n]."""
    a = l2_normalize(a)
    b = l2_normalize(b)
    return np.einsum("nd,nd->n", a, b)


# --------------------------------------------------------------------------
# Bootstrap over groups (articles)
# --------------------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray,
    groups: np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval that resamples *groups* with replacement.

    Each replicate draws G group ids (G = number of distinct groups) with
    replacement and pools all values of the drawn groups (a group drawn twice
    contributes its values twice); ``stat`` is applied to the pooled values.
    Returns the (alpha/2, 1-alpha/2) quantiles of the replicate statistics.

    ``stat is np.mean`` takes a vectorised path (group sums and sizes times a
    [n_boot, G] draw-count matrix); any other statistic loops over replicates.
    Both paths draw the same groups for the same seed, so they agree.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if values.shape != groups.shape:
        raise ValueError(f"values {values.shape} and groups {groups.shape} differ")
    if values.size == 0:
        return float("nan"), float("nan")

    # Dense group codes 0..G-1, values sorted by group so each group is a slice.
    _, codes = np.unique(groups, return_inverse=True)
    n_groups = int(codes.max()) + 1
    order = np.argsort(codes, kind="stable")
    sorted_vals = values[order]
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))

    if stat is np.mean:
        boot = _replicate_means(draws, np.bincount(codes, weights=values, minlength=n_groups), sizes)
    else:
        boot = np.empty(n_boot, dtype=np.float64)
        for b in range(n_boot):
            g = draws[b]
            # Concatenated index ranges of the drawn groups, without a Python
            # loop over groups: repeat each start by its size, add offsets.
            lens = sizes[g]
            total = int(lens.sum())
            offsets = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
            idx = np.repeat(starts[g], lens) + offsets
            boot[b] = stat(sorted_vals[idx])

    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _replicate_means(draws: np.ndarray, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean of the pooled values of each replicate's drawn groups, from the groups' sums and sizes."""
    n_boot, n_groups = draws.shape
    # counts[b, g] = how often group g was drawn in replicate b.
    flat = draws + (np.arange(n_boot) * n_groups)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_boot * n_groups)
    counts = counts.reshape(n_boot, n_groups).astype(np.float64)
    return (counts @ sums) / (counts @ sizes)


def group_sums_ci(
    sums: np.ndarray,
    sizes: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """:func:`group_ci` from each group's sum of values and number of values (groups in the order of
    their sorted ids, as np.unique gives them): the same draws and the same interval as the per-value
    call, for callers that keep only per-article sums (lvm.crossval pools folds that way)."""
    sums = np.asarray(sums, dtype=np.float64)
    sizes = np.asarray(sizes)
    if sums.size < MIN_CI_ARTICLES:
        return None, None
    draws = np.random.default_rng(seed).integers(0, sums.size, size=(n_boot, sums.size))
    lo, hi = np.quantile(_replicate_means(draws, sums, sizes), [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def group_ci(
    values: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """:func:`bootstrap_ci` of the mean, or ``(None, None)`` with fewer than
    :data:`MIN_CI_ARTICLES` groups (a zero-width interval would mislead)."""
    if np.unique(np.asarray(groups)).size < MIN_CI_ARTICLES:
        return None, None
    return bootstrap_ci(values, groups, n_boot=n_boot, alpha=alpha, seed=seed)


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float | None]:
    """Mean of the per-window difference ``a - b`` with an article bootstrap.

    ``a`` and ``b`` are per-window scores of two predictors on the *same*
    windows.  Bootstrapping the difference window by window means every
    resample draws the same articles for both predictors, so what the two
    share (an easy article is easy for both) cancels; two separate intervals
    carry that shared article variance twice and overlap although one
    predictor is better on nearly every article.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same shape, got {a.shape} and {b.shape}")
    diff = a - b
    lo, hi = group_ci(diff, groups, n_boot=n_boot, alpha=alpha, seed=seed)
    return {"mean": float(np.mean(diff)), "ci_low": lo, "ci_high": hi}


def interval_verdict(lo: float | None, hi: float | None) -> str:
    """"beats" / "loses" only when the whole interval of a difference is on
    one side of 0; "no significant difference" when it holds 0."""
    if lo is None or hi is None:
        return "no interval"
    if lo > 0:
        return "beats"
    if hi < 0:
        return "loses"
    return "no significant difference"


# --------------------------------------------------------------------------
# Retrieval ranks (chunked)
# --------------------------------------------------------------------------


def rank_stats(
    pred: np.ndarray,
    bank: np.ndarray,
    target_index: np.ndarray,
    bank_article: np.ndarray | None = None,
    chunk_size: int = 1024,
    normalized: bool = False,
    context_rows: tuple[np.ndarray, int] | None = None,
) -> dict[str, np.ndarray]:
    """One chunked pass over the bank computing everything rank-related.

    Memory is O(chunk_size * M): the [n, M] score matrix never exists at once.

    Returns per-window int64 arrays:
      ``rank``    1 + #(bank rows with score > true score), in [1, M];
      ``n_less``  #(bank rows with score < true score) (true row excluded);
      ``n_ties``  #(other bank rows with score == true score);
      ``article_rank`` (only if ``bank_article`` is given) the same rank but
      among bank rows of the target's own article, ``bank_article[target_index]``.
    With ``context_rows=(starts, L)`` also:
      ``cand_rank`` the rank among the bank minus rows ``starts[i] ..
      starts[i]+L-1`` (window i's own context; the target row always stays);
      ``ctx_max`` (float) the highest score of the prediction to any of those
      context rows (the numerator of PAR).
    """
    if not normalized:
        pred = l2_normalize(pred)
        bank = l2_normalize(bank)
    dtype = np.result_type(pred.dtype, bank.dtype)
    pred = pred.astype(dtype, copy=False)
    bank = bank.astype(dtype, copy=False)
    target_index = np.asarray(target_index, dtype=np.int64)
    n, m = pred.shape[0], bank.shape[0]
    if target_index.shape != (n,):
        raise ValueError(f"target_index must have shape ({n},), got {target_index.shape}")
    if n and (target_index.min() < 0 or target_index.max() >= m):
        raise ValueError("target_index out of range of the bank")
    if context_rows is not None:
        ctx_starts = np.asarray(context_rows[0], dtype=np.int64)
        ctx_len = int(context_rows[1])
        if ctx_starts.shape != (n,) or ctx_len < 1:
            raise ValueError(f"context_rows must be (starts of shape ({n},), L >= 1)")
        if n and (ctx_starts.min() < 0 or ctx_starts.max() + ctx_len > m):
            raise ValueError("context_rows out of range of the bank")
        ctx_offsets = np.arange(ctx_len)
        cand_rank = np.empty(n, dtype=np.int64)
        ctx_max = np.empty(n, dtype=np.float64)

    bank_t = np.ascontiguousarray(bank.T)  # [D, M], contiguous for BLAS
    rank = np.empty(n, dtype=np.int64)
    n_less = np.empty(n, dtype=np.int64)
    article_rank = None
    if bank_article is not None:
        # Dense article codes and, per code, the bank columns of that article,
        # so within-article counts only touch those columns (not all M).
        _, bank_code = np.unique(np.asarray(bank_article), return_inverse=True)
        col_order = np.argsort(bank_code, kind="stable")
        col_bounds = np.concatenate([[0], np.cumsum(np.bincount(bank_code))])
        tgt_code = bank_code[target_index]
        article_rank = np.empty(n, dtype=np.int64)

    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        scores = pred[s:e] @ bank_t  # [c, M]
        rows = np.arange(e - s)
        # The true score is read from the same product, so the true row
        # compares equal to itself exactly (no recomputation rounding).
        true = scores[rows, target_index[s:e]][:, None]
        rank[s:e] = 1 + np.count_nonzero(scores > true, axis=1)
        n_less[s:e] = np.count_nonzero(scores < true, axis=1)
        if context_rows is not None:
            # The context of a window is a contiguous block of the bank, so
            # gather its L scores ([c, L], cheap next to [c, M]) and take the
            # ones that beat the target off the full-bank count.  Same result
            # as masking them to -inf and recounting, without a second pass
            # over M.  A target row inside its own context cannot count
            # against itself: its score is not strictly greater than itself.
            ctx_scores = scores[rows[:, None], ctx_starts[s:e, None] + ctx_offsets[None, :]]
            cand_rank[s:e] = rank[s:e] - np.count_nonzero(ctx_scores > true, axis=1)
            ctx_max[s:e] = ctx_scores.max(axis=1)
        if article_rank is not None:
            # Reuse this chunk's scores (same numbers as the global rank, so
            # article rank <= global rank holds exactly), one article at a time.
            codes = tgt_code[s:e]
            for code in np.unique(codes):
                r = np.flatnonzero(codes == code)
                cols = col_order[col_bounds[code] : col_bounds[code + 1]]
                sub = scores[r[:, None], cols[None, :]]
                article_rank[s + r] = 1 + np.count_nonzero(sub > true[r], axis=1)

    out = {
        "rank": rank,
        "n_less": n_less,
        "n_ties": (m - 1) - (rank - 1) - n_less,
    }
    if article_rank is not None:
        out["article_rank"] = article_rank
    if context_rows is not None:
        out["cand_rank"] = cand_rank
        out["ctx_max"] = ctx_max
    return out


def context_max_cosine(
    x: np.ndarray,
    bank: np.ndarray,
    context_rows: tuple[np.ndarray, int],
    chunk_size: int = 256,
    normalized: bool = False,
) -> np.ndarray:
    """Per window: max over its L context rows of cosine(x_i, context row) -> [n].

    Gathers [chunk, L, D] at a time (bounded memory whatever n and L).
    """
    if not normalized:
        x = l2_normalize(x)
        bank = l2_normalize(bank)
    starts = np.asarray(context_rows[0], dtype=np.int64)
    offsets = np.arange(int(context_rows[1]))
    out = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], chunk_size):
        ctx = bank[starts[s : s + chunk_size, None] + offsets[None, :]]  # [c, L, D]
        out[s : s + chunk_size] = np.einsum("cld,cd->cl", ctx, x[s : s + chunk_size]).max(axis=1)
    return out


def retrieval_ranks(
    pred: np.ndarray, bank: np.ndarray, target_index: np.ndarray, chunk_size: int = 1024
) -> np.ndarray:
    """1-based rank of the true row among all M bank rows by cosine.

    rank = 1 + #(bank rows with cosine strictly greater than the true row's);
    see the module docstring for the tie convention.  Chunked over windows.
    """
    return rank_stats(pred, bank, target_index, chunk_size=chunk_size)["rank"]


def within_article_ranks(
    pred: np.ndarray,
    bank: np.ndarray,
    bank_article: np.ndarray,
    target_index: np.ndarray,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Rank of the true row among bank rows from the target's own article.

    Same tie convention as :func:`retrieval_ranks`.  Always <= the global rank,
    since the competitors are a subset.  This is the harder, more local test:
    can the model tell the next sentence from other sentences on the same topic?
    """
    return rank_stats(
        pred, bank, target_index, bank_article=bank_article, chunk_size=chunk_size
    )["article_rank"]


def contrastive_accuracy(n_less: np.ndarray, bank_size: int) -> np.ndarray:
    """Per window: share of the other M-1 bank rows strictly farther from the
    prediction than the true next vector (LCM paper's contrastive accuracy).

    Ties are not "farther", so they count against the prediction.
    """
    if bank_size <= 1:
        return np.full(np.shape(n_less), np.nan)
    return np.asarray(n_less, dtype=np.float64) / (bank_size - 1)


def directional(pred: np.ndarray, target: np.ndarray, last: np.ndarray) -> np.ndarray:
    """cos(pred, target) - cos(pred, last) per window.

    Negative values mean the prediction sits closer to the last context vector
    than to the true next one, i.e. it leans towards copying.
    """
    return cosine(pred, target) - cosine(pred, last)


# --------------------------------------------------------------------------
# Full evaluation
# --------------------------------------------------------------------------


def per_window_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    last: np.ndarray,
    bank: np.ndarray,
    bank_article: np.ndarray,
    target_index: np.ndarray,
    chunk_size: int = 1024,
    *,
    context_rows: tuple[np.ndarray, int],
    true_ctx_max: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-window arrays (for histograms, paired differences and the summary).

    Keys: ``cosine``, ``directional``, ``sq_err`` (mean squared error per window
    between normalised pred and target), ``rank``, ``article_rank``,
    ``n_less``, ``n_ties``, ``contrastive``, ``cand_rank`` (rank without the
    window's own context rows), ``ctx_max`` (max cosine of the prediction to
    its context), ``true_ctx_max`` (the same for the true next vector) and
    ``par`` = ctx_max / true_ctx_max (NaN where true_ctx_max <= 0: the ratio
    has no meaning when the true next vector is orthogonal to or opposite
    every context vector).  ``true_ctx_max`` may be passed in: it does not
    depend on the predictor, so a caller scoring many predictors on one split
    computes it once (:func:`context_max_cosine` of the targets).
    """
    pred_n = l2_normalize(pred)
    target_n = l2_normalize(target)
    last_n = l2_normalize(last)
    n = pred_n.shape[0]
    if target_n.shape != pred_n.shape or last_n.shape != pred_n.shape:
        raise ValueError("pred, target and last must have the same shape")
    if bank.shape[0] != np.shape(bank_article)[0]:
        raise ValueError("bank and bank_article lengths differ")

    cos_t = np.einsum("nd,nd->n", pred_n, target_n)
    cos_l = np.einsum("nd,nd->n", pred_n, last_n)
    sq_err = np.mean((pred_n.astype(np.float64) - target_n) ** 2, axis=1)

    bank_n = l2_normalize(bank)
    ranks = rank_stats(
        pred_n, bank_n, target_index,
        bank_article=bank_article, chunk_size=chunk_size, normalized=True,
        context_rows=context_rows,
    )
    if true_ctx_max is None:
        true_ctx_max = context_max_cosine(target_n, bank_n, context_rows, normalized=True)
    true_ctx_max = np.asarray(true_ctx_max, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        par = np.where(true_ctx_max > _EPS, ranks["ctx_max"] / true_ctx_max, np.nan)
    out = {
        "cosine": cos_t.astype(np.float64),
        "directional": (cos_t - cos_l).astype(np.float64),
        "sq_err": sq_err,
        "contrastive": contrastive_accuracy(ranks["n_less"], bank.shape[0]),
        **ranks,
        "true_ctx_max": true_ctx_max,
        "par": par,
    }
    assert all(v.shape == (n,) for v in out.values())
    return out


def _r(x) -> float | None:
    """Rounded python float; None (JSON null) for a missing or non-finite value."""
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), 6)


def summarize(
    per_window: dict[str, np.ndarray],
    article: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float | None]:
    """Flat dict of rounded python floats from :func:`per_window_metrics`.

    Interval ends are None with fewer than :data:`MIN_CI_ARTICLES` articles.
    """
    article = np.asarray(article)
    cos = per_window["cosine"]
    rank = per_window["rank"]
    cand = per_window["cand_rank"]
    arank = per_window["article_rank"]
    dirn = per_window["directional"]
    par = per_window["par"]
    hit5 = (rank <= 5).astype(np.float64)

    # Same seed for every interval: each uses the same article draws, which
    # keeps the intervals mutually consistent (and reproducible).
    def ci(values):
        return group_ci(values, article, n_boot=n_boot, alpha=alpha, seed=seed)

    cos_lo, cos_hi = ci(cos)
    mrr_lo, mrr_hi = ci(1.0 / cand)
    r5_lo, r5_hi = ci(hit5)
    dir_lo, dir_hi = ci(dirn)

    out = {
        "n_windows": float(cos.shape[0]),
        "n_articles": float(np.unique(article).size),
        "cosine_mean": np.mean(cos),
        "cosine_median": np.median(cos),
        "cosine_ci_low": cos_lo,
        "cosine_ci_high": cos_hi,
        "mse": np.mean(per_window["sq_err"]),
        "cand_r_at_1": np.mean(cand <= 1),
        "cand_r_at_5": np.mean(cand <= 5),
        "cand_r_at_10": np.mean(cand <= 10),
        "cand_mrr": np.mean(1.0 / cand),
        "cand_mrr_ci_low": mrr_lo,
        "cand_mrr_ci_high": mrr_hi,
        "r_at_1_full_bank": np.mean(rank <= 1),
        "r_at_5_full_bank": np.mean(hit5),
        "r_at_10_full_bank": np.mean(rank <= 10),
        "mrr_full_bank": np.mean(1.0 / rank),
        "r_at_5_full_bank_ci_low": r5_lo,
        "r_at_5_full_bank_ci_high": r5_hi,
        "article_r_at_1": np.mean(arank <= 1),
        "article_mrr": np.mean(1.0 / arank),
        "contrastive_acc": np.mean(per_window["contrastive"]),
        # windows where PAR is undefined (true next not positively aligned
        # with any context vector) are left out of the mean
        "par_mean": np.nanmean(par) if np.isfinite(par).any() else None,
        "directional_mean": np.mean(dirn),
        "directional_ci_low": dir_lo,
        "directional_ci_high": dir_hi,
    }
    assert tuple(out) == METRIC_KEYS
    return {k: _r(v) for k, v in out.items()}


def evaluate_predictions(
    pred: np.ndarray,
    target: np.ndarray,
    last: np.ndarray,
    article: np.ndarray,
    bank: np.ndarray,
    bank_article: np.ndarray,
    target_index: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    return_per_window: bool = False,
    chunk_size: int = 1024,
    *,
    context_rows: tuple[np.ndarray, int],
    true_ctx_max: np.ndarray | None = None,
):
    """Evaluate one predictor on one split.

    ``context_rows=(starts, L)``: window i's context is bank rows starts[i] ..
    starts[i]+L-1 (for the candidate-only rank and PAR).

    Returns a flat dict (keys exactly :data:`METRIC_KEYS`, python floats
    rounded to 6 decimals, None for an interval that cannot be formed).  With
    ``return_per_window=True`` returns ``(summary, per_window)`` where
    ``per_window`` is the dict of arrays from :func:`per_window_metrics`
    (cosine, rank, cand_rank, par, directional, ...).
    Intervals are 95% (alpha=0.05) percentile bootstraps over articles.
    """
    article = np.asarray(article)
    if article.shape[0] != np.shape(pred)[0]:
        raise ValueError("article must have one id per window")
    if np.shape(pred)[0] == 0:
        raise ValueError("no windows to evaluate")
    pw = per_window_metrics(
        pred, target, last, bank, bank_article, target_index, chunk_size=chunk_size,
        context_rows=context_rows, true_ctx_max=true_ctx_max,
    )
    summary = summarize(pw, article, n_boot=n_boot, seed=seed)
    return (summary, pw) if return_per_window else summary
