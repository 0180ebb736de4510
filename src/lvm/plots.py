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


def memory_slots_figure(stats: dict, path) -> None:
    """memory_gru reads: top-1 reads per slot (histogram) and cumulative read mass over slots."""
    first, second = stats["first"], stats["second"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    counts = first["counts"]
    axes[0].hist(counts, bins=50, color=MODEL_COLOR)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("reads for which the slot is the top-1 slot (per-step reads, test split)")
    axes[0].set_ylabel("slots")
    s = first["summary"]
    axes[0].set_title(f"{s['reads']:,} per-step reads over {s['slots']} slots; "
                      f"{s['slots_never_top1']} slots never top-1", fontsize=9)
    for kind, color in (("first", MODEL_COLOR), ("second", "#d62728")):
        mass = stats[kind]["mass"]
        cum = np.cumsum(np.sort(mass / mass.sum())[::-1])
        s = stats[kind]["summary"]
        label = {"first": "per-step reads", "second": "final read"}[kind]
        axes[1].plot(np.arange(1, cum.size + 1), cum, color=color,
                     label=f"{label}: 50% in {s['slots_for_50pct_mass']}, 90% in {s['slots_for_90pct_mass']} slots")
    axes[1].plot([1, counts.size], [1 / counts.size, 1], color=BASELINE_COLOR, ls="--", label="uniform")
    for level in (0.5, 0.9):
        axes[1].axhline(level, color="black", lw=0.5, ls=":")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("slots, most-read first")
    axes[1].set_ylabel("share of read mass (sum of softmax weights)")
    axes[1].legend(fontsize=8)
    fig.suptitle("memory_gru: how the content-addressed reads use the learned slots")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hierarchy_figure(sal: dict, path) -> None:
    """hierarchical_gru: gradient-norm share per context position and per chunk, grad x input per chunk."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    L = sal["context_length"]
    pos = np.asarray(sal["position_share"])
    axes[0].plot(np.arange(-L, 0), pos, color=MODEL_COLOR, marker=".", ms=3)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("context position (−1 = the vector just before the target)")
    axes[0].set_ylabel("share of ||d cos(pred, next) / d x_t||")
    axes[0].set_title("per position (mean share per window)", fontsize=9)
    n = sal["n_chunks"]
    x = np.arange(n)
    labels = [f"{i + 1}" for i in range(n)]
    axes[1].bar(x - 0.2, sal["chunk_share"], width=0.4, color=MODEL_COLOR, label="gradient-norm share")
    ax2 = axes[1].twinx()
    ax2.bar(x + 0.2, sal["chunk_grad_x_input"], width=0.4, color="#ff7f0e",
            label="grad × input: first-order change of the cosine if the chunk were zeroed")
    ax2.axhline(0, color="black", lw=0.5)
    axes[1].set_xticks(x, labels)
    axes[1].set_xlabel(f"chunk of {sal['chunk_size']} vectors (1 = oldest, {n} = most recent)")
    axes[1].set_ylabel("gradient-norm share")
    ax2.set_ylabel("grad × input (signed)")
    handles = axes[1].get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    axes[1].legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    fig.suptitle(f"hierarchical_gru: saliency of cos(prediction, true next) on {sal['windows']} test windows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
