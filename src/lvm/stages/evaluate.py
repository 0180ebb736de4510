"""Stage evaluate: every trained model and every no-training baseline on the held-out splits.

Reads each experiment's best.pt and curves under --models/<experiment> and --live/<experiment>, and
writes the files its command in dvc.yaml names: --metrics ({"best_baseline": {"cosine": name, "mrr":
name}, predictor: {split: {metric: value, "vs_best_baseline": {...}}}}), --headline (its few figures
that say which experiment is better: lvm.evaluation.headline), --curve (test cosine from the last k
context vectors only, per predictor and k), --report (markdown; `make docs` shows it in the README),
--sample (a few windows of one test article decoded to text, lvm.inspect), --per-article (per test
article sums of every predictor's scores: what lvm.crossval pools over folds) and the figures of
lvm.plots.EVALUATE_FIGURES into --figures. All of them change together or not at all.

The scoring is lvm.evaluation's (the paired differences to the best baseline chosen on val); this
stage reads, calls and writes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lvm import LvmError
from lvm.checkpoints import load_model
from lvm.data import WindowDataset, check_same_export
from lvm.entry import stage_main
from lvm.evaluation import (EVAL_SPLITS, baseline_predictors, check_disjoint, choose_best_baseline, compare_models,
                            compare_to_best, context_curve, curve_grid, eval_splits, fit_baselines, headline,
                            model_predictor, per_article, score_all, summaries, warn_few_articles)
from lvm.hardware import resolve_device, resolve_precision
from lvm.io import NpzReader, atomic_outputs, log_run, write_json, write_text
from lvm.pipeline import experiments as pipeline_experiments, labels
from lvm.report import fmt, fmt_ci, fmt_diff, results_table
from lvm.runtime import Clock, set_threads


def check_corpus_dim(p: dict, test: WindowDataset) -> None:
    """The text sample searches data.vectors for the predictions' neighbours: a file of another D
    (data.vectors changed after the export) must fail here, before anything is written."""
    path = Path(p["data"]["vectors"])
    if not path.is_file():
        return  # no corpus file: the sample says so, the metrics stand
    with NpzReader(path, trust_pickle=p["data"]["trust_pickle"]) as r:
        shape, _ = r.header("vectors") if "vectors" in r else ((None, test.dim), None)
    if len(shape) != 2 or shape[1] != test.dim:
        raise LvmError(f"{path}: key 'vectors' has shape {tuple(shape)}, but the splits in {Path(test.path).parent} "
                       f"hold D={test.dim} vectors (data.vectors changed after the export?); rerun "
                       "`dvc repro export_ctx100` or point data.vectors at the exported file")


def run(p: dict, data_dir: str, models_dir: str, live_dir: str, out_json: str, out_headline: str,
        out_curve: str, out_md: str, out_sample: str | None, plots_dir: str, out_per_article: str | None = None,
        experiments: dict | None = None) -> dict:
    """Score every experiment ({experiment: model}; default: dvc.yaml's train_* stages) and every
    baseline; each experiment is reported under its label (lvm.pipeline.labels: gru, ..., gru_retrieval)."""
    from lvm.inspect import sample_markdown
    from lvm.plots import EVALUATE_FIGURES, make_figures

    cfg = p["evaluate"]
    experiments = pipeline_experiments() if experiments is None else experiments
    label = labels(experiments)  # experiment -> the name it is reported under
    clock = Clock()
    clock.start("load")
    set_threads(p["train"]["threads"])
    device = resolve_device(p["train"]["device"])
    precision = resolve_precision(p["train"]["precision"], device)
    datasets = {s: WindowDataset(Path(data_dir) / f"{s}.npz") for s in ("train", *EVAL_SPLITS)}
    # splits of one export (and, where the export's metadata is there, the same id as it)
    metadata = Path(data_dir) / "metadata_ctx100.json"
    check_same_export(list(datasets.values()), metadata if metadata.is_file() else None)
    check_disjoint(datasets)
    if out_sample:
        check_corpus_dim(p, datasets["test"])
    warnings = [w for s in EVAL_SPLITS
                if (w := warn_few_articles(s, int(np.unique(datasets[s].window_articles()).size)))]
    models = {}  # loaded and checked first: a wrong checkpoint fails before any work is done
    for experiment, model_name in experiments.items():
        path = Path(models_dir) / experiment / "best.pt"
        if not path.is_file():
            raise LvmError(f"{path}: missing; run `dvc repro train_{experiment}`")
        # it must hold this experiment's model, trained on vectors of this D and windows of this L
        models[label[experiment]] = load_model(path, expect_name=model_name, data=datasets["test"], device=device)
    clock.stop("load")
    with clock("fit_baselines"):
        baselines = fit_baselines(cfg, datasets["train"])
    predictors = baseline_predictors(baselines, cfg)
    predictors.update({name: model_predictor(m, cfg, device, precision) for name, m in models.items()})
    splits = eval_splits({s: datasets[s] for s in EVAL_SPLITS})
    with clock("score"):
        scores = score_all(predictors, splits, cfg)
    clock.start("compare")
    best = choose_best_baseline(scores, list(baselines))
    print(f"best baseline on val: cosine {best['cosine']}, candidate MRR {best['mrr']}")
    compare_to_best(scores, best, splits, cfg)
    reference = label.get("baseline")  # train_baseline's gru: the architecture every other one is paired with
    if reference in models:
        compare_models(scores, reference, list(models), splits, cfg)
    results = summaries(scores)
    clock.stop("compare")
    for name in predictors:
        t = results[name]["test"]
        v = t["vs_best_baseline"]
        print(f"{name:>16}: test cosine {t['cosine_mean']:.4f} {fmt_ci(t['cosine_ci_low'], t['cosine_ci_high'])}  "
              f"vs {best['cosine']} {fmt_diff(v, 'cosine_diff')}  cand MRR {t['cand_mrr']:.4f} "
              f"vs {best['mrr']} {fmt_diff(v, 'cand_mrr_diff')}  PAR {fmt(t['par_mean'])}  "
              f"dir {t['directional_mean']:+.4f}")
    out = {"best_baseline": best, **results}

    clock.start("context_curve")
    grid = curve_grid(cfg["curve_k"], datasets["test"].context_length)
    # every point on the same sample of the test windows (evaluate.sample_stride): a descriptive figure,
    # whose cost is one more pass over those windows per k and predictor
    min_context = {"ridge": cfg["ridge_k"]} if "ridge" in baselines else {}
    whole = {name: scores[name]["test"].per_window["cosine"][::cfg["sample_stride"]] for name in predictors}
    curve = context_curve(predictors, datasets["test"].every(cfg["sample_stride"]), grid, cfg, min_context, whole)
    clock.stop("context_curve")
    curve_seconds = clock.seconds["context_curve"]
    print(f"context curve: k in {grid} for {len(predictors)} predictors on {curve['n_windows']} test windows "
          f"in {curve_seconds:.1f} s (skipped: {curve['skipped']})")
    curve_files = (Path(out_curve).as_posix(), (Path(plots_dir) / EVALUATE_FIGURES["context_curve"]).as_posix())
    table = results_table(results, list(baselines), list(models), best, curve=curve, curve_files=curve_files,
                          warnings=warnings)
    with clock("sample"):
        sample = sample_markdown(p, datasets["test"], models, device) if out_sample else None
    clock.start("write")
    # every declared output in one group: a failure or a signal before the end leaves the old set whole
    with atomic_outputs():
        write_json(out_json, out)
        write_json(out_headline, headline(out, list(models)))
        write_json(out_curve, curve)
        write_text(out_md, table)
        make_figures(results, scores, list(baselines), label, plots_dir, live_dir, best=best, curve=curve)
        if out_sample:
            write_text(out_sample, sample)
        if out_per_article:
            write_json(out_per_article, {"split_id": datasets["test"].split_id, "best_baseline": best,
                                         "reference_model": reference, "test": per_article(scores, splits, "test")})
    clock.stop("write")
    # timings change on every run: logged (logs/evaluate.jsonl), never written into results.md
    log_run("evaluate", {**clock.summary(), "predictors": len(predictors), "curve_windows": curve["n_windows"]})
    return out


main = stage_main(run, __doc__, data="data_dir", paths={
    "--models": "models_dir", "--live": "live_dir", "--metrics": "out_json", "--headline": "out_headline",
    "--curve": "out_curve", "--report": "out_md", "--sample": "out_sample", "--figures": "plots_dir",
    "--per-article": "out_per_article"})


if __name__ == "__main__":
    main()
