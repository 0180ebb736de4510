"""Look inside trained models: predictions decoded to text, memory-slot reads, hierarchy saliency.

* `inspect_windows`: for windows of one held-out article, the last context chunk, the true next chunk
  and the k corpus chunks nearest (cosine) to each predictor's output. The search runs over EVERY row
  of the corpus file (`data.vectors`), the true next chunk and the context itself included; each
  neighbour is tagged (TARGET, ctx-1 = the last context chunk, same article, or another article's
  title), so a prediction that merely copies its context is visible as such.
* `memory_slot_stats` (memory_gru): how the content-addressed reads spread over the learned slots.
* `hierarchy_saliency` (hierarchical_gru): how much each context chunk moves the prediction.

`lvm inspect` (lvm.cli) prints the first; the evaluate stage writes a markdown sample of it and the
analyze stage writes the other two (JSON, markdown, figures).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lvm import LvmError
from lvm.data import WindowDataset
from lvm.io import NpzReader


@dataclass
class CorpusText:
    """The corpus file's rows with their text: the search space for decoding predictions to text."""

    path: Path
    vectors: np.ndarray  # [N, D] float32, L2-normalised here
    texts: np.ndarray  # [N] str
    article: np.ndarray  # [N] article id
    chunk: np.ndarray  # [N] chunk index inside the article
    titles: dict  # article id -> title ('' when the file has no article_titles)

    def title(self, article_id: int) -> str:
        return self.titles.get(int(article_id)) or f"article {int(article_id)}"


def load_corpus_text(path, trust_pickle: bool = False) -> CorpusText:
    path = Path(path)
    with NpzReader(path, trust_pickle=trust_pickle) as r:
        if "concept_texts" not in r:
            raise LvmError(f"{path}: no 'concept_texts' key; decoding predictions to text needs the chunk texts")
        vectors = np.asarray(r.load("vectors", mmap=False), dtype=np.float32)
        texts = np.asarray(r.load("concept_texts", mmap=False)).astype(str)
        n = vectors.shape[0]
        article = (np.asarray(r.load("article_indices", mmap=False), dtype=np.int64) if "article_indices" in r
                   else np.zeros(n, np.int64))
        chunk = (np.asarray(r.load("chunk_indices", mmap=False), dtype=np.int64) if "chunk_indices" in r
                 else np.arange(n, dtype=np.int64))
        titles = np.asarray(r.load("article_titles", mmap=False)).astype(str) if "article_titles" in r else []
    if texts.shape != (n,):
        raise LvmError(f"{path}: key 'concept_texts' must have shape [{n}] (one per vector), got {texts.shape}")
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    # ingest stores titles indexed by article id
    return CorpusText(path, vectors, texts, article, chunk, {i: t for i, t in enumerate(titles)})


