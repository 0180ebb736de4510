"""Markdown of the evaluation: the results tables, verdict lines and the per-position curve table
that the evaluate stage writes to metrics/results.md (`make docs` copies it into the README), and the
number formats lvm.ablation and lvm.crossval share with them."""
from __future__ import annotations

from lvm.metrics import interval_verdict


def fmt(x, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def fmt_ci(lo, hi, spec: str = ".4f", n_articles: int | None = None) -> str:
    if lo is None or hi is None:
        return f"[n/a: {int(n_articles)} article{'s' if n_articles != 1 else ''}]" if n_articles is not None \
            else "[n/a]"
    return f"[{lo:{spec}}, {hi:{spec}}]"


def fmt_diff(v: dict, key: str, n_articles: int | None = None) -> str:
    return f"{v[key]:+.4f} {fmt_ci(v[key + '_ci_low'], v[key + '_ci_high'], '+.4f', n_articles)}"


def half_width(lo, hi) -> float | None:
    """The minimum detectable difference of a paired comparison: half its interval's width. A true
    difference smaller than it usually reads as "no significant difference" at this many articles."""
    return None if lo is None or hi is None else (hi - lo) / 2


def decided(v: dict, key: str) -> tuple[str, str]:
    """(verdict word, "diff [lo, hi]; MDD x") of the paired difference v[key] with its interval."""
    lo, hi = v[key + "_ci_low"], v[key + "_ci_high"]
    word = interval_verdict(lo, hi)
    if word == "no interval":
        word = "cannot be decided (too few articles for an interval)"
    mdd = half_width(lo, hi)
    return word, fmt_diff(v, key) + ("" if mdd is None else f"; MDD {mdd:.4f}")


MDD_NOTE = ("MDD = minimum detectable difference, half the paired interval's width at {n} articles: a true "
            "difference smaller than it usually reads as no significant difference here.")


def verdict(results: dict, baselines: list[str], models: list[str], metric: str, best: dict,
            split: str = "test") -> str:
    """One sentence per metric ("cosine" or "mrr"), from the paired intervals of each model's
    difference to the best baseline chosen on val: "beats" only when the whole interval is above 0."""
    key = {"cosine": "cosine_diff", "mrr": "cand_mrr_diff"}[metric]
    label = {"cosine": "cosine", "mrr": "candidate MRR"}[metric]
    ref = best[metric]
    parts, winners = [], []
    for m in models:
        word, figures = decided(results[m][split]["vs_best_baseline"], key)
        if word == "beats":
            winners.append(m)
        parts.append(f"{m} {word} ({figures})")
    head = (f"Test {label}, paired difference to {ref} (the best baseline on val {label}), 95% article "
            "bootstrap: ")
    tail = (f"Beats it: {', '.join(winners)}." if winners else "No model beats it.")
    return head + ("; ".join(parts) + ". " if parts else "") + tail


def model_table(results: dict, models: list[str], split: str = "test") -> list[str]:
    """Each model − the reference model (summary["vs_model"]) on the same windows: a table and one verdict
    line per metric. [] when no model carries the comparison."""
    rows = [m for m in models if "vs_model" in results[m][split]]
    if not rows:
        return []
    ref = results[rows[0]][split]["vs_model"]["model"]
    n_art = int(results[ref][split]["n_articles"])
    lines = [f"Model against model: each model's per-window score minus {ref}'s on the same {split} windows, "
             f"95% article bootstrap (paired); MDD = minimum detectable difference (half the interval's width).",
             "", f"| model − {ref} | cosine diff [95% CI] | cosine MDD | cand. MRR diff [95% CI] | MRR MDD |",
             "|---|---|---|---|---|"]
    for m in rows:
        v = results[m][split]["vs_model"]
        mdd = [half_width(v[f"{k}_ci_low"], v[f"{k}_ci_high"]) for k in ("cosine_diff", "cand_mrr_diff")]
        lines.append(f"| {m} | {fmt_diff(v, 'cosine_diff', n_art)} | {fmt(mdd[0])} | "
                     f"{fmt_diff(v, 'cand_mrr_diff', n_art)} | {fmt(mdd[1])} |")
    for key, label in (("cosine_diff", "cosine"), ("cand_mrr_diff", "candidate MRR")):
        parts = []
        for m in rows:
            word, figures = decided(results[m][split]["vs_model"], key)
            word = {"beats": f"beats {ref}", "loses": f"loses to {ref}"}.get(word, word)
            parts.append(f"{m} {word} ({figures})")
        lines += ["", f"{split.capitalize()} {label}, model − {ref}, paired: " + "; ".join(parts) + "."]
    return lines + [""]


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
    lines += model_table(results, models) + [MDD_NOTE.format(n=n_art), ""]
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
