"""Context-length sweep: turn a recorded `dvc exp show --json` into one figure and one table.

    dvc exp run --queue evaluate -S 'data.context_length=5,20,50,100,200' \\
        -S export.min_target_position=200 -S export.val_stride=5 -S export.overlap=0
    dvc queue start -j 1                      # wait: dvc queue status
    dvc exp show --json > metrics/context_sweep.json
    python -m lvm.sweep                       # plots/context_sweep.png, metrics/context_sweep.md
    make docs                                 # shows the table in docs/experiments.md

Only finished experiments run with the same export.min_target_position P (default: the largest P
among them) and L <= P are compared: with P >= every L, each L is scored on exactly the same test targets. The script checks
that instead of trusting it: copy-last (whose prediction does not depend on L) must score the same at
every L, and the number of test windows must be equal; otherwise it stops with an error.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lvm import LvmError
from lvm.entry import stage

IN_JSON = "metrics/context_sweep.json"
OUT_FIGURE = "plots/context_sweep.png"
OUT_MD = "metrics/context_sweep.md"
METRICS = (("cosine_mean", "test cosine"), ("r_at_5", "test R@5"))


# evaluate.json renamed its full-bank retrieval keys (candidate-only retrieval came in beside them);
# recorded sweeps hold the old names, so new runs are read under the old ones: one table for both.
RENAMED = {"r_at_5": "r_at_5_full_bank", "r_at_5_ci_low": "r_at_5_full_bank_ci_low",
           "r_at_5_ci_high": "r_at_5_full_bank_ci_high"}


def _predictors_only(ev: dict) -> dict:
    """{predictor: {split: metrics}} without evaluate.json's other top-level keys (best_baseline),
    with the full-bank keys also under their old names."""
    out = {}
    for name, splits in ev.items():
        if not isinstance(splits, dict) or not isinstance(splits.get("test"), dict):
            continue
        out[name] = {split: {**m, **{old: m[new] for old, new in RENAMED.items() if new in m and old not in m}}
                     for split, m in splits.items()}
    return out


def _rows(show: list) -> list[dict]:
    """Every finished experiment row of `dvc exp show --json` (experiments under each baseline commit).
    Queued, running and failed ones are left out: a running one shows its temp workspace's old metrics."""
    rows = []
    for entry in show:
        for exp in entry.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state", "success")
            for rev in exp.get("revs") or []:
                rows.append({**rev, "state": state})
    return rows


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def collect(show: list, min_target_position: int | None = None) -> dict:
    """{'runs': [{name, L, P, evaluate, train}], 'P': P, 'skipped': [...]} of the comparable runs, by L."""
    found, skipped = [], []
    for rev in _rows(show):
        data = rev.get("data") or {}
        params = _get(data, "params", "params.yaml", "data") or {}
        ev = _get(data, "metrics", "metrics/evaluate.json", "data")
        name = rev.get("name") or rev.get("rev", "?")[:7]
        L = _get(params, "data", "context_length")
        P = _get(params, "export", "min_target_position") or 0
        if rev["state"] != "success" or not ev or L is None or rev.get("error"):
            skipped.append(f"{name}: {rev['state']}, not finished with evaluate metrics")
            continue
        # every train stage's metrics, whichever experiments the run's dvc.yaml had
        train = {path[len("metrics/train_"):-len(".json")]: (m or {}).get("data") or {}
                 for path, m in (data.get("metrics") or {}).items()
                 if path.startswith("metrics/train_") and path.endswith(".json")}
        found.append({"name": name, "rev": rev.get("rev"), "L": int(L), "P": int(P), "evaluate": _predictors_only(ev), "train": train,
                      "timestamp": data.get("timestamp") or "", "params": params})
    if not found:
        raise LvmError("exp show JSON: no experiment with metrics/evaluate.json; run the sweep first")
    if min_target_position is None:
        min_target_position = max(r["P"] for r in found)
    runs = {}
    for r in sorted(found, key=lambda r: r["timestamp"]):
        if r["P"] != min_target_position:
            skipped.append(f"{r['name']}: export.min_target_position {r['P']} != {min_target_position} "
                           "(other test targets)")
        elif r["L"] > min_target_position:
            skipped.append(f"{r['name']}: data.context_length {r['L']} > export.min_target_position")
        else:
            if r["L"] in runs:
                skipped.append(f"{runs[r['L']]['name']}: older run at L={r['L']} (kept {r['name']})")
            runs[r["L"]] = r
    if not runs:
        raise LvmError(f"exp show JSON: no run with export.min_target_position = {min_target_position}")
    runs = [runs[L] for L in sorted(runs)]
    check_same_targets(runs)
    return {"runs": runs, "P": min_target_position, "skipped": skipped}


