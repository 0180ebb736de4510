"""Article-level K-fold cross-validation: every long-enough article tested once, pooled into one
paired comparison over all of them.

    dvc exp run --queue -S export.folds=10 -S 'export.fold=0,1,2,3,4,5,6,7,8,9'
    dvc queue start -j 1                      # wait: dvc queue status (fold 0 reuses the committed run)
    dvc exp show --json -A > metrics/crossval_runs.json
    python -m lvm.crossval                    # metrics/crossval.{json,md}, plots/crossval.png, and the record
                                              # metrics/crossval_folds.json (folds pooled so far: commit it)
    make docs                                 # shows the table in the README and docs/experiments.md

Each fold is one experiment of the whole pipeline (export with export.fold = k, the four train stages,
evaluate), so a fold's test articles are scored only by models that never saw them, and the best
baseline of each fold is chosen on that fold's val articles. The evaluate stage of every fold writes
metrics/per_article.json: per test article, the sum of each predictor's per-window scores and the
number of windows. Pooled over the folds these are every article's sums, and the paired article
bootstrap of a mean difference needs nothing else (lvm.metrics.group_sums_ci draws articles exactly as
the per-window bootstrap does), so the intervals here are the ones evaluate would give if one test
split held all the articles.

Why a queue and not a foreach stage in dvc.yaml: `dvc repro` runs every stage of every dvc.yaml, so
K copies of the pipeline would multiply `make pipeline`'s time by K; as experiments the folds run only
when asked, resume after an interruption (`dvc queue start` again) and each fold can be inspected with
`dvc exp show` / `dvc exp apply`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from lvm import LvmError
from lvm.entry import stage

IN_JSON = "metrics/crossval_runs.json"
FOLDS_JSON = "metrics/crossval_folds.json"  # every pooled fold's per_article.json and params, committed
OUT_JSON = "metrics/crossval.json"
OUT_MD = "metrics/crossval.md"
OUT_FIGURE = "plots/crossval.png"
PER_ARTICLE = "metrics/per_article.json"  # evaluate's --per-article in dvc.yaml
METADATA = "data/ctx100/metadata_ctx100.json"  # export_ctx100's metrics in dvc.yaml (${windows})
METRICS = (("cosine", "cosine", "cosine"), ("recip_cand_rank", "cand_mrr", "candidate MRR"))


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _without_fold(params: dict) -> dict:
    return {**params, "export": {k: v for k, v in (params.get("export") or {}).items() if k != "fold"}}


def vectors_md5(data: dict, params: dict) -> str | None:
    """The md5 DVC recorded for the run's vectors file (data.vectors, a dependency of export_ctx100):
    folds of one cross-validation must come from the same file, bit for bit, not only the same params
    (the default corpus is re-encoded on a fresh clone, and bf16 and fp32 CPUs encode other bits)."""
    path = _get(params, "data", "vectors")
    dep = (data.get("deps") or {}).get(path) if path else None
    return dep.get("hash") if isinstance(dep, dict) else None


def code_md5(data: dict) -> dict:
    """{path: md5} of the run's source files among its stages' deps (src/...): folds trained by other
    code are other experiments, even with the same params."""
    return {path: dep.get("hash") for path, dep in sorted((data.get("deps") or {}).items())
            if path.startswith("src/") and isinstance(dep, dict)}


def read_per_article(rev: str, path: str = PER_ARTICLE) -> dict | None:
    """The file as committed in `rev` (an experiment's commit holds its git-tracked outputs), or None."""
    r = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def collect(show: list, read=read_per_article, recorded: list[dict] | None = None, partial: bool = False) -> dict:
    """{"folds": K, "runs": [one per fold, by fold], "skipped": [...]} from `dvc exp show --json` and the
    fold runs recorded by an earlier call (FOLDS_JSON: experiments live in one clone's git refs, the
    record travels with the repository, so the folds of several sessions pool). `partial`: pool the
    folds there are (the table says how many) instead of failing on a missing one."""
    found, skipped = list(recorded or []), []
    for entry in show:
        for exp in entry.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state", "success")
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = _get(data, "params", "params.yaml", "data") or {}
                name = rev.get("name") or str(rev.get("rev", "?"))[:7]
                folds, fold = _get(params, "export", "folds"), _get(params, "export", "fold")
                if state != "success" or rev.get("error") or not folds:
                    skipped.append(f"{name}: {state if state != 'success' else 'no export.folds'}")
                    continue
                per_article = read(rev["rev"])
                if per_article is None:
                    skipped.append(f"{name}: no {PER_ARTICLE} in its commit")
                    continue
                meta = _get(data, "metrics", METADATA, "data") or {}
                found.append({"name": name, "rev": rev["rev"], "folds": int(folds), "fold": int(fold),
                              "params": params, "per_article": per_article, "metadata": meta,
                              "vectors_md5": vectors_md5(data, params), "code_md5": code_md5(data),
                              "timestamp": data.get("timestamp") or ""})
    found = list({r["rev"]: r for r in found}.values())  # a recorded run that exp show also lists: once
    if not found:
        raise LvmError("exp show JSON: no finished experiment with export.folds > 0 and metrics/per_article.json; "
                       "run the folds first (python -m lvm.crossval --help)")
    newest = max(found, key=lambda r: r["timestamp"])
    by_fold = {}
    for r in sorted(found, key=lambda r: r["timestamp"]):
        if _without_fold(r["params"]) != _without_fold(newest["params"]):
            diff = sorted(f"{s}.{k}" for s in set(r["params"]) | set(newest["params"])
                          for k in set(r["params"].get(s) or {}) | set(newest["params"].get(s) or {})
                          if s != "overrides" and (r["params"].get(s) or {}).get(k) != (newest["params"].get(s) or {}).get(k)
                          and (s, k) != ("export", "fold"))
            skipped.append(f"{r['name']}: other params than the newest fold run ({', '.join(diff) or 'overrides'})")
            continue
        if r.get("vectors_md5") != newest.get("vectors_md5"):
            skipped.append(f"{r['name']}: other vectors than the newest fold run (md5 {str(r.get('vectors_md5'))[:8]} "
                           f"vs {str(newest.get('vectors_md5'))[:8]}: folds pool only on one vectors file; "
                           "an ingest on another CPU kind encodes other bits, docs/experiments.md)")
            continue
        if (r.get("code_md5") or {}) != (newest.get("code_md5") or {}):
            new, old = newest.get("code_md5") or {}, r.get("code_md5") or {}
            changed = sorted(f for f in set(new) | set(old) if new.get(f) != old.get(f))
            skipped.append(f"{r['name']}: other code than the newest fold run ("
                           + (", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "") if old
                              else "recorded without its source hashes") + ")")
            continue
        if r["fold"] in by_fold:
            skipped.append(f"{by_fold[r['fold']]['name']}: older run of fold {r['fold']} (kept {r['name']})")
        by_fold[r["fold"]] = r
    folds = newest["folds"]
    missing = sorted(set(range(folds)) - set(by_fold))
    if missing and not partial:
        raise LvmError(f"exp show JSON: folds {missing} of {folds} have no finished run with the newest fold run's "
                       f"params; queue them (-S export.fold={','.join(map(str, missing))})")
    runs = [by_fold[k] for k in range(folds) if k in by_fold]
    check_folds(runs, complete=not missing)
    return {"folds": folds, "runs": runs, "skipped": skipped, "missing": missing}


def check_folds(runs: list[dict], complete: bool = True) -> None:
    """Every long-enough article tested exactly once: the folds' test articles are disjoint and, where
    the export's metadata says how many articles were long enough, they are all of them."""
    seen: dict[int, int] = {}
    for r in runs:
        for a in r["per_article"]["test"]["articles"]:
            if a in seen:
                raise LvmError(f"exp show JSON: article {a} is tested in fold {seen[a]} and fold {r['fold']}: the runs "
                               "are not folds of one split (same export.seed, export.folds and data)")
            seen[a] = r["fold"]
    meta = runs[0]["metadata"]
    if complete and meta.get("total_articles") is not None:
        eligible = meta["total_articles"] - meta.get("articles_skipped_too_short", 0)
        if eligible != len(seen):
            raise LvmError(f"exp show JSON: the folds test {len(seen)} articles, the export has {eligible} long "
                           "enough: some fold is missing or from another export")


def pool(runs: list[dict]) -> dict:
    """Every article's sums, in sorted article order: {"articles", "windows", "fold", "sums": {pred:
    {metric: [...]}}, "best": {metric: [per article, the best baseline of its fold]}}."""
    rows = []
    for r in runs:
        t = r["per_article"]["test"]
        for i, a in enumerate(t["articles"]):
            rows.append((a, r["fold"], t["windows"][i], {p: {m: v[i] for m, v in s.items()} for p, s in t["sums"].items()},
                         r["per_article"]["best_baseline"], r["per_article"].get("reference_model")))
    rows.sort(key=lambda row: row[0])
    predictors = list(rows[0][3])
    return {"articles": np.array([row[0] for row in rows]), "fold": np.array([row[1] for row in rows]),
            "windows": np.array([row[2] for row in rows]),
            "sums": {p: {m: np.array([row[3][p][m] for row in rows]) for m, _, _ in METRICS} for p in predictors},
            "best": {"cosine": [row[4]["cosine"] for row in rows], "mrr": [row[4]["mrr"] for row in rows]},
            "reference_model": rows[0][5]}


def _r(x):
    return None if x is None else round(float(x), 6)


def interval(sums: np.ndarray, sizes: np.ndarray, cfg: dict) -> dict:
    from lvm.metrics import group_sums_ci

    lo, hi = group_sums_ci(sums, sizes, n_boot=cfg["n_boot"], seed=0)
    return {"mean": _r(sums.sum() / sizes.sum()), "ci_low": _r(lo), "ci_high": _r(hi),
            "mdd": None if lo is None else _r((hi - lo) / 2)}


def compare(pooled: dict, baselines: list[str], models: list[str], cfg: dict) -> dict:
    """Pooled figures per predictor, each model − its fold's best baseline, each model − the reference model."""
    sizes = pooled["windows"]
    sums = pooled["sums"]
    out = {"predictors": {p: {key: interval(sums[p][m], sizes, cfg) for m, key, _ in METRICS} for p in sums},
           "vs_best_baseline": {}, "vs_model": {}}
    for name in baselines + models:
        row = {}
        for m, key, _ in METRICS:
            best = pooled["best"]["cosine" if key == "cosine" else "mrr"]
            ref = np.array([sums[b][m][i] for i, b in enumerate(best)])
            row[key] = {**interval(sums[name][m] - ref, sizes, cfg), "baseline": sorted(set(best))}
        out["vs_best_baseline"][name] = row
    ref = pooled["reference_model"]
    for name in models:
        if ref and name != ref:
            out["vs_model"][name] = {"model": ref, **{key: interval(sums[name][m] - sums[ref][m], sizes, cfg)
                                                      for m, key, _ in METRICS}}
    return out


def article_domains(path: str, md5: str | None = None) -> dict[int, str] | None:
    """{article id: domain name} from a vectors file of named sources (lvm.sources: `domain_indices` per
    row, `domain_names`), or None for a file without them (the default shard, your own vectors). With
    `md5` (the one DVC recorded for the folds' vectors), a file with other bits is refused by name: its
    article ids would not be the folds' articles."""
    import hashlib

    file = Path(path)
    if not file.is_file():
        raise LvmError(f"{path}: no such vectors file (--domains)")
    if md5:
        h = hashlib.md5()
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != md5:
            raise LvmError(f"{path}: md5 {h.hexdigest()[:8]} is not the folds' vectors file ({md5[:8]}): "
                           "pass the file the folds were exported from (--domains)")
    with np.load(file, allow_pickle=False) as z:
        if "domain_indices" not in z.files or "domain_names" not in z.files:
            return None
        ids, first = np.unique(z["article_indices"], return_index=True)
        names = [str(n) for n in z["domain_names"]]
        return {int(a): names[int(d)] for a, d in zip(ids, z["domain_indices"][first])}


def per_domain(pooled: dict, domains: dict[int, str], baselines: list[str], models: list[str], cfg: dict) -> dict:
    """The same comparisons on each domain's articles alone (a model trained on every source against the
    best baseline of its fold, chosen on all of the fold's val): {domain: {"n_articles", "n_windows",
    "predictors": {name: cosine}, "vs_best_baseline": {model: {cosine, cand_mrr}}}}."""
    label = np.array([domains.get(int(a), "?") for a in pooled["articles"]])
    out = {}
    for domain in sorted(set(label)):
        keep = label == domain
        sub = {"articles": pooled["articles"][keep], "fold": pooled["fold"][keep], "windows": pooled["windows"][keep],
               "sums": {p: {m: v[keep] for m, v in s.items()} for p, s in pooled["sums"].items()},
               "best": {k: [b for b, k_ in zip(v, keep) if k_] for k, v in pooled["best"].items()},
               "reference_model": pooled["reference_model"]}
        res = compare(sub, baselines, models, cfg)
        out[domain] = {"n_articles": int(keep.sum()), "n_windows": int(sub["windows"].sum()),
                       "predictors": {p: res["predictors"][p]["cosine"] for p in baselines + models},
                       "vs_best_baseline": {m: res["vs_best_baseline"][m] for m in models},
                       "vs_model": res["vs_model"]}
    return out


def per_fold(pooled: dict, models: list[str], folds: list[int]) -> dict:
    """{model: [cosine difference to the fold's best baseline, per fold]}: how the folds agree."""
    sizes, sums, best = pooled["windows"], pooled["sums"], pooled["best"]["cosine"]
    out = {}
    for name in models:
        diff = sums[name]["cosine"] - np.array([sums[b]["cosine"][i] for i, b in enumerate(best)])
        out[name] = [_r(diff[pooled["fold"] == k].sum() / sizes[pooled["fold"] == k].sum()) for k in folds]
    return out


def split_predictors(runs: list[dict]) -> tuple[list[str], list[str]]:
    from lvm.baselines import BASELINES

    names = list(runs[0]["per_article"]["test"]["sums"])
    return [n for n in names if n in BASELINES], [n for n in names if n not in BASELINES]


def analyse(cv: dict, cfg: dict, domains: dict[int, str] | None = None) -> dict:
    runs = cv["runs"]
    baselines, models = split_predictors(runs)
    pooled = pool(runs)
    res = compare(pooled, baselines, models, cfg)
    # fold 0 alone is the committed single split: the same comparison on its articles, for the widths
    fold0 = pool(runs[:1])  # (the first present fold when fold 0 is missing)
    single = compare(fold0, baselines, models, cfg)
    meta = runs[0]["metadata"]
    eligible = meta["total_articles"] - meta.get("articles_skipped_too_short", 0) if "total_articles" in meta else None
    return {"folds": cv["folds"], "missing_folds": cv.get("missing", []), "eligible_articles": eligible,
            "n_articles": int(pooled["articles"].size), "n_windows": int(pooled["windows"].sum()),
            "vectors_md5": runs[0].get("vectors_md5"),
            "baselines": baselines, "models": models, "reference_model": pooled["reference_model"],
            "runs": [{"fold": r["fold"], "name": r["name"], "rev": r["rev"],
                      "test_articles": len(r["per_article"]["test"]["articles"]),
                      "test_windows": int(sum(r["per_article"]["test"]["windows"])),
                      "best_baseline": r["per_article"]["best_baseline"]} for r in runs],
            **res, "per_fold_cosine_vs_best_baseline": per_fold(pooled, models, [r["fold"] for r in runs]),
            "fold0": {"n_articles": int(fold0["articles"].size), "vs_best_baseline": single["vs_best_baseline"],
                      "vs_model": single["vs_model"]},
            **({"per_domain": per_domain(pooled, domains, baselines, models, cfg)} if domains else {}),
            "skipped": cv["skipped"]}


def _diff(d: dict) -> str:
    if d["ci_low"] is None:
        return f"{d['mean']:+.4f} [n/a]"
    return f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


def _word(d: dict, beats: str = "beats", loses: str = "loses") -> str:
    from lvm.metrics import interval_verdict

    w = interval_verdict(d["ci_low"], d["ci_high"])
    return {"beats": beats, "loses": loses, "no interval": "cannot be decided"}.get(w, w)


def _refs(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"each fold's own ({', '.join(names)})"


def table(a: dict) -> str:
    from lvm.report import fmt

    n, K = a["n_articles"], a["folds"]
    vb = a["vs_best_baseline"]
    ref_cos, ref_mrr = (_refs(vb[a["models"][0]][k]["baseline"]) for k in ("cosine", "cand_mrr"))
    partial = ([f"**Partial: {K - len(a['missing_folds'])} of {K} folds** (folds {a['missing_folds']} not yet run: "
                f"{n} of the {a['eligible_articles']} long-enough articles pooled). Queue the rest and rerun "
                "`python -m lvm.crossval`.", ""] if a["missing_folds"] else [])
    lines = partial + [
        f"{K}-fold cross-validation by article: each of the {n} long-enough articles is tested exactly once, by the "
        f"models of the one fold that never saw it ({a['n_windows']} test windows in all; each fold trains on "
        f"{K - 2}/{K} of the articles and selects on 1/{K}). Paired 95% article bootstrap over all {n} articles; "
        f"best baseline chosen on each fold's val: {ref_cos} for cosine, {ref_mrr} for candidate MRR. MDD = minimum "
        f"detectable difference (half the paired interval's width). Generated by `python -m lvm.crossval` from "
        f"`{IN_JSON}`"
        + (f"; every fold on one vectors file, md5 {a['vectors_md5'][:8]}." if a.get("vectors_md5") else "."),
        "",
        "| predictor | kind | cosine [95% CI] | vs best baseline [95% CI] | MDD | cand. MRR [95% CI] "
        "| vs best baseline [95% CI] | MDD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in a["baselines"] + a["models"]:
        p, v = a["predictors"][name], vb[name]
        kind = "baseline" if name in a["baselines"] else "model"
        lines.append(f"| {name} | {kind} | {p['cosine']['mean']:.4f} [{p['cosine']['ci_low']:.4f}, {p['cosine']['ci_high']:.4f}] "
                     f"| {_diff(v['cosine'])} | {fmt(v['cosine']['mdd'])} "
                     f"| {p['cand_mrr']['mean']:.4f} [{p['cand_mrr']['ci_low']:.4f}, {p['cand_mrr']['ci_high']:.4f}] "
                     f"| {_diff(v['cand_mrr'])} | {fmt(v['cand_mrr']['mdd'])} |")
    ref = a["reference_model"]
    if a["vs_model"]:
        lines += ["", f"| model − {ref} (same windows) | cosine diff [95% CI] | MDD | cand. MRR diff [95% CI] | MDD |",
                  "|---|---|---|---|---|"]
        for name, v in a["vs_model"].items():
            lines.append(f"| {name} | {_diff(v['cosine'])} | {fmt(v['cosine']['mdd'])} | {_diff(v['cand_mrr'])} "
                         f"| {fmt(v['cand_mrr']['mdd'])} |")
    lines.append("")
    for key, label in (("cosine", "cosine"), ("cand_mrr", "candidate MRR")):
        parts = [f"{m} {_word(vb[m][key])} ({_diff(vb[m][key])}; MDD {fmt(vb[m][key]['mdd'])})" for m in a["models"]]
        lines += [f"Pooled test {label} minus the best baseline: " + "; ".join(parts) + ".", ""]
        if a["vs_model"]:
            parts = [f"{m} {_word(v[key], f'beats {ref}', f'loses to {ref}')} ({_diff(v[key])}; MDD {fmt(v[key]['mdd'])})"
                     for m, v in a["vs_model"].items()]
            lines += [f"Pooled test {label}, model − {ref}: " + "; ".join(parts) + ".", ""]
    f0 = a["fold0"]
    widths = [(m, vb[m]["cosine"], f0["vs_best_baseline"][m]["cosine"]) for m in a["models"]]
    lines += [f"Against the single split (fold 0 = the committed pipeline's {f0['n_articles']} test articles), the "
              "interval of the cosine difference to the best baseline: " + "; ".join(
                  f"{m} {2 * s['mdd']:.4f} → {2 * p['mdd']:.4f} wide" for m, p, s in widths if s["mdd"] is not None) + ".",
              "", "Per fold (cosine minus the fold's best baseline; each fold holds 1/K of the articles, so each is "
              "as noisy as the single split):", "",
              "| model | " + " | ".join(f"fold {r['fold']}" for r in a["runs"]) + " |", "|---|" + "---:|" * len(a["runs"])]
    for m, vals in a["per_fold_cosine_vs_best_baseline"].items():
        lines.append(f"| {m} | " + " | ".join(f"{v:+.4f}" for v in vals) + " |")
    lines.append("")
    if a.get("per_domain"):
        lines += domain_table(a)
    if a["skipped"]:
        lines += ["Not pooled: " + "; ".join(a["skipped"]) + ".", ""]
    return "\n".join(lines)


def domain_table(a: dict) -> list[str]:
    """Per domain: does a model trained on all sources beat its fold's best baseline within each one?"""
    from lvm.report import fmt

    dom = a["per_domain"]
    lines = ["Per domain (each article's source; the models trained on all of them, the best baseline of each "
             "fold chosen on all of its val): test cosine minus the best baseline, paired 95% article bootstrap "
             "inside the domain, MDD.", "",
             "| domain | articles | windows | best baseline cosine | " + " | ".join(f"{m} − best baseline" for m in a["models"])
             + " |", "|---|---:|---:|---:|" + "---|" * len(a["models"])]
    for d, v in dom.items():
        best = v["vs_best_baseline"][a["models"][0]]["cosine"]["baseline"]  # the folds' choices among its articles
        base = " / ".join(f"{b} {v['predictors'][b]['mean']:.4f}" for b in best)
        lines.append(f"| {d} | {v['n_articles']} | {v['n_windows']:,} | {base} | " + " | ".join(
            f"{_diff(v['vs_best_baseline'][m]['cosine'])} {_word(v['vs_best_baseline'][m]['cosine'])}, MDD "
            f"{fmt(v['vs_best_baseline'][m]['cosine']['mdd'])}" for m in a["models"]) + " |")
    ref = a["reference_model"]
    if any(v["vs_model"] for v in dom.values()):
        others = [m for m in a["models"] if m != ref]
        lines += ["", f"| domain | " + " | ".join(f"{m} − {ref}" for m in others) + " |", "|---|" + "---|" * len(others)]
        for d, v in dom.items():
            lines.append(f"| {d} | " + " | ".join(f"{_diff(v['vs_model'][m]['cosine'])} MDD {fmt(v['vs_model'][m]['cosine']['mdd'])}"
                                                 for m in others) + " |")
    return lines + [""]


def figure(a: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lvm.plots import save_figure

    ref = a["reference_model"]
    rows = [(f"{m} − best baseline", a["vs_best_baseline"][m]["cosine"], a["fold0"]["vs_best_baseline"][m]["cosine"])
            for m in a["models"] if a["vs_best_baseline"][m]["cosine"]["mean"] > -0.05]
    rows += [(f"{m} − {ref}", v["cosine"], a["fold0"]["vs_model"][m]["cosine"]) for m, v in a["vs_model"].items()
             if m in a["models"] and v["cosine"]["mean"] > -0.05]
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(rows) + 1.6))
    for i, (label, pooled, single) in enumerate(rows):
        for d, dy, color, name in ((single, 0.15, "#9e9e9e", f"fold 0 alone ({a['fold0']['n_articles']} articles)"),
                                   (pooled, -0.15, "#1f77b4", f"{a['folds']} folds pooled ({a['n_articles']} articles)")):
            if d["ci_low"] is not None:
                ax.errorbar(d["mean"], i + dy, xerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]], fmt="o",
                            color=color, capsize=3, label=name if i == 0 else None)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("test cosine difference, paired 95% interval by article")
    ax.set_title("Cross-validation: every article tested once (models with a difference below -0.05 left out)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def run(in_json: str = IN_JSON, out_json: str = OUT_JSON, out_md: str = OUT_MD, out_figure: str = OUT_FIGURE,
        params: str = "params.yaml", folds_json: str = FOLDS_JSON, partial: bool = False,
        domains: str = "auto") -> dict:
    from lvm.config import load_params
    from lvm.io import atomic_outputs, read_exp_show, write_json, write_text

    show = read_exp_show(in_json)
    record = Path(folds_json)
    recorded = list(json.loads(record.read_text())["runs"]) if record.is_file() else []
    cv = collect(show, recorded=recorded, partial=partial)
    vectors = _get(cv["runs"][-1]["params"], "data", "vectors")
    if domains == "auto":  # the folds' own vectors file, when it is here with the bits they were exported from
        auto = vectors and Path(vectors).is_file()
        try:
            labels = article_domains(vectors, cv["runs"][-1].get("vectors_md5")) if auto else None
        except LvmError as e:
            print(f"crossval: no per-domain table ({e})")
            labels = None
    else:
        labels = None if domains == "none" else article_domains(domains, cv["runs"][-1].get("vectors_md5"))
    a = analyse(cv, load_params(params)["evaluate"], labels)
    text = table(a)
    with atomic_outputs():
        write_json(folds_json, {"runs": [{k: r.get(k) for k in ("name", "rev", "folds", "fold", "params", "per_article",
                                                                 "metadata", "vectors_md5", "code_md5", "timestamp")}
                                         for r in cv["runs"]]})
        write_json(out_json, a)
        write_text(out_md, text)
        figure(a, out_figure)
    print(text)
    return a


@stage
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=IN_JSON, help=f"recorded `dvc exp show --json` ({IN_JSON})")
    parser.add_argument("--out", default=OUT_JSON)
    parser.add_argument("--md", default=OUT_MD)
    parser.add_argument("--figure", default=OUT_FIGURE)
    parser.add_argument("--params", default="params.yaml", help="evaluate.n_boot is read from it")
    parser.add_argument("--folds-record", default=FOLDS_JSON,
                        help=f"fold runs pooled before (read and rewritten; {FOLDS_JSON})")
    parser.add_argument("--partial", action="store_true",
                        help="pool the folds that have run so far (the table says which are missing)")
    parser.add_argument("--domains", default="auto",
                        help="vectors file whose domain labels (named sources) split the table per domain; auto: the "
                             "folds' data.vectors when it is here with the md5 they recorded; none: no such table")
    args = parser.parse_args(argv)
    run(args.json, args.out, args.md, args.figure, args.params, args.folds_record, args.partial, args.domains)


if __name__ == "__main__":
    main()
