"""Figures a person opens directly (PNG, no CDN): comparison bars, histograms, direction, curves."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BASELINE_COLOR, MODEL_COLOR = "#9e9e9e", "#1f77b4"


def _bars(ax, names, results, key, lo, hi, baselines, title):
    vals = [results[n]["test"][key] for n in names]
    err = np.array([[v - results[n]["test"][lo], results[n]["test"][hi] - v] for n, v in zip(names, vals)]).T
    colors = [BASELINE_COLOR if n in baselines else MODEL_COLOR for n in names]
    ax.bar(range(len(names)), vals, yerr=err, color=colors, capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_title(title)
    ax.axhline(0, color="black", lw=0.5)


def make_figures(results, per_window, baselines, experiments: dict, plots_dir, live_dir) -> None:
    """`experiments` maps experiment name (dvclive folder) -> model name (key in `results`)."""
    models = list(experiments.values())
    out = Path(plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(baselines) + list(models)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _bars(axes[0], names, results, "cosine_mean", "cosine_ci_low", "cosine_ci_high", baselines,
          "test cosine(pred, next) — 95% CI by article")
    _bars(axes[1], names, results, "r_at_5", "r_at_5_ci_low", "r_at_5_ci_high", baselines,
          "test R@5 (true next among all test vectors)")
    fig.suptitle("Models (blue) vs no-training baselines (grey)")
    fig.tight_layout()
    fig.savefig(out / "test_comparison.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.2))
    bins = np.linspace(-0.3, 1.0, 60)
    for n in names:
        ax.hist(per_window[(n, "test")]["cosine"], bins=bins, histtype="step", lw=1.5,
                ls="--" if n in baselines else "-", label=n)
    ax.set_xlabel("cosine(prediction, true next vector), test windows")
    ax.set_ylabel("windows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cosine_hist.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.2))
    _bars(ax, [n for n in names if n != "copy_last"], results, "directional_mean", "directional_ci_low",
          "directional_ci_high", baselines, "cos(pred, next) − cos(pred, last context vector); < 0 leans to copying")
    fig.tight_layout()
    fig.savefig(out / "directional.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for experiment, model in experiments.items():
        for ax, metric in zip(axes, ("val/cosine", "val/loss")):
            rows = read_tsv(Path(live_dir) / experiment / "plots" / "metrics" / f"{metric}.tsv")
            if rows:
                ax.plot([int(r["step"]) + 1 for r in rows], [float(r[metric.split("/")[-1]]) for r in rows],
                        marker="o", ms=3, label=f"{model} ({experiment})")
    for ax, metric in zip(axes, ("val cosine", "val loss")):
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)


def read_tsv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))
