"""Ablation and data-scale runs for one experiment model, scored like the evaluate stage.

    python -m lvm.ablation                       # each lever on/off -> metrics/ablation.{json,md}
    python -m lvm.ablation --data-scale          # 25/50/100% of train articles -> metrics/data_scale.json,
                                                 #   plots/data_scale.png
    python -m lvm.ablation --data-scale --fractions 0.125 0.25 0.5 1   # a longer curve (a larger corpus)

Every run trains `--model` (default gru, the train_baseline model) with params.yaml plus one
variant's overrides into a scratch directory, then scores the prediction after the whole context
on val and test exactly as `dvc repro evaluate` does: the paired per-window difference to the best
baseline chosen on val (cosine and candidate-only reciprocal rank), 95% article-bootstrap interval.
Baselines are fitted once on the full train split, so every run is compared with the same reference.
Not a DVC stage: it reads the exported splits and writes only the files named above (recorded
results, like the context-length sweep).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lvm import LvmError
from lvm.entry import stage
from lvm.config import for_experiment, load_params
from lvm.pipeline import experiments as pipeline_experiments
from lvm.pipeline import windows_dir
from lvm.data import WindowDataset
from lvm.io import write_json, write_text
from lvm.runtime import set_threads


# (name, what it tests, overrides on top of the ablated stage's setting: params.yaml with its
# `overrides.<experiment>`). The first row is that setting as committed.
LEVERS = [
    ("default", "the stage's setting as committed", {}),
    ("targets=last", "one target per window instead of every position", {"train.targets": "last"}),
    ("anchor=none", "no baseline anchor: the head predicts the whole vector", {"model.anchor": "none"}),
    ("anchor=last", "anchored on the last context vector instead of the decayed mean", {"model.anchor": "last"}),
    ("normalize=none", "raw embedding space", {"train.normalize": "none"}),
    ("normalize=robust", "per-dimension robust scaling (median, 0.7413 IQR) fitted on train", {"train.normalize": "robust"}),
    ("dropout=0", "no dropout (the setting of hierarchical_gru and memory_gru)", {"model.dropout": 0.0}),
    ("ema=0", "no weight averaging: the last step's weights are validated and saved", {"train.ema": 0.0}),
    ("loss=mse", "MSE on the raw output (the original's loss)", {"train.loss": "mse"}),
    ("loss=cosine+infonce", "cosine + 0.05 InfoNCE, near-duplicate negatives masked", {"train.loss": "cosine+infonce"}),
    ("loss=cosine+0.5 infonce", "cosine + 0.5 InfoNCE (retrieval-leaning)",
     {"train.loss": "cosine+infonce", "train.infonce_weight": 0.5}),
]


def experiment_rows(p: dict, ablated: str, model: str) -> list[tuple[str, str, dict]]:
    """One row per other experiment of params.yaml's `overrides` that trains the same model
    (train_retrieval's gru): its keys as levers (on the shared params, as its stage applies them)."""
    rows = []
    same_model = [e for e, m in pipeline_experiments().items() if m == model and e != ablated]
    for experiment, sections in p["overrides"].items():
        if experiment not in same_model:
            continue
        flat = {f"{section}.{key}": value for section, keys in sections.items() for key, value in keys.items()}
        what = ", ".join(f"{k.split('.')[1]}={v}" for k, v in flat.items())
        rows.append((experiment, f"train_{experiment}'s setting (`overrides.{experiment}`): {what}", flat))
    return rows
DATA_SCALE = (0.25, 0.5, 1.0)


def apply(p: dict, overrides: dict) -> dict:
    p = copy.deepcopy(p)
    for key, value in overrides.items():
        section, name = key.split(".")
        p[section][name] = value
    return p


def distinct(p: dict, overrides: dict) -> bool:
    """False when an override only restates params.yaml (that lever row would repeat the default)."""
    return all(p[k.split(".")[0]][k.split(".")[1]] != v for k, v in overrides.items())


def score_run(p: dict, model: str, data_dir: str, reference: dict) -> dict:
    """Train one variant in a scratch directory and score its best checkpoint on val and test."""
    from lvm.checkpoints import load_model
    from lvm.evaluation import compare_to_best, model_predictor, score_all
    from lvm.hardware import resolve_precision
    from lvm.training import run

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = run(p, model, "ablation", data_dir=data_dir, models_dir=f"{tmp}/models", metrics_dir=f"{tmp}/metrics",
                live_dir=f"{tmp}/live", progress=False)
        seconds = time.perf_counter() - t0
        net = load_model(f"{tmp}/models/ablation/best.pt")
    row = {"train": {k: m[k] for k in ("best_epoch", "epochs", "best_val_cosine", "best_target_passes",
                                         "unique_train_targets", "train_articles")},
           "train_seconds": round(seconds, 1)}
    cfg = p["evaluate"]
    cpu = torch.device("cpu")
    scores = {**reference["scores"], **score_all({model: model_predictor(net, cfg, cpu, resolve_precision(
        p["train"]["precision"], cpu))}, reference["splits"], cfg)}
    compare_to_best(scores, reference["best"], reference["splits"], cfg, names=[model])
    for split, s in scores[model].items():
        row[split] = {"cosine": s.summary["cosine_mean"], "cand_mrr": s.summary["cand_mrr"],
                      "par": s.summary["par_mean"], **s.summary["vs_best_baseline"]}
    return row


def reference(p: dict, data_dir: str) -> dict:
    """Baselines fitted on train, scored on val/test, and the best one chosen on val (as evaluate)."""
    from lvm.evaluation import baseline_predictors, choose_best_baseline, eval_splits, fit_baselines, score_all

    cfg = p["evaluate"]
    splits = eval_splits({s: WindowDataset(Path(data_dir) / f"{s}.npz") for s in ("val", "test")})
    baselines = fit_baselines(cfg, WindowDataset(Path(data_dir) / "train.npz"))
    scores = score_all(baseline_predictors(baselines, cfg), splits, cfg)
    best = choose_best_baseline(scores, list(baselines))
    return {"splits": splits, "scores": scores, "best": best,
            "baselines": {n: {s: {"cosine": r.summary["cosine_mean"], "cand_mrr": r.summary["cand_mrr"]}
                              for s, r in by_split.items()} for n, by_split in scores.items()}}


def ci(v: dict, key: str) -> str:
    lo, hi = v[f"{key}_ci_low"], v[f"{key}_ci_high"]
    interval = "" if lo is None else f" [{lo:+.4f}, {hi:+.4f}]"
    return f"{v[key]:+.4f}{interval}"


def ablation_table(model: str, experiment: str, rows: list[dict], ref: dict, p: dict) -> str:
    best = ref["best"]
    t = p["train"]
    lines = [
        f"Ablation of `{model}` (train_{experiment}) at the default budget: each row changes one lever of "
        f"its setting in params.yaml (targets {t['targets']}, anchor {p['model']['anchor']}, normalize {t['normalize']}, "
        f"loss {t['loss']}, weight EMA {t['ema']}, dropout {p['model']['dropout']}, {t['max_train_windows']} windows/epoch, up to {t['epochs']} epochs, patience "
        f"{t['patience']}). Scored like `evaluate`: prediction after the whole context; the difference is "
        f"paired per window against the best baseline chosen on val ({best['cosine']} for cosine, "
        f"{best['mrr']} for candidate MRR), 95% bootstrap over test articles. Generated by `python -m lvm.ablation`.",
        "",
        "| variant | what changes | val cosine | test cosine | test vs best baseline [95% CI] | test cand. MRR "
        "| cand. MRR vs best baseline [95% CI] | best epoch (passes) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v, te = r["val"], r["test"]
        lines.append(f"| {r['name']} | {r['what']} | {v['cosine']:.4f} | {te['cosine']:.4f} | "
                     f"{ci(te, 'cosine_diff')} | {te['cand_mrr']:.4f} | {ci(te, 'cand_mrr_diff')} | "
                     f"{r['train']['best_epoch']} ({r['train']['best_target_passes']:.1f}) |")
    b = ref["baselines"]
    lines += ["", f"Best baselines: {best['cosine']} val cosine {b[best['cosine']]['val']['cosine']:.4f}, "
              f"test {b[best['cosine']]['test']['cosine']:.4f}; {best['mrr']} test candidate MRR "
              f"{b[best['mrr']]['test']['cand_mrr']:.4f}.", ""]
    return "\n".join(lines)


def data_scale_table(rows: list[dict], ref: dict, command: str = "python -m lvm.ablation --data-scale",
                     figure: str = "plots/data_scale.png") -> str:
    best = ref["best"]
    lines = [f"Data scale: `{rows[0]['model']}` at the default setting trained on a seeded share of the train "
             f"articles (same val/test); paired difference to {best['cosine']} (cosine) and {best['mrr']} "
             f"(candidate MRR) on test. Generated by `{command}`; figure `{figure}`.", "",
             "| train articles | train targets | best epoch (passes) | val cosine | test cosine | vs best baseline [95% CI] "
             "| cand. MRR vs best baseline [95% CI] |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, te = r["train"], r["test"]
        lines.append(f"| {t['train_articles']} | {t['unique_train_targets']:,} | {t['best_epoch']} "
                     f"({t['best_target_passes']:.1f}) | {r['val']['cosine']:.4f} | {te['cosine']:.4f} | "
                     f"{ci(te, 'cosine_diff')} | {ci(te, 'cand_mrr_diff')} |")
    return "\n".join(lines) + "\n"


def data_scale_figure(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["train"]["unique_train_targets"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "cosine_diff", "test cosine"), (axes[1], "cand_mrr_diff", "test candidate MRR")):
        y = [r["test"][key] for r in rows]
        lo = [r["test"][f"{key}_ci_low"] for r in rows]
        hi = [r["test"][f"{key}_ci_high"] for r in rows]
        ax.errorbar(x, y, yerr=[np.subtract(y, lo), np.subtract(hi, y)], fmt="o-", capsize=4)
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{n:,}\n({r['train']['train_articles']} art.)" for n, r in zip(x, rows)])
        ax.minorticks_off()
        ax.set_xlabel("train targets (train articles)")
        ax.set_ylabel(f"Δ {label}")
        ax.set_title(f"{label}: model − {rows[0]['test']['cosine_baseline' if key == 'cosine_diff' else 'mrr_baseline']}",
                     fontsize=10)
    fig.suptitle(f"{rows[0]['model']} vs the best baseline (chosen on val) as the train split grows; 95% paired CI")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@stage
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gru")
    ap.add_argument("--experiment", default="baseline",
                    help="whose setting is the default row: params.yaml with overrides.<experiment> (train_baseline's gru)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data-dir", help="the windows' directory (default: dvc.yaml's vars: windows)")
    ap.add_argument("--data-scale", action="store_true", help="train on 25/50/100%% of the train articles")
    ap.add_argument("--fractions", nargs="+", type=float, default=list(DATA_SCALE), metavar="F",
                    help="with --data-scale: the shares of the train articles, each in (0, 1] (default: %(default)s)")
    ap.add_argument("--only", nargs="*", help="lever names to run (default: all)")
    ap.add_argument("--out-dir", default="metrics")
    ap.add_argument("--plots-dir", default="plots")
    args = ap.parse_args(argv)
    if any(not 0 < f <= 1 for f in args.fractions):
        raise LvmError(f"--fractions: each share of the train articles must be in (0, 1], got {args.fractions}")
    shared = load_params(args.params)
    p = for_experiment(shared, args.experiment)  # the ablated stage's own setting
    args.data_dir = args.data_dir or windows_dir()
    # before any parallel work, as the train stage does: the OpenMP threads take the denormal
    # flushing of the thread that creates them, so set later it would reach the main thread only
    set_threads(p["train"]["threads"])
    ref = reference(p, args.data_dir)
    rows = []
    if args.data_scale:
        variants = [(f"article_fraction={f}", f"{f:.0%} of the train articles", {"train.article_fraction": f}, p)
                    for f in sorted(set(args.fractions))]
    else:
        variants = [(*v, p) for v in LEVERS if not v[2] or distinct(p, v[2])]
        # another experiment: all its keys, on the shared params as its own stage has them
        variants += [(*v, shared) for v in experiment_rows(shared, args.experiment, args.model) if apply(shared, v[2]) != p]
        variants = [v for v in variants if not args.only or v[0] in args.only]
    for name, what, overrides, base in variants:
        print(f"--- {name}: {what}", flush=True)
        row = {"name": name, "what": what, "model": args.model, "overrides": overrides,
               **score_run(apply(base, overrides), args.model, args.data_dir, ref)}
        te = row["test"]
        print(f"{name}: val {row['val']['cosine']:.4f} test {te['cosine']:.4f} vs {te['cosine_baseline']} "
              f"{ci(te, 'cosine_diff')}  cand MRR {te['cand_mrr']:.4f} {ci(te, 'cand_mrr_diff')}", flush=True)
        rows.append(row)
    out = {"model": args.model, "best_baseline": ref["best"], "baselines": ref["baselines"], "runs": rows}
    out_dir = Path(args.out_dir)
    if args.data_scale:
        write_json(out_dir / "data_scale.json", out)
        figure = str(Path(args.plots_dir) / "data_scale.png")
        command = "python -m lvm.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
        write_text(out_dir / "data_scale.md", data_scale_table(rows, ref, command.strip(), figure))
        data_scale_figure(rows, figure)
    else:
        write_json(out_dir / "ablation.json", out)
        write_text(out_dir / "ablation.md", ablation_table(args.model, args.experiment, rows, ref, p))
    # docs/experiments.md shows both tables (whichever exist) between its ablation markers: `make docs`
    parts = [f.read_text().strip() for f in (out_dir / "ablation.md", out_dir / "data_scale.md") if f.is_file()]
    write_text(out_dir / "ablation_section.md", "\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
