"""Figures a person opens directly (PNG, no CDN): paired differences, histograms, direction, curves."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lvm.io import atomic_path  # noqa: E402

BASELINE_COLOR, MODEL_COLOR = "#9e9e9e", "#1f77b4"
# The figures' file names inside the directory a stage's `--figures` names (dvc.yaml declares each
# one among the stage's plots; tests/test_pipeline.py checks the stage writes exactly those).
EVALUATE_FIGURES = {"comparison": "test_comparison.png", "histogram": "cosine_hist.png",
                    "directional": "directional.png", "training": "training_curves.png",
                    "context_curve": "context_curve.png"}
ANALYZE_FIGURES = {"memory": "memory_slots.png", "hierarchy": "hierarchy_saliency.png"}


def save_figure(fig, path) -> None:
    """PNG through a temp file: inside the stage's atomic_outputs() group it is renamed into place with
    the stage's other outputs, never alone (and an interrupted savefig leaves no half-written PNG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _err(v, lo, hi):
    """Whisker lengths; 0 where the interval is missing (too few articles): the dot stands alone."""
    return [0.0 if lo is None else v - lo, 0.0 if hi is None else hi - v]


def _bars(ax, names, results, key, lo, hi, baselines, title, ylabel):
    vals = [results[n]["test"][key] for n in names]
    err = np.array([_err(v, results[n]["test"][lo], results[n]["test"][hi]) for n, v in zip(names, vals)]).T
    colors = [BASELINE_COLOR if n in baselines else MODEL_COLOR for n in names]
    ax.bar(range(len(names)), vals, yerr=err, color=colors, capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="black", lw=0.5)


def _paired(ax, names, results, key, ref, baselines, title):
    """Dot = mean paired difference to `ref` on test, whisker = its 95% article-bootstrap interval."""
    names = [n for n in names if n != ref]
    y = np.arange(len(names))[::-1]  # first name on top
    for yi, n in zip(y, names):
        v = results[n]["test"]["vs_best_baseline"]
        d, lo, hi = v[key], v[key + "_ci_low"], v[key + "_ci_high"]
        color = BASELINE_COLOR if n in baselines else MODEL_COLOR
        ax.errorbar([d], [yi], xerr=np.array(_err(d, lo, hi))[:, None], fmt="o", color=color, capsize=4, ms=6)
        ci = "n/a" if lo is None else f"[{lo:+.4f}, {hi:+.4f}]"
        ax.annotate(f"{d:+.4f} {ci}", (d, yi), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7,
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.margins(x=0.25)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"test difference to {ref} (> 0: better than it)")


def make_figures(results, scores, baselines, experiments: dict, plots_dir, live_dir, best: dict,
                 curve: dict | None = None) -> None:
    """`experiments` maps experiment name (dvclive folder) -> model name (key in `results`); `scores` is
    lvm.evaluation.score_all's (per-window arrays for the histogram); `best` the
    best baselines on val ({"cosine": name, "mrr": name}); `curve` the per-position curve (or None)."""
    models = list(experiments.values())
    out = Path(plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(baselines) + list(models)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    _paired(axes[0], names, results, "cosine_diff", best["cosine"], baselines,
            f"cosine(pred, next) minus {best['cosine']}'s, per window")
    _paired(axes[1], names, results, "cand_mrr_diff", best["mrr"], baselines,
            f"reciprocal candidate-only rank minus {best['mrr']}'s")
    fig.suptitle("Paired difference to the best baseline (chosen on val), mean and 95% interval by article;\n"
                 "models blue, other baselines grey; a model beats it only where the whole whisker is right of 0",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / EVALUATE_FIGURES["comparison"])

    fig, ax = plt.subplots(figsize=(8, 4.2))
    bins = np.linspace(-0.3, 1.0, 60)
    for n in names:
        ax.hist(scores[n]["test"].per_window["cosine"], bins=bins, histtype="step", lw=1.5,
                ls="--" if n in baselines else "-", label=n)
    ax.set_xlabel("cosine(prediction, true next vector), test windows")
    ax.set_ylabel("windows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / EVALUATE_FIGURES["histogram"])

    fig, ax = plt.subplots(figsize=(8, 4.2))
    _bars(ax, names, results, "directional_mean", "directional_ci_low", "directional_ci_high", baselines,
          "test: cos(pred, next) − cos(pred, last context vector); < 0 leans to copying\n"
          "(copy_last = cos(last, next) − 1 by construction)", "mean directional score [95% CI]")
    fig.tight_layout()
    save_figure(fig, out / EVALUATE_FIGURES["directional"])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = set()
    for experiment, model in experiments.items():
        for ax, metric in zip(axes, ("val/cosine", "val/loss")):
            rows = read_tsv(Path(live_dir) / experiment / "plots" / "metrics" / f"{metric}.tsv")
            if rows:
                x = [int(r["step"]) + 1 for r in rows]
                epochs.update(x)
                ax.plot(x, [float(r[metric.split("/")[-1]]) for r in rows],
                        marker="o", ms=3, label=f"{model} ({experiment})")
    for ax, metric, ylabel in zip(axes, ("val cosine", "val loss"),
                                  ("mean cosine(pred, next), val", "training loss on val (train.loss)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        # epochs are whole numbers: tick each one (a locator alone still picks 0.5 steps on a short run)
        if 0 < len(epochs) <= 20:
            ax.set_xticks(sorted(epochs))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / EVALUATE_FIGURES["training"])

    if curve:
        context_curve_figure(curve, names, baselines, out / EVALUATE_FIGURES["context_curve"])


def context_curve_figure(curve: dict, names, baselines, path) -> None:
    """Test cosine against the number of (most recent) context vectors a predictor sees."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(names):
        row = curve.get(n) or {}
        if not row:
            continue
        ks = sorted(int(k) for k in row)
        mean = np.array([row[str(k)]["cosine_mean"] for k in ks])
        ax.plot(ks, mean, marker="o", ms=3, color=colors[i % len(colors)], ls="--" if n in baselines else "-",
                label=n + (" (baseline)" if n in baselines else ""))
        if all(row[str(k)]["ci_low"] is not None for k in ks):
            ax.fill_between(ks, [row[str(k)]["ci_low"] for k in ks], [row[str(k)]["ci_high"] for k in ks],
                            color=colors[i % len(colors)], alpha=0.12, lw=0)
    ax.set_xscale("log")
    ks = sorted({int(k) for n in names for k in (curve.get(n) or {})})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k = context vectors the predictor sees (the most recent k; log scale)")
    ax.set_ylabel("mean test cosine(pred, next) [95% CI]")
    ax.set_title(f"Per-position curve: {curve['n_windows']} test targets, {curve['n_articles']} articles",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


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
    # Uniform reads give a cumulative share of x / S after x slots: a curve on the log x-axis, so draw it
    # through every x (two end points joined by a straight segment would pass below the real curves).
    slots = np.arange(1, counts.size + 1)
    axes[1].plot(slots, slots / counts.size, color=BASELINE_COLOR, ls="--", label="uniform (x / slots)")
    for level in (0.5, 0.9):
        axes[1].axhline(level, color="black", lw=0.5, ls=":")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("slots, most-read first")
    axes[1].set_ylabel("share of read mass (sum of softmax weights)")
    axes[1].legend(fontsize=8)
    fig.suptitle("memory_gru: how the content-addressed reads use the learned slots")
    fig.tight_layout()
    save_figure(fig, path)


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
    save_figure(fig, path)
