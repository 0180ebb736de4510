"""Stage evaluate: every trained model and every no-training baseline on the held-out splits.

Reads each experiment's best.pt and curves under --models/<experiment> and --live/<experiment>, and
writes the files its command in dvc.yaml names: --metrics ({"best_baseline": {"cosine": name, "mrr":
name}, predictor: {split: {metric: value, "vs_best_baseline": {...}}}}), --headline (its few figures
that say which experiment is better: `headline`), --curve (test cosine from the last k context
vectors only, per predictor and k), --report (markdown; `make docs` shows it in the README),
--sample (a few windows of one test article decoded to text, lvm.inspect) and the figures of
lvm.plots.EVALUATE_FIGURES into --figures.

"Better" is decided by paired differences: every predictor is scored on the same windows, so the
per-window difference to the best baseline (chosen on val, never on test) is bootstrapped over
articles, the same articles for both predictors in every resample.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lvm import LvmError
from lvm.baselines import make_baselines, predict_batches
from lvm.entry import stage_main
from lvm.data import WindowDataset, check_same_export
from lvm.io import log_run, write_json, write_text
from lvm.metrics import (MIN_CI_ARTICLES, context_max_cosine, cosine, evaluate_predictions, group_ci,
                         interval_verdict, paired_difference)
from lvm.checkpoints import load_model, predict
from lvm.pipeline import experiments as pipeline_experiments, labels
from lvm.hardware import resolve_device, resolve_precision
from lvm.runtime import set_threads

EVAL_SPLITS = ("val", "test")
SAMPLE_WINDOWS, SAMPLE_K = 3, 5


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


def score(pred: np.ndarray, ds: WindowDataset, cfg: dict, true_ctx_max: np.ndarray | None = None):
    vectors = ds.vectors_np
    return evaluate_predictions(
        pred, vectors[ds.targets_rows()], vectors[ds.last_context_rows()], ds.window_articles(),
        vectors, ds.article_indices, ds.targets_rows(), n_boot=cfg["n_boot"], seed=0,
        return_per_window=True, context_rows=(ds.starts, ds.context_length), true_ctx_max=true_ctx_max)


def choose_best_baseline(results: dict, baselines: list[str], split: str = "val") -> dict:
    """The reference for "better": highest val cosine and highest val candidate MRR. Choosing it on
    test would pick the baseline that happened to do well on the very windows it is compared on
    (first in registry order on a tie)."""
    return {"cosine": max(baselines, key=lambda b: results[b][split]["cosine_mean"]),
            "mrr": max(baselines, key=lambda b: results[b][split]["cand_mrr"])}


def _r(x):
    return None if x is None else round(float(x), 6)


def vs_best_baseline(per_window: dict, name: str, split: str, best: dict, articles: np.ndarray,
                     cfg: dict) -> dict:
    """Paired per-window differences of `name` to the best baselines on `split` (cosine, and the
    reciprocal candidate-only rank, whose mean difference is the candidate-MRR difference)."""
    pw, ref_c, ref_m = per_window[(name, split)], per_window[(best["cosine"], split)], per_window[(best["mrr"], split)]
    c = paired_difference(pw["cosine"], ref_c["cosine"], articles, n_boot=cfg["n_boot"], seed=0)
    m = paired_difference(1.0 / pw["cand_rank"], 1.0 / ref_m["cand_rank"], articles, n_boot=cfg["n_boot"], seed=0)
    return {"cosine_baseline": best["cosine"], "cosine_diff": _r(c["mean"]),
            "cosine_diff_ci_low": _r(c["ci_low"]), "cosine_diff_ci_high": _r(c["ci_high"]),
            "mrr_baseline": best["mrr"], "cand_mrr_diff": _r(m["mean"]),
            "cand_mrr_diff_ci_low": _r(m["ci_low"]), "cand_mrr_diff_ci_high": _r(m["ci_high"])}


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


def context_curve(predictors: dict, ds: WindowDataset, grid: list[int], cfg: dict, min_context: dict) -> dict:
    """{predictor: {str(k): {cosine_mean, ci_low, ci_high}}} on `ds` from the last k context vectors.

    `min_context[name]` = fewest context vectors a predictor can read (ridge: evaluate.ridge_k); it is
    skipped below that rather than fed zero padding it never saw in fitting."""
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


def run(p: dict, data_dir: str, models_dir: str, live_dir: str, out_json: str, out_headline: str,
        out_curve: str, out_md: str, out_sample: str | None, plots_dir: str,
        experiments: dict | None = None) -> dict:
    """Score every experiment ({experiment: model}; default: dvc.yaml's train_* stages) and every
    baseline; each experiment is reported under its label (lvm.pipeline.labels: gru, ..., gru_retrieval)."""
    cfg = p["evaluate"]
    experiments = pipeline_experiments() if experiments is None else experiments
    label = labels(experiments)  # experiment -> the name it is reported under
    set_threads(p["train"]["threads"])
    device = resolve_device(p["train"]["device"])
    datasets = {s: WindowDataset(Path(data_dir) / f"{s}.npz") for s in ("train", *EVAL_SPLITS)}
    # splits of one export (and, where the export's metadata is there, the same id as it)
    metadata = Path(data_dir) / "metadata_ctx100.json"
    check_same_export(list(datasets.values()), metadata if metadata.is_file() else None)
    check_disjoint(datasets)
    warnings = [w for s in EVAL_SPLITS
                if (w := warn_few_articles(s, int(np.unique(datasets[s].window_articles()).size)))]
    results, per_window = {}, {}
    models = {}  # loaded and checked first: a wrong checkpoint fails before any work is done
    for experiment, model_name in experiments.items():
        path = Path(models_dir) / experiment / "best.pt"
        if not path.is_file():
            raise LvmError(f"{path}: missing; run `dvc repro train_{experiment}`")
        # it must hold this experiment's model, trained on vectors of this D and windows of this L
        models[label[experiment]] = load_model(path, expect_name=model_name, data=datasets["test"], device=device)
    baselines = fit_baselines(cfg, datasets["train"])
    predictors = {name: (lambda ds, b=b: predict_batches(b, context_chunks(ds, cfg["batch_size"])))
                  for name, b in baselines.items()}
    min_context = {"ridge": cfg["ridge_k"]} if "ridge" in baselines else {}
    for model_name, model in models.items():
        predictors[model_name] = (lambda ds, m=model: predict(m, ds, cfg["batch_size"], device,
                                                              resolve_precision(p["train"]["precision"], device)))
    # PAR's denominator (max cosine of each true next vector to its context) is the same for every
    # predictor: once per split
    true_ctx_max = {s: context_max_cosine(datasets[s].vectors_np[datasets[s].targets_rows()], datasets[s].vectors_np,
                                          (datasets[s].starts, datasets[s].context_length)) for s in EVAL_SPLITS}
    for name, fn in predictors.items():
        results[name] = {}
        for split in EVAL_SPLITS:
            with torch.no_grad():
                pred = fn(datasets[split])
                summary, pw = score(pred, datasets[split], cfg, true_ctx_max[split])
            results[name][split] = summary
            per_window[(name, split)] = pw
    best = choose_best_baseline(results, list(baselines))
    print(f"best baseline on val: cosine {best['cosine']}, candidate MRR {best['mrr']}")
    for name in predictors:
        for split in EVAL_SPLITS:
            results[name][split]["vs_best_baseline"] = vs_best_baseline(
                per_window, name, split, best, datasets[split].window_articles(), cfg)
        t = results[name]["test"]
        v = t["vs_best_baseline"]
        print(f"{name:>16}: test cosine {t['cosine_mean']:.4f} {fmt_ci(t['cosine_ci_low'], t['cosine_ci_high'])}  "
              f"vs {best['cosine']} {fmt_diff(v, 'cosine_diff')}  cand MRR {t['cand_mrr']:.4f} "
              f"vs {best['mrr']} {fmt_diff(v, 'cand_mrr_diff')}  PAR {fmt(t['par_mean'])}  "
              f"dir {t['directional_mean']:+.4f}")
    out = {"best_baseline": best, **results}
    write_json(out_json, out)
    write_json(out_headline, headline(out, list(models)))

    t0 = time.perf_counter()
    grid = curve_grid(cfg["curve_k"], datasets["test"].context_length)
    # every point on the same sample of the test windows (evaluate.sample_stride): a descriptive figure,
    # whose cost is one more pass over those windows per k and predictor
    curve = context_curve(predictors, datasets["test"].every(cfg["sample_stride"]), grid, cfg, min_context)
    curve_seconds = time.perf_counter() - t0
    print(f"context curve: k in {grid} for {len(predictors)} predictors on {curve['n_windows']} test windows "
          f"in {curve_seconds:.1f} s (skipped: {curve['skipped']})")
    write_json(out_curve, curve)
    # the curve's cost changes on every run: logged (logs/evaluate.jsonl), not written into results.md
    log_run("evaluate", {"seconds_context_curve": round(curve_seconds, 1), "predictors": len(predictors),
                         "curve_windows": curve["n_windows"]})

    from lvm.plots import EVALUATE_FIGURES, make_figures

    curve_files = (Path(out_curve).as_posix(), (Path(plots_dir) / EVALUATE_FIGURES["context_curve"]).as_posix())
    table = results_table(results, list(baselines), list(models), best, curve=curve, curve_files=curve_files,
                          warnings=warnings)
    write_text(out_md, table)
    make_figures(results, per_window, list(baselines), label, plots_dir, live_dir, best=best, curve=curve)
    if out_sample:
        write_text(out_sample, inspect_sample(p, datasets["test"], models, device))
    return out


def inspect_sample(p: dict, test: WindowDataset, models: dict, device) -> str:
    """Markdown: SAMPLE_WINDOWS windows of the first test article, every model and copy-last, decoded."""
    from lvm.inspect import article_windows, copy_last, format_markdown, inspect_windows, load_corpus_text, model_predictor

    path = p["data"]["vectors"]
    try:
        corpus = load_corpus_text(path, p["data"]["trust_pickle"])
    except LvmError as e:  # vectors without texts: the metrics stand, there is just nothing to read
        return f"No text sample: {e}\n"
    article = int(test.window_articles()[0])
    predictors = {"copy_last": copy_last}
    predictors.update({name: model_predictor(m, device, resolve_precision(p["train"]["precision"], device)) for name, m in models.items()})
    records = inspect_windows(corpus, test, article_windows(test, article, SAMPLE_WINDOWS), predictors, SAMPLE_K)
    note = (f"Generated by the evaluate stage: {len(records)} windows of test article {article} "
            f"({corpus.title(article)}), never seen in training. For each predictor: cos(prediction, true "
            f"next vector) and the {SAMPLE_K} corpus chunks nearest to the prediction, searched over all "
            f"{len(corpus.texts)} rows of `{path}` (the true next chunk and the context included; `where` "
            "tags them: TARGET, ctx-k = k-th last context chunk, same article, or another article). "
            "More windows: `lvm inspect --model models/<exp>/best.pt --article N`.")
    return format_markdown(records, note)


def fmt(x, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def fmt_ci(lo, hi, spec: str = ".4f", n_articles: int | None = None) -> str:
    if lo is None or hi is None:
        return f"[n/a: {int(n_articles)} article{'s' if n_articles != 1 else ''}]" if n_articles is not None \
            else "[n/a]"
    return f"[{lo:{spec}}, {hi:{spec}}]"


def fmt_diff(v: dict, key: str, n_articles: int | None = None) -> str:
    return f"{v[key]:+.4f} {fmt_ci(v[key + '_ci_low'], v[key + '_ci_high'], '+.4f', n_articles)}"


def verdict(results: dict, baselines: list[str], models: list[str], metric: str, best: dict,
            split: str = "test") -> str:
    """One sentence per metric ("cosine" or "mrr"), from the paired intervals of each model's
    difference to the best baseline chosen on val: "beats" only when the whole interval is above 0."""
    key = {"cosine": "cosine_diff", "mrr": "cand_mrr_diff"}[metric]
    label = {"cosine": "cosine", "mrr": "candidate MRR"}[metric]
    ref = best[metric]
    parts, winners = [], []
    for m in models:
        v = results[m][split]["vs_best_baseline"]
        word = interval_verdict(v[key + "_ci_low"], v[key + "_ci_high"])
        if word == "no interval":
            word = "cannot be decided (too few articles for an interval)"
        if word == "beats":
            winners.append(m)
        parts.append(f"{m} {word} ({fmt_diff(v, key)})")
    head = (f"Test {label}, paired difference to {ref} (the best baseline on val {label}), 95% article "
            "bootstrap: ")
    tail = (f"Beats it: {', '.join(winners)}." if winners else "No model beats it.")
    return head + ("; ".join(parts) + ". " if parts else "") + tail


def results_table(results: dict, baselines: list[str], models: list[str], best: dict, curve: dict | None = None,
                  curve_files: tuple[str, str] = ("", ""),
                  warnings: list[str] | None = None) -> str:
    n = results[models[0] if models else baselines[0]]["test"]
    n_art = int(n["n_articles"])
    lines = [
        f"Held-out **test** split: {int(n['n_windows'])} windows from {n_art} articles never seen in training. "
        "Intervals: 95% bootstrap over articles. `vs best baseline` = mean per-window difference to the "
        f"baseline that scores best on **val** ({best['cosine']} for cosine, {best['mrr']} for MRR), the "
        "same articles drawn for both in every resample (paired). `PAR` = max cos(pred, context) / max "
        "cos(true next, context), > 1 copies more than real text does. `dir` = cos(pred, next) − cos(pred, "
        "last context vector); negative means the predictor leans toward copying.",
        "",
    ]
    for w in warnings or []:
        lines += [f"**{w}.**", ""]
    lines += [
        "| predictor | kind | cosine [95% CI] | vs best baseline [95% CI] | PAR | dir [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name in baselines + models:
        t = results[name]["test"]
        kind = "baseline" if name in baselines else "model"
        vs = "reference" if name == best["cosine"] else fmt_diff(t["vs_best_baseline"], "cosine_diff", n_art)
        cos_ci = fmt_ci(t["cosine_ci_low"], t["cosine_ci_high"], n_articles=n_art)
        dir_ci = fmt_ci(t["directional_ci_low"], t["directional_ci_high"], "+.4f", n_art)
        lines.append(f"| {name} | {kind} | {t['cosine_mean']:.4f} {cos_ci} | {vs} | {fmt(t['par_mean'], '.3f')} "
                     f"| {t['directional_mean']:+.4f} {dir_ci} |")
    lines += [
        "",
        "Retrieval: rank of the true next vector among the test vectors **minus the window's own context** "
        "(candidate-only: the next chunk is never one of its context chunks). `full bank` keeps the context "
        "rows, where copy-last's own input always ranks first (its full-bank R@1 is 0 by construction).",
        "",
        "| predictor | kind | R@1 | R@5 | R@10 | MRR [95% CI] | vs best baseline [95% CI] "
        "| full-bank R@5 | full-bank MRR | article MRR | contrastive acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in baselines + models:
        t = results[name]["test"]
        kind = "baseline" if name in baselines else "model"
        vs = "reference" if name == best["mrr"] else fmt_diff(t["vs_best_baseline"], "cand_mrr_diff", n_art)
        lines.append(
            f"| {name} | {kind} | {t['cand_r_at_1']:.4f} | {t['cand_r_at_5']:.4f} | {t['cand_r_at_10']:.4f} "
            f"| {t['cand_mrr']:.4f} {fmt_ci(t['cand_mrr_ci_low'], t['cand_mrr_ci_high'], n_articles=n_art)} | {vs} "
            f"| {t['r_at_5_full_bank']:.4f} | {t['mrr_full_bank']:.4f} | {t['article_mrr']:.4f} "
            f"| {t['contrastive_acc']:.4f} |")
    lines += ["", verdict(results, baselines, models, "cosine", best), "",
              verdict(results, baselines, models, "mrr", best), ""]
    if curve:
        lines += curve_table(curve, baselines + models, curve_files)
    return "\n".join(lines)


def curve_table(curve: dict, names: list[str], files: tuple[str, str]) -> list[str]:
    """`files`: (the curve's json, its figure), named in the text."""
    ks = sorted({int(k) for name in names for k in curve.get(name, {})})
    lines = [
        f"Per-position curve: test cosine when each predictor sees only the **last k** context vectors "
        f"(the same {curve['n_windows']} targets at every k: every {curve['sample_stride']}th test window, "
        f"`evaluate.sample_stride`; 95% intervals in `{files[0]}`, figure `{files[1]}`)"
        + (f"; skipped: {curve['skipped']}" if curve["skipped"] != "none" else "") + ".",
        "",
        "| predictor | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for name in names:
        row = curve.get(name, {})
        lines.append(f"| {name} | " + " | ".join(
            f"{row[str(k)]['cosine_mean']:.4f}" if str(k) in row else "—" for k in ks) + " |")
    return lines + [""]


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
    return out


main = stage_main(run, __doc__, data="data_dir", paths={
    "--models": "models_dir", "--live": "live_dir", "--metrics": "out_json", "--headline": "out_headline",
    "--curve": "out_curve", "--report": "out_md", "--sample": "out_sample", "--figures": "plots_dir"})


if __name__ == "__main__":
    main()