def check_same_targets(runs: list[dict]) -> None:
    """Copy-last ignores all but the last context vector: equal targets <=> equal copy-last scores."""
    for key in ("n_windows", "n_articles", "cosine_mean", "r_at_5"):
        values = {r["L"]: r["evaluate"]["copy_last"]["test"][key] for r in runs}
        if max(values.values()) - min(values.values()) > 1e-9:
            raise LvmError(f"exp show JSON: copy_last test {key} differs across context lengths ({values}): the "
                           "runs were not scored on the same targets; set export.min_target_position to the "
                           "largest data.context_length in every run")


def predictors(runs: list[dict]) -> tuple[list[str], list[str]]:
    from lvm.baselines import BASELINES

    ev = runs[0]["evaluate"]
    known = set(BASELINES)  # every other predictor is an experiment's model (gru_retrieval too)
    baselines = [n for n in ev if n in known]
    models = [n for n in ev if n not in known]
    return baselines, models


def table(sweep: dict) -> str:
    runs, P = sweep["runs"], sweep["P"]
    baselines, models = predictors(runs)
    t = runs[0]["evaluate"]["copy_last"]["test"]
    train_windows = sorted({r["train"]["baseline"].get("train_windows") for r in runs} - {None})
    epochs = sorted({_get(r["params"], "train", "epochs") for r in runs} - {None})
    lines = [
        f"Every L is scored on the same {int(t['n_windows'])} test targets ({int(t['n_articles'])} held-out "
        f"articles, targets at chunk positions >= {P}; copy-last scores identically at every L, checked). "
        f"Training targets are the same for every L too: {', '.join(map(str, train_windows))} stride-1 windows "
        f"(positions >= {P} of the train articles), of which each run samples train.max_train_windows per epoch "
        f"for at most {', '.join(map(str, epochs))} epochs (train.patience stops earlier). Generated by `python -m lvm.sweep` from "
        f"`{IN_JSON}` (`dvc exp show --json`).",
        "",
    ]
    Ls = [r["L"] for r in runs]
    for key, label in METRICS:
        lines += [f"| {label} | " + " | ".join(f"L={L}" for L in Ls) + " |",
                  "|---|" + "---:|" * len(Ls)]
        for name in models + baselines:
            kind = "" if name in models else " (baseline)"
            vals = [r["evaluate"][name]["test"][key] for r in runs]
            best = max(vals)
            lines.append(f"| {name}{kind} | " + " | ".join(
                (f"**{v:.4f}**" if v == best and len(set(vals)) > 1 else f"{v:.4f}") for v in vals) + " |")
        lines.append("")
    paired = paired_rows(runs, models)
    if paired:
        chosen = {c[0] for cells in paired.values() for c in cells}
        one = next(iter(chosen)) if len(chosen) == 1 else None
        lines += [f"| test cosine minus the best baseline ({one + ' at every L' if one else 'per L'}, chosen on val), "
                  "paired 95% interval by article | " + " | ".join(f"L={L}" for L in Ls) + " |",
                  "|---|" + "---:|" * len(Ls)]
        for name, cells in paired.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" + ("" if one else f" vs {base}") for base, d, lo, hi in cells) + " |")
        lines.append("")
    lines += same_model_table(sweep.get("same_model") or {})
    threads = {(r["L"], exp): m["threads"] for r in runs for exp, m in r["train"].items() if m.get("threads")}
    if len(set(threads.values())) > 1:  # each train stage records the count it resolved
        usual = max(set(threads.values()), key=list(threads.values()).count)
        odd = ", ".join(f"L={L} train_{exp} {n}" for (L, exp), n in sorted(threads.items()) if n != usual)
        lines += [f"Thread counts differed: {usual} for most train stages, {odd} (a `dvc queue` with -j > 1 "
                  "gives later stages more threads once other workers have finished). A run's thread count is part "
                  "of its arithmetic, so a rerun at other counts can differ in the last digits.", ""]
    if sweep["skipped"]:
        lines += ["Not in the comparison: " + "; ".join(sweep["skipped"]) + ".", ""]
    return "\n".join(lines)


