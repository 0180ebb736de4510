"""Stage evaluate: every trained model and every no-training baseline on the held-out splits.

Writes metrics/evaluate.json ({predictor: {split: {metric: value}}}), metrics/results.md (also
spliced into README.md between the results markers), PNG figures under plots/ and
metrics/inspect_sample.md: a few windows of one test article decoded to text (lvm.inspect).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from lvm import LvmError
from lvm.baselines import make_baselines, predict_batches
from lvm.cli import stage_main
from lvm.data import WindowDataset
from lvm.io import write_json, write_text
from lvm.metrics import evaluate_predictions
from lvm.train import DATA_DIR, EXPERIMENTS, load_model, predict, resolve_device, set_threads

EVAL_SPLITS = ("val", "test")
OUT_JSON = "metrics/evaluate.json"
OUT_MD = "metrics/results.md"
OUT_SAMPLE = "metrics/inspect_sample.md"
SAMPLE_WINDOWS, SAMPLE_K = 3, 5
PLOTS = "plots"
README = "README.md"
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"


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
        b.finalize()
        print(f"baseline {name}: fitted on {len(train1)} train windows {b.params()}")
    return baselines


def score(pred: np.ndarray, ds: WindowDataset, cfg: dict):
    vectors = ds.vectors_np
    return evaluate_predictions(
        pred, vectors[ds.targets_rows()], vectors[ds.last_context_rows()], ds.window_articles(),
        vectors, ds.article_indices, ds.targets_rows(), n_boot=cfg["n_boot"], seed=0,
        return_per_window=True)


def run(p: dict, data_dir: str = DATA_DIR, models_dir: str = "models", out_json: str = OUT_JSON,
        out_md: str = OUT_MD, plots_dir: str = PLOTS, readme: str | None = README,
        live_dir: str = "dvclive", out_sample: str | None = OUT_SAMPLE) -> dict:
    cfg = p["evaluate"]
    set_threads(p["train"]["threads"])
    device = resolve_device(p["train"]["device"])
    datasets = {s: WindowDataset(Path(data_dir) / f"{s}.npz") for s in ("train", *EVAL_SPLITS)}
    check_disjoint(datasets)
    results, per_window = {}, {}
    baselines = fit_baselines(cfg, datasets["train"])
    predictors = {name: (lambda ds, b=b: predict_batches(b, context_chunks(ds, cfg["batch_size"])))
                  for name, b in baselines.items()}
    models = {}
    for experiment, model_name in EXPERIMENTS.items():  # reported under the model's name
        path = Path(models_dir) / experiment / "best.pt"
        if not path.is_file():
            raise LvmError(f"{path}: missing; run `dvc repro train_{experiment}`")
        model = models[model_name] = load_model(path, device)
        predictors[model_name] = (lambda ds, m=model: predict(m, ds, cfg["batch_size"], device,
                                                              p["train"]["precision"]))
    for name, fn in predictors.items():
        results[name] = {}
        for split in EVAL_SPLITS:
            with torch.no_grad():
                summary, pw = score(fn(datasets[split]), datasets[split], cfg)
            results[name][split] = summary
            per_window[(name, split)] = pw
        t = results[name]["test"]
        print(f"{name:>16}: test cosine {t['cosine_mean']:.4f} [{t['cosine_ci_low']:.4f}, "
              f"{t['cosine_ci_high']:.4f}]  R@5 {t['r_at_5']:.4f}  MRR {t['mrr']:.4f}  "
              f"dir {t['directional_mean']:+.4f}")
    write_json(out_json, results)
    table = results_table(results, list(baselines), list(EXPERIMENTS.values()))
    write_text(out_md, table)
    if readme and Path(readme).is_file():
        splice_readme(readme, table)
    from lvm.plots import make_figures

    make_figures(results, per_window, list(baselines), EXPERIMENTS, plots_dir, live_dir)
    if out_sample:
        write_text(out_sample, inspect_sample(p, datasets["test"], models, device))
    return results


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
    predictors.update({name: model_predictor(m, device, p["train"]["precision"]) for name, m in models.items()})
    records = inspect_windows(corpus, test, article_windows(test, article, SAMPLE_WINDOWS), predictors, SAMPLE_K)
    note = (f"Generated by the evaluate stage: {len(records)} windows of test article {article} "
            f"({corpus.title(article)}), never seen in training. For each predictor: cos(prediction, true "
            f"next vector) and the {SAMPLE_K} corpus chunks nearest to the prediction, searched over all "
            f"{len(corpus.texts)} rows of `{path}` (the true next chunk and the context included; `where` "
            "tags them: TARGET, ctx-k = k-th last context chunk, same article, or another article). "
            "More windows: `lvm inspect --model models/<exp>/best.pt --article N`.")
    return format_markdown(records, note)


def verdict(results: dict, baselines: list[str], models: list[str], metric: str) -> str:
    """Which model (if any) beats the best baseline on `metric`, with non-overlapping 95% intervals."""
    key = "cosine_mean" if metric == "cosine" else metric
    best_b = max(baselines, key=lambda b: results[b]["test"][key])
    lo, hi = (f"{metric}_ci_low", f"{metric}_ci_high")
    b = results[best_b]["test"]
    winners = [m for m in models if results[m]["test"][key] > b[key]]
    clear = [m for m in winners if lo in b and results[m]["test"][lo] > b[hi]]
    if not winners:
        return f"No model beats the best baseline ({best_b}, {b[key]:.4f}) on test {metric}."
    return (f"Above the best baseline ({best_b}, {b[key]:.4f}) on test {metric}: "
            + ", ".join(f"{m} ({results[m]['test'][key]:.4f})" for m in winners)
            + ("; intervals do not overlap for " + ", ".join(clear) if clear else
               "; but the 95% intervals overlap, so the difference is not established") + ".")


def results_table(results: dict, baselines: list[str], models: list[str]) -> str:
    n = results[models[0] if models else baselines[0]]["test"]
    lines = [
        f"Held-out **test** split: {int(n['n_windows'])} windows from {int(n['n_articles'])} articles "
        "never seen in training. Intervals: 95% bootstrap over articles. `dir` = cos(pred, next) − "
        "cos(pred, last context vector); negative means the predictor leans toward copying.",
        "",
        "| predictor | kind | cosine [95% CI] | R@1 | R@5 [95% CI] | R@10 | MRR | article MRR | contrastive acc | dir [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in baselines + models:
        t = results[name]["test"]
        kind = "baseline" if name in baselines else "model"
        lines.append(
            f"| {name} | {kind} | {t['cosine_mean']:.4f} [{t['cosine_ci_low']:.4f}, {t['cosine_ci_high']:.4f}] "
            f"| {t['r_at_1']:.4f} | {t['r_at_5']:.4f} [{t['r_at_5_ci_low']:.4f}, {t['r_at_5_ci_high']:.4f}] "
            f"| {t['r_at_10']:.4f} | {t['mrr']:.4f} | {t['article_mrr']:.4f} | {t['contrastive_acc']:.4f} "
            f"| {t['directional_mean']:+.4f} [{t['directional_ci_low']:+.4f}, {t['directional_ci_high']:+.4f}] |")
    lines += ["", verdict(results, baselines, models, "cosine"), "", verdict(results, baselines, models, "r_at_5"), ""]
    return "\n".join(lines)


def splice_readme(readme: str, table: str, start: str = MARK_START, end: str = MARK_END) -> None:
    text = Path(readme).read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        write_text(readme, pattern.sub(lambda _: f"{start}\n{table.strip()}\n{end}", text))


main = stage_main(run, __doc__)


if __name__ == "__main__":
    main()
