"""Scoring: the one path from trained models and fitted baselines to the figures the project reports.

    baselines = fit_baselines(cfg, train)                      # on train windows only
    predictors = {**baseline_predictors(baselines, cfg), "gru": model_predictor(model, cfg, device, prec)}
    splits = eval_splits({"val": val, "test": test})            # what every predictor is scored against
    scores = score_all(predictors, splits, cfg)                 # scores[name][split] = Score(summary, per_window)
    best = choose_best_baseline(scores, list(baselines))        # on val, never on test
    compare_to_best(scores, best, splits, cfg)                  # adds summary["vs_best_baseline"]

The evaluate stage, lvm.ablation and lvm.crossval all call these, so a figure in any of their tables
means the same thing. "Better" is decided by paired differences: every predictor is scored on the
same windows, so the per-window difference (to the best baseline, or model to model) is
bootstrapped over articles, the same articles for both in every resample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lvm import LvmError
from lvm.baselines import make_baselines, predict_batches
from lvm.data import WindowDataset
from lvm.metrics import MIN_CI_ARTICLES, context_max_cosine, cosine, evaluate_predictions, group_ci, paired_difference

EVAL_SPLITS = ("val", "test")
Predictor = Callable[[WindowDataset], np.ndarray]  # windows -> predictions [n, D]


@dataclass
class Score:
    """One predictor on one split: evaluate.json's figures and the per-window arrays they come from
    (cosine, cand_rank, ...: lvm.metrics.per_window_metrics), which the paired comparisons need."""
    summary: dict
    per_window: dict


@dataclass
class EvalSplit:
    """One split as every predictor is scored on it. `true_ctx_max` (max cosine of each true next
    vector to its own context: PAR's denominator) is the same for every predictor, so it is computed once."""
    ds: WindowDataset
    true_ctx_max: np.ndarray

    @property
    def articles(self) -> np.ndarray:
        return self.ds.window_articles()


def eval_splits(datasets: dict[str, WindowDataset]) -> dict[str, EvalSplit]:
    out = {}
    for split, ds in datasets.items():
        rows = ds.targets_rows()
        out[split] = EvalSplit(ds, context_max_cosine(ds.vectors_np[rows], ds.vectors_np, (ds.starts, ds.context_length)))
    return out


def check_disjoint(datasets: dict) -> None:
    """Fail loudly if any article of val/test also appears in train (a leak would inflate every score)."""
    train = set(np.unique(datasets["train"].article_indices).tolist())
    for split in EVAL_SPLITS:
        shared = train & set(np.unique(datasets[split].article_indices).tolist())
        if shared:
            raise LvmError(f"{datasets[split].path}: {len(shared)} {split} articles also in train "
                           f"(e.g. {sorted(shared)[:5]}); re-export with `dvc repro export_ctx100`")


def context_chunks(ds: WindowDataset, batch_size: int):
    for _, ctx, _ in ds.batches(batch_size):
        yield ctx.numpy()


def fit_baselines(cfg: dict, train: WindowDataset) -> dict:
    """Baselines see only train windows, at stride 1: every train target, no val/test data."""
    baselines = make_baselines({"ridge_k": cfg["ridge_k"], "ridge_lambda_grid": "default"})
    train1 = train.restrided(1)
    articles = train1.window_articles()
    for name, b in baselines.items():
        for idx, ctx, tgt in train1.batches(cfg["batch_size"]):
            b.partial_fit(ctx.numpy(), tgt.numpy(), articles[idx])
        try:
            b.finalize()
        except ValueError as e:  # e.g. ridge's lambda is chosen on held-out train articles: needs >= 2
            raise LvmError(f"{train.path}: baseline {name} cannot be fitted on {len(train1)} train windows from "
                           f"{np.unique(articles).size} article(s): {e}") from None
        print(f"baseline {name}: fitted on {len(train1)} train windows {b.params()}")
    return baselines


def baseline_predictors(baselines: dict, cfg: dict) -> dict[str, Predictor]:
    def predictor(b):
        return lambda ds: predict_batches(b, context_chunks(ds, cfg["batch_size"]))
    return {name: predictor(b) for name, b in baselines.items()}


def model_predictor(model, cfg: dict, device, precision: str) -> Predictor:
    from lvm.checkpoints import predict

    return lambda ds: predict(model, ds, cfg["batch_size"], device, precision)


def score(pred: np.ndarray, split: EvalSplit, cfg: dict) -> Score:
    ds = split.ds
    vectors = ds.vectors_np
    summary, pw = evaluate_predictions(
        pred, vectors[ds.targets_rows()], vectors[ds.last_context_rows()], ds.window_articles(),
        vectors, ds.article_indices, ds.targets_rows(), n_boot=cfg["n_boot"], seed=0,
        return_per_window=True, context_rows=(ds.starts, ds.context_length), true_ctx_max=split.true_ctx_max)
    return Score(summary, pw)


def score_all(predictors: dict[str, Predictor], splits: dict[str, EvalSplit], cfg: dict) -> dict[str, dict[str, Score]]:
    """scores[name][split] for every predictor on every split, in the predictors' order."""
    scores = {}
    for name, fn in predictors.items():
        scores[name] = {}
        for split, s in splits.items():
            with torch.no_grad():
                scores[name][split] = score(fn(s.ds), s, cfg)
    return scores


def choose_best_baseline(scores: dict[str, dict[str, Score]], baselines: list[str], split: str = "val") -> dict:
    """The reference for "better": highest val cosine and highest val candidate MRR. Choosing it on
    test would pick the baseline that happened to do well on the very windows it is compared on
    (first in registry order on a tie)."""
    return {"cosine": max(baselines, key=lambda b: scores[b][split].summary["cosine_mean"]),
            "mrr": max(baselines, key=lambda b: scores[b][split].summary["cand_mrr"])}


def _r(x):
    return None if x is None else round(float(x), 6)


def paired(a: Score, b: Score, articles: np.ndarray, cfg: dict) -> dict:
    """a − b on the same windows: {cosine, cand_mrr} -> paired_difference's {mean, ci_low, ci_high}
    (the mean difference of reciprocal candidate-only ranks is the candidate-MRR difference)."""
    return {"cosine": paired_difference(a.per_window["cosine"], b.per_window["cosine"], articles,
                                        n_boot=cfg["n_boot"], seed=0),
            "cand_mrr": paired_difference(1.0 / a.per_window["cand_rank"], 1.0 / b.per_window["cand_rank"], articles,
                                          n_boot=cfg["n_boot"], seed=0)}


def vs_best_baseline(scores: dict[str, dict[str, Score]], name: str, split: str, best: dict, articles: np.ndarray,
                     cfg: dict) -> dict:
    """Paired per-window differences of `name` to the best baselines on `split` (cosine, and the
    reciprocal candidate-only rank, whose mean difference is the candidate-MRR difference)."""
    c = paired(scores[name][split], scores[best["cosine"]][split], articles, cfg)["cosine"]
    m = paired(scores[name][split], scores[best["mrr"]][split], articles, cfg)["cand_mrr"]
    return {"cosine_baseline": best["cosine"], "cosine_diff": _r(c["mean"]),
            "cosine_diff_ci_low": _r(c["ci_low"]), "cosine_diff_ci_high": _r(c["ci_high"]),
            "mrr_baseline": best["mrr"], "cand_mrr_diff": _r(m["mean"]),
            "cand_mrr_diff_ci_low": _r(m["ci_low"]), "cand_mrr_diff_ci_high": _r(m["ci_high"])}


def compare_to_best(scores: dict[str, dict[str, Score]], best: dict, splits: dict[str, EvalSplit], cfg: dict,
                    names: list[str] | None = None) -> None:
    """Add summary["vs_best_baseline"] to every (or each named) predictor's score on every split."""
    for name in names or list(scores):
        for split, s in splits.items():
            scores[name][split].summary["vs_best_baseline"] = vs_best_baseline(scores, name, split, best, s.articles, cfg)


def vs_model(scores: dict[str, dict[str, Score]], name: str, reference: str, split: str, articles: np.ndarray,
             cfg: dict) -> dict:
    """`name` − `reference` (two models) on the same windows of `split`, paired by article: the
    comparison the experiments exist for (does the hierarchy, or the memory, beat the plain GRU stack?)."""
    d = paired(scores[name][split], scores[reference][split], articles, cfg)
    return {"model": reference,
            **{f"{metric}_diff{end}": _r(d[metric][key]) for metric in ("cosine", "cand_mrr")
               for end, key in (("", "mean"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))}}


def compare_models(scores: dict[str, dict[str, Score]], reference: str, models: list[str],
                   splits: dict[str, EvalSplit], cfg: dict) -> None:
    """Add summary["vs_model"] (each model − `reference`) on every split to every other model."""
    for name in models:
        if name != reference:
            for split, s in splits.items():
                scores[name][split].summary["vs_model"] = vs_model(scores, name, reference, split, s.articles, cfg)


def per_article(scores: dict[str, dict[str, Score]], splits: dict[str, EvalSplit], split: str) -> dict:
    """Per-article sums of every predictor's per-window cosine and reciprocal candidate-only rank on
    `split`, with the window counts: all that a paired article bootstrap of a mean difference needs
    (lvm.metrics.bootstrap_ci's mean path draws articles and divides their summed sums by their summed
    counts), so that lvm.crossval can pool the test articles of every fold without per-window arrays."""
    ids, codes = np.unique(splits[split].articles, return_inverse=True)

    def sums(values):
        return np.bincount(codes, weights=np.asarray(values, np.float64), minlength=ids.size).tolist()

    return {"articles": ids.tolist(), "windows": np.bincount(codes, minlength=ids.size).tolist(),
            "sums": {name: {"cosine": sums(by_split[split].per_window["cosine"]),
                            "recip_cand_rank": sums(1.0 / by_split[split].per_window["cand_rank"])}
                     for name, by_split in scores.items()}}


def summaries(scores: dict[str, dict[str, Score]]) -> dict:
    """{name: {split: summary}}: evaluate.json's predictor part."""
    return {name: {split: s.summary for split, s in by_split.items()} for name, by_split in scores.items()}


def truncated(ds: WindowDataset, k: int) -> WindowDataset:
    """The same windows (same targets) with only their last k context vectors: a window of length k
    starting L-k rows later. Shares the vectors; every model and baseline runs on it unchanged."""
    L = ds.context_length
    if not 1 <= k <= L:
        raise ValueError(f"k={k} outside 1..{L}")
    if k == L:
        return ds
    return ds.with_starts(ds.starts + (L - k), context_length=k)


def curve_grid(curve_k: list[int], L: int) -> list[int]:
    """evaluate.curve_k without values > L (no such context exists), with L itself always included."""
    return sorted({int(k) for k in curve_k if k <= L} | {L})


def context_curve(predictors: dict, ds: WindowDataset, grid: list[int], cfg: dict, min_context: dict,
                  whole: dict[str, np.ndarray] | None = None) -> dict:
    """{predictor: {str(k): {cosine_mean, ci_low, ci_high}}} on `ds` from the last k context vectors.

    `min_context[name]` = fewest context vectors a predictor can read (ridge: evaluate.ridge_k); it is
    skipped below that rather than fed zero padding it never saw in fitting. `whole[name]`: the
    per-window cosines of `ds`'s windows at k = L, already scored (evaluate's test scores, every
    sample_stride-th): the point at k = L is not predicted again (for a model, half the curve's cost)."""
    target = ds.vectors_np[ds.targets_rows()]
    articles = ds.window_articles()
    out = {"n_windows": len(ds), "n_articles": int(np.unique(articles).size), "sample_stride": cfg["sample_stride"]}
    skipped = []
    for name, fn in predictors.items():
        out[name] = {}
        too_short = [k for k in grid if k < min_context.get(name, 1)]
        if too_short:
            skipped.append(f"{name} at k={', '.join(map(str, too_short))} (it reads the last "
                           f"{min_context[name]} context vectors)")
        for k in grid:
            if k in too_short:
                continue
            if k == ds.context_length and whole is not None and name in whole:
                cos = np.asarray(whole[name], dtype=np.float64)
            else:
                with torch.no_grad():
                    pred = fn(truncated(ds, k))
                cos = cosine(pred, target).astype(np.float64)
            lo, hi = group_ci(cos, articles, n_boot=cfg["n_boot"], seed=0)
            out[name][str(k)] = {"cosine_mean": _r(cos.mean()), "ci_low": _r(lo), "ci_high": _r(hi)}
    out["skipped"] = "; ".join(skipped) if skipped else "none"
    return out


def warn_few_articles(split: str, n_articles: int) -> str | None:
    if n_articles >= MIN_CI_ARTICLES:
        return None
    msg = (f"WARNING: the {split} split has {n_articles} article(s): no bootstrap interval can be formed "
           f"(needs >= {MIN_CI_ARTICLES} articles; unreliable below ~5); intervals are written as null")
    print(msg)
    return msg


def headline(evaluation: dict, models: list[str]) -> dict:
    """The few test figures that say which experiment is better, from evaluate.json's dict (values
    copied, not recomputed, so the file follows from the committed evaluate.json alone).

    evaluate.json keeps all ~270 figures; this file is declared first in dvc.yaml so that `dvc exp show`
    and `dvc metrics diff --targets metrics/headline.json` fit a terminal. A model beats the best
    baseline when its `cosine_diff_ci_low` > 0 (see metrics.interval_verdict)."""
    best = evaluation["best_baseline"]
    out = {"best_baseline": {
        "cosine": best["cosine"], "test_cosine": evaluation[best["cosine"]]["test"]["cosine_mean"],
        "mrr": best["mrr"], "test_cand_mrr": evaluation[best["mrr"]]["test"]["cand_mrr"]}}
    for name in models:
        t = evaluation[name]["test"]
        v = t["vs_best_baseline"]
        out[name] = {"test_cosine": t["cosine_mean"], "cosine_diff": v["cosine_diff"],
                     "cosine_diff_ci_low": v["cosine_diff_ci_low"], "cosine_diff_ci_high": v["cosine_diff_ci_high"],
                     "cand_mrr": t["cand_mrr"], "cand_mrr_diff": v["cand_mrr_diff"]}
        if "vs_model" in t:  # this model − the reference model (gru) on the same windows
            m = t["vs_model"]
            out[name].update({f"cosine_diff_vs_{m['model']}{end}": m[f"cosine_diff{end}"]
                              for end in ("", "_ci_low", "_ci_high")})
    return out