def paired_rows(runs: list[dict], models: list[str]) -> dict:
    """{model: [(baseline, diff, low, high) per L]}: evaluate's paired difference to the best baseline
    (chosen on val at that L). The interval is of the difference on the same windows, so it is much
    narrower than either predictor's own interval. {} when a run predates these keys."""
    out = {}
    for name in models:
        cells = [_get(r["evaluate"], name, "test", "vs_best_baseline") for r in runs]
        if any(not c or c.get("cosine_diff") is None for c in cells):
            return {}
        out[name] = [(c["cosine_baseline"], c["cosine_diff"], c["cosine_diff_ci_low"], c["cosine_diff_ci_high"])
                     for c in cells]
    return out


def context_pairs(Ls: list[int], reference: int = 20) -> list[tuple[int, int]]:
    """(L, L') pairs to compare: each L with the next one, and the largest L <= 100 with `reference`
    (the experiments' question: does 100 vectors of context beat 20?)."""
    pairs = list(zip(Ls, Ls[1:]))
    top = max([L for L in Ls if L <= 100], default=None)
    if reference in Ls and top is not None and top > reference and (reference, top) not in pairs:
        pairs.append((reference, top))
    return pairs


def same_model_rows(runs: list[dict], models: list[str], cfg: dict, read=None) -> dict:
    """{(L, L'): {model: {cosine_diff, ci_low, ci_high, mdd}}}: each model at L' minus itself at L on the
    same test targets (every L scores the same windows), paired by article from the runs'
    metrics/per_article.json (evaluate writes it; lvm.crossval.read_per_article reads it from a run's
    commit). {} when a run has none (sweeps recorded before the file existed)."""
    from lvm.crossval import read_per_article
    from lvm.metrics import group_sums_ci

    read = read or read_per_article
    per = {}
    for r in runs:
        pa = read(r["rev"]) if r.get("rev") else None
        if pa is None:
            return {}
        per[r["L"]] = pa["test"]
    out = {}
    for a, b in context_pairs(sorted(per)):
        if per[a]["articles"] != per[b]["articles"] or per[a]["windows"] != per[b]["windows"]:
            raise LvmError(f"exp show JSON: the runs at L={a} and L={b} scored other test windows")
        sizes = np.asarray(per[a]["windows"])
        out[(a, b)] = {}
        for name in models:
            diff = np.asarray(per[b]["sums"][name]["cosine"]) - np.asarray(per[a]["sums"][name]["cosine"])
            lo, hi = group_sums_ci(diff, sizes, n_boot=cfg["n_boot"], seed=0)
            out[(a, b)][name] = {"cosine_diff": round(float(diff.sum() / sizes.sum()), 6),
                                 "ci_low": None if lo is None else round(lo, 6), "ci_high": None if hi is None else round(hi, 6),
                                 "mdd": None if lo is None else round((hi - lo) / 2, 6)}
    return out