def nearest(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `vectors` (unit rows) with the k highest cosines to each query: (rows [n, k], cos [n, k])."""
    q = np.asarray(queries, np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    cos = q @ vectors.T
    k = min(k, vectors.shape[0])
    top = np.argpartition(-cos, k - 1, axis=1)[:, :k]
    top_cos = np.take_along_axis(cos, top, axis=1)
    order = np.lexsort((top, -top_cos), axis=1)  # by cosine, then row: deterministic on ties
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_cos, order, axis=1)


def article_windows(ds: WindowDataset, article_id: int, n: int) -> np.ndarray:
    """Up to n windows of one article of the split, evenly spaced over its targets."""
    mine = np.flatnonzero(ds.window_articles() == article_id)
    if mine.size == 0:
        have = ", ".join(str(a) for a in np.unique(ds.window_articles()))
        raise LvmError(f"--article {article_id}: not in {ds.path} (articles with windows there: {have})")
    return mine[np.unique(np.linspace(0, mine.size - 1, min(n, mine.size)).round().astype(int))]


def model_predictor(model, device="cpu", precision: str = "fp32"):
    """context [n, L, D] numpy -> predictions [n, D] numpy, as the evaluate stage computes them."""
    from lvm.hardware import autocast

    device = torch.device(device)

    def fn(ctx: np.ndarray) -> np.ndarray:
        with torch.no_grad(), autocast(device, precision):
            return model.eval()(torch.from_numpy(ctx).to(device)).float().cpu().numpy()

    return fn


def copy_last(ctx: np.ndarray) -> np.ndarray:
    return ctx[:, -1]


def inspect_windows(corpus: CorpusText, ds: WindowDataset, windows, predictors: dict, k: int = 5) -> list[dict]:
    """One record per window: article, texts of the last context and the true next chunk, and per
    predictor its cosine to the true next vector and its k nearest corpus chunks (tagged)."""
    windows = np.asarray(windows, dtype=np.int64)
    ctx, tgt = ds.batch(windows)
    ctx, tgt = ctx.numpy(), tgt.numpy()
    L = ds.context_length
    records = []
    preds = {name: fn(ctx) for name, fn in predictors.items()}
    for j, w in enumerate(windows):
        rows = ds.source_rows[ds.starts[w] + np.arange(L + 1)]  # corpus rows of context + target
        target_row, context_rows = int(rows[-1]), rows[:-1]
        unit_target = tgt[j] / max(float(np.linalg.norm(tgt[j])), 1e-12)
        if target_row >= len(corpus.texts) or float(corpus.vectors[target_row] @ unit_target) < 0.999:
            raise LvmError(f"{ds.path}: window {int(w)} does not match {corpus.path} (source_rows point at other "
                           "vectors); re-export with `dvc repro export_ctx100`")
        rec = {"window": int(w), "article": int(corpus.article[target_row]),
               "title": corpus.title(corpus.article[target_row]), "target_chunk": int(corpus.chunk[target_row]),
               "last_text": str(corpus.texts[context_rows[-1]]), "next_text": str(corpus.texts[target_row]),
               "predictors": {}}
        for name, pred in preds.items():
            p = pred[j] / max(np.linalg.norm(pred[j]), 1e-12)
            nb_rows, nb_cos = nearest(corpus.vectors, p[None], k)
            rec["predictors"][name] = {
                "cos_next": float(p @ unit_target),
                "neighbours": [{"row": int(r), "cos": float(c), "tag": _tag(corpus, int(r), target_row, context_rows),
                                "text": str(corpus.texts[r])} for r, c in zip(nb_rows[0], nb_cos[0])],
            }
        records.append(rec)
    return records


SAMPLE_WINDOWS, SAMPLE_K = 3, 5  # the evaluate stage's sample: windows of one test article, neighbours each


def sample_markdown(p: dict, test: WindowDataset, models: dict, device, windows: int = SAMPLE_WINDOWS,
                    k: int = SAMPLE_K) -> str:
    """Markdown: `windows` windows of the first test article, every model and copy-last, decoded
    (the evaluate stage's --sample)."""
    from lvm.hardware import resolve_precision

    path = p["data"]["vectors"]
    try:
        corpus = load_corpus_text(path, p["data"]["trust_pickle"])
    except LvmError as e:  # vectors without texts: the metrics stand, there is just nothing to read
        return f"No text sample: {e}\n"
    article = int(test.window_articles()[0])
    predictors = {"copy_last": copy_last}
    predictors.update({name: model_predictor(m, device, resolve_precision(p["train"]["precision"], device))
                       for name, m in models.items()})
    records = inspect_windows(corpus, test, article_windows(test, article, windows), predictors, k)
    note = (f"Generated by the evaluate stage: {len(records)} windows of test article {article} "
            f"({corpus.title(article)}), never seen in training. For each predictor: cos(prediction, true "
            f"next vector) and the {k} corpus chunks nearest to the prediction, searched over all "
            f"{len(corpus.texts)} rows of `{path}` (the true next chunk and the context included; `where` "
            "tags them: TARGET, ctx-k = k-th last context chunk, same article, or another article). "
            "More windows: `lvm inspect --model models/<exp>/best.pt --article N`.")
    return format_markdown(records, note)


def _tag(corpus: CorpusText, row: int, target_row: int, context_rows: np.ndarray) -> str:
    if row == target_row:
        return "TARGET"
    hit = np.flatnonzero(context_rows == row)
    if hit.size:
        return f"ctx-{context_rows.size - int(hit[0])}"
    if corpus.article[row] == corpus.article[target_row]:
        return f"same article, chunk {int(corpus.chunk[row])}"
    return f"other: {corpus.title(corpus.article[row])}"


def format_text(records: list[dict]) -> str:
    out = []
    for rec in records:
        out += [f"== {rec['title']} (article {rec['article']}), target = chunk {rec['target_chunk']} "
                f"(window {rec['window']})",
                f"   last context: {rec['last_text']}",
                f"   true next:    {rec['next_text']}"]
        for name, pr in rec["predictors"].items():
            out.append(f"   -- {name}: cos(pred, next) = {pr['cos_next']:.3f}; nearest corpus chunks:")
            for i, nb in enumerate(pr["neighbours"], 1):
                out.append(f"      {i}. {nb['cos']:.3f} [{nb['tag']}] {nb['text']}")
        out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_markdown(records: list[dict], note: str = "") -> str:
    out = [note, ""] if note else []
    for rec in records:
        out += [f"### {rec['title']} (article {rec['article']}), target = chunk {rec['target_chunk']}", "",
                f"- last context chunk: *{_md(rec['last_text'])}*",
                f"- true next chunk: **{_md(rec['next_text'])}**", "",
                "| predictor | cos(pred, next) | # | cos | nearest corpus chunk | where |",
                "|---|---:|---:|---:|---|---|"]
        for name, pr in rec["predictors"].items():
            for i, nb in enumerate(pr["neighbours"], 1):
                head = f"{name} | {pr['cos_next']:.3f}" if i == 1 else " | "
                out.append(f"| {head} | {i} | {nb['cos']:.3f} | {_md(nb['text'])} | {nb['tag']} |")
        out.append("")
    return "\n".join(out)


# --- memory_gru: slot reads -----------------------------------------------------------------------

def _read_stats(counts: np.ndarray, mass: np.ndarray, n_reads: int, max_weight_sum: float) -> dict:
    """Summaries of one kind of read: top-1 counts per slot (sum = n_reads) and softmax mass per slot."""
    share = mass / mass.sum()
    cum = np.cumsum(np.sort(share)[::-1])
    entropy = float(-(share[share > 0] * np.log(share[share > 0])).sum())
    return {
        "reads": int(n_reads),
        "slots": int(counts.size),
        "slots_for_50pct_mass": int(np.searchsorted(cum, 0.5) + 1),
        "slots_for_90pct_mass": int(np.searchsorted(cum, 0.9) + 1),
        "mass_entropy_nats": round(entropy, 4),
        "mass_entropy_max_nats": round(float(np.log(counts.size)), 4),
        "effective_slots": round(float(np.exp(entropy)), 1),  # exp(entropy): slots of a uniform spread
        "slots_never_top1": int((counts == 0).sum()),
        "top1_share_of_busiest_slot": round(float(counts.max() / n_reads), 4),
        "mean_max_weight_per_read": round(max_weight_sum / n_reads, 4),
    }


@torch.no_grad()
def memory_slot_stats(model, ds: WindowDataset, batch_size: int = 64) -> dict:
    """Per-slot read counts (top-1 slot of each read) and read mass (sum of softmax weights) of a
    memory_gru over every window of `ds`, for the per-step reads (L per window) and the final read
    (one per window). fp32, no autocast. Returns numpy arrays under 'counts'/'mass' plus summaries."""
    if getattr(model, "name", "") != "memory_gru":
        raise LvmError(f"memory-slot analysis needs a memory_gru checkpoint, got {getattr(model, 'name', model)!r}")
    model.eval()
    S = model.memory.shape[0]
    acc = {kind: {"counts": np.zeros(S, np.int64), "mass": np.zeros(S, np.float64), "n": 0, "max": 0.0}
           for kind in ("first", "second")}
    for _, ctx, _ in ds.batches(batch_size):
        reads = {}
        model.predict_raw(ctx, reads=reads)
        for kind, a in acc.items():
            w = reads[kind].float().reshape(-1, S)
            a["counts"] += np.bincount(w.argmax(dim=1).numpy(), minlength=S)
            a["mass"] += w.sum(dim=0).double().numpy()
            a["n"] += w.shape[0]
            a["max"] += float(w.max(dim=1).values.sum())
    out = {}
    for kind, a in acc.items():
        out[kind] = {"counts": a["counts"], "mass": a["mass"],
                     "summary": _read_stats(a["counts"], a["mass"], a["n"], a["max"])}
    return out


def slot_neighbours(model, corpus: CorpusText, slots, k: int = 3) -> list[dict]:
    """Texts of the corpus chunks nearest (cosine) to each given memory slot."""
    memory = model.memory.detach().float().numpy()
    rows, cos = nearest(corpus.vectors, memory[np.asarray(slots)], k)
    return [{"slot": int(s), "neighbours": [{"cos": round(float(c), 4), "text": str(corpus.texts[r]),
                                             "title": corpus.title(corpus.article[r])}
                                            for r, c in zip(rows[i], cos[i])]}
            for i, s in enumerate(slots)]


# --- hierarchical_gru: per-chunk saliency ---------------------------------------------------------

def hierarchy_saliency(model, ds: WindowDataset, batch_size: int = 64) -> dict:
    """Gradient saliency of cos(prediction, true next vector) with respect to each context vector.

    Per window: g_t = d cos(pred, target) / d x_t. Two measures, averaged over every window of `ds`:
    * `position_share` [L] and `chunk_share` [n_chunks]: ||g_t||_2 normalised to sum 1 per window
      (how sensitive the prediction is to each position / each of the model's chunks);
    * `chunk_grad_x_input` [n_chunks]: sum over the chunk's positions of g_t . x_t, the first-order
      change of the cosine if the chunk were zeroed (signed: > 0 means the chunk pulls the prediction
      toward the true next vector).
    Chunks are the model's own (chunk_size vectors; the first is partly zero padding when L is not a
    multiple). fp32, no autocast; the skip path from the last vector is part of the gradient.
    """
    if getattr(model, "name", "") != "hierarchical_gru":
        raise LvmError(f"hierarchy analysis needs a hierarchical_gru checkpoint, got {getattr(model, 'name', model)!r}")
    model.eval()
    L, C = ds.context_length, model.chunk_size
    pad = model.padding(L)
    chunk_of = (np.arange(L) + pad) // C
    n_chunks = int(chunk_of[-1]) + 1
    pos_share, gxi, n, cos_sum = np.zeros(L), np.zeros(n_chunks), 0, 0.0
    for _, ctx, tgt in ds.batches(batch_size):
        ctx = ctx.clone().requires_grad_(True)
        cos = F.cosine_similarity(model(ctx), tgt, dim=-1)
        (grad,) = torch.autograd.grad(cos.sum(), ctx)
        norms = grad.norm(dim=-1).double().numpy()  # [B, L]
        pos_share += (norms / np.maximum(norms.sum(axis=1, keepdims=True), 1e-30)).sum(axis=0)
        gx = (grad * ctx.detach()).sum(dim=-1).double().numpy()  # [B, L]
        gxi += np.stack([gx[:, chunk_of == c].sum(axis=1) for c in range(n_chunks)], axis=1).sum(axis=0)
        n += ctx.shape[0]
        cos_sum += float(cos.detach().sum())
    if n == 0:
        raise LvmError(f"{ds.path}: no windows to analyse")
    pos_share /= n
    chunk_share = np.array([pos_share[chunk_of == c].sum() for c in range(n_chunks)])
    return {"windows": n, "context_length": L, "chunk_size": C, "padding": pad, "n_chunks": n_chunks,
            "mean_cosine": cos_sum / n, "position_share": pos_share, "chunk_share": chunk_share,
            "chunk_grad_x_input": gxi / n}


def inspect_command(p: dict, model_paths: list[str], article: int | None, n_windows: int = 3, k: int = 5,
                    split: str = "test", data_dir: str | None = None) -> str:
    """What `lvm inspect` prints: the split's articles (no --article) or decoded predictions."""
    from lvm.checkpoints import load_model
    from lvm.hardware import resolve_device, resolve_precision
    from lvm.runtime import set_threads

    for flag, value in (("--windows", n_windows), ("--k", k)):
        if value < 1:
            raise LvmError(f"{flag}: must be >= 1, got {value}")
    from lvm.pipeline import windows_dir

    ds = WindowDataset(Path(data_dir or windows_dir()) / f"{split}.npz")
    corpus = load_corpus_text(p["data"]["vectors"], p["data"]["trust_pickle"])
    if article is None:
        ids, counts = np.unique(ds.window_articles(), return_counts=True)
        return "\n".join([f"{split} articles in {ds.path} (pass one with --article):"] +
                         [f"  {int(a):5d}  {c:5d} windows  {corpus.title(a)}" for a, c in zip(ids, counts)])
    set_threads(p["train"]["threads"])
    device = resolve_device(p["train"]["device"])
    predictors = {"copy_last": copy_last}
    for path in model_paths:  # any model, but of this split's D and L (the check evaluate uses)
        model = load_model(path, data=ds, device=device)
        name = model.name if model.name not in predictors else f"{model.name} ({path})"
        predictors[name] = model_predictor(model, device, resolve_precision(p["train"]["precision"], device))
    records = inspect_windows(corpus, ds, article_windows(ds, article, n_windows), predictors, k)
    return (f"nearest chunks: cosine search over all {len(corpus.texts)} rows of {corpus.path} (target and "
            f"context included, tagged)\n\n" + format_text(records))