def same_model_table(rows: dict) -> list[str]:
    from lvm.metrics import interval_verdict

    if not rows:
        return []
    pairs = list(rows)
    models = list(rows[pairs[0]])
    lines = ["| test cosine, the model at L' minus itself at L (same targets), paired 95% interval by article | "
             + " | ".join(f"{b} − {a}" for a, b in pairs) + " |", "|---|" + "---:|" * len(pairs)]
    for name in models:
        lines.append(f"| {name} | " + " | ".join(
            f"{c['cosine_diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if c["ci_low"] is not None
            else f"{c['cosine_diff']:+.4f}" for c in (rows[p][name] for p in pairs)) + " |")
    verdicts = []
    for a, b in pairs:
        parts = []
        for name in models:
            c = rows[(a, b)][name]
            word = {"beats": f"L={b} beats L={a}", "loses": f"L={b} loses to L={a}",
                    "no significant difference": "no significant difference"}.get(
                interval_verdict(c["ci_low"], c["ci_high"]), "no interval")
            parts.append(f"{name} {word}" + ("" if c["mdd"] is None else f" (MDD {c['mdd']:.4f})"))
        verdicts.append(f"L={b} vs L={a}: " + "; ".join(parts) + ".")
    return lines + [""] + verdicts + ["", "MDD = minimum detectable difference, half the paired interval's width.", ""]


def _context_axis(ax, Ls: list[int], title: str) -> None:
    ax.set_xscale("log")
    ax.set_xticks(Ls, [str(L) for L in Ls])
    ax.set_xlabel("context length L (vectors)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def figure(sweep: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sweep["runs"]
    baselines, models = predictors(runs)
    Ls = [r["L"] for r in runs]
    paired = paired_rows(runs, models)
    fig, axes = plt.subplots(1, 3 if paired else 2, figsize=(16 if paired else 11, 4.2))
    for ax, (key, label) in zip(axes, METRICS):
        for name in models + baselines:
            vals = [r["evaluate"][name]["test"][key] for r in runs]
            lo = [r["evaluate"][name]["test"].get(f"{key.replace('_mean', '')}_ci_low") for r in runs]
            hi = [r["evaluate"][name]["test"].get(f"{key.replace('_mean', '')}_ci_high") for r in runs]
            style = dict(marker="o", ms=4) if name in models else dict(ls="--", marker=".", lw=1.2)
            line, = ax.plot(Ls, vals, label=name, **style)
            if name in models and None not in lo + hi:
                ax.fill_between(Ls, lo, hi, color=line.get_color(), alpha=0.12)
        _context_axis(ax, Ls, f"{label} (same targets at every L; bands: 95% CI by article)")
    if paired:
        ax = axes[2]
        # a model far below the baseline (gru_retrieval, trained to rank) would flatten the others' curves
        off = [n for n, cells in paired.items() if max(c[1] for c in cells) < -0.05]
        for name, cells in paired.items():
            if name in off:
                continue
            line, = ax.plot(Ls, [c[1] for c in cells], marker="o", ms=4, label=name)
            ax.fill_between(Ls, [c[2] for c in cells], [c[3] for c in cells], color=line.get_color(), alpha=0.12)
        ax.axhline(0, color="k", lw=0.8)
        _context_axis(ax, Ls, "test cosine minus the best baseline at that L\n(bands: paired 95% CI by article"
                      + (f"; {', '.join(off)} below -0.05: table)" if off else ")"))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Does more context help? Models (solid) vs no-training baselines (dashed)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(in_json: str = IN_JSON, out_figure: str = OUT_FIGURE, out_md: str = OUT_MD,
        min_target_position: int | None = None) -> dict:
    from lvm.io import read_exp_show, write_text

    show = read_exp_show(in_json)
    sweep = collect(show, min_target_position)
    from lvm.config import load_params

    sweep["same_model"] = same_model_rows(sweep["runs"], predictors(sweep["runs"])[1], load_params()["evaluate"])
    figure(sweep, out_figure)
    text = table(sweep)
    write_text(out_md, text)
    print(text)
    return sweep


@stage
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=IN_JSON, help=f"recorded `dvc exp show --json` ({IN_JSON})")
    parser.add_argument("--figure", default=OUT_FIGURE)
    parser.add_argument("--md", default=OUT_MD)
    parser.add_argument("--min-target-position", type=int, default=None,
                        help="compare runs with this export.min_target_position (default: the largest in the JSON)")
    args = parser.parse_args(argv)
    run(args.json, args.figure, args.md, args.min_target_position)


if __name__ == "__main__":
    main()
