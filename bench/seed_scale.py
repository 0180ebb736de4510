"""A stand-in for the original experiments' data: 630,000 vectors of 768-D in 15,000 articles, in the
layout a user's own file has (the keys ingest writes), so the whole pipeline can be run and timed at
that scale (docs/scaling.md, "The original's scale, end to end").

    python bench/seed_scale.py                                   # data/scale/vectors.npz, ~2 GB, ~1 min
    python bench/seed_scale.py --rows 20000 --articles 500 --out /tmp/small.npz
    python bench/seed_scale.py --lengths shard                   # the shard's own article lengths
    dvc exp run -S data.vectors=data/scale/vectors.npz ...       # the run docs/scaling.md times

Keys: vectors f32 [N, D] (unit norm), article_indices and chunk_indices int64, concept_texts and
article_titles as fixed-width unicode (readable with allow_pickle=False). Stored uncompressed, so the
vectors can be memory-mapped (train.mmap).

Article lengths (--lengths):
- `lognormal` (default): lognormal with mean --rows/--articles (42 at the defaults) and sigma
  --sigma (1.1), scaled so they sum to exactly --rows (each >= 2). At the defaults ~9% of the
  articles have >= 101 chunks: the long tail the original's 42-chunk mean hides.
- `shard`: lengths drawn (with replacement) from the article lengths of --shard (the default
  corpus's vectors file: mean ~397) until --rows rows are filled; the article count follows.

Vectors with structure a model can learn, unit norm, the same for one seed on every machine (numpy's
PCG64 streams, float64 arithmetic, one generator per article so the blocks written do not matter):

    v[a, t] = normalise(topic_weight * topic[a] + drift_weight * W z[a, t] + noise_weight * e[a, t])
    z[a, t] = rho * z[a, t-1] + sqrt(1 - rho^2) * u[a, t]          (an AR(1) latent, --latent dims)

topic[a] a random unit direction per article (which many vectors of context estimate better than
few), W a fixed random [latent, D] projection with orthonormal rows, z's scale 1/sqrt(latent) per
dimension, e ~ N(0, I/D), u ~ N(0, I/latent). Copying the last vector, the context's mean and the
best predictor (topic + rho W z[t-1]) then score clearly apart, so training has something to find.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import REPO

sys.path.insert(0, str(REPO / "src"))
from lvm.data import count_windows  # noqa: E402  (after src/ is on the path)
from lvm.io import StreamedArray, save_npz  # noqa: E402

CONTEXTS = (20, 50, 100)  # the window counts docs/data.md quotes for this length distribution


def lognormal_lengths(rows: int, articles: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """`articles` lengths >= 2 that sum to exactly `rows`, lognormal with mean rows/articles."""
    if rows < 2 * articles:
        raise SystemExit(f"error: --rows {rows} is less than 2 per article ({articles} articles)")
    mean = rows / articles
    draw = rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, articles)
    lengths = 2 + draw * (rows - 2 * articles) / draw.sum()  # >= 2 each, sums to rows before rounding
    out = np.floor(lengths).astype(np.int64)
    short = rows - int(out.sum())
    # the largest remainders get the missing rows (stable order: ties go to the earlier article)
    out[np.argsort(-(lengths - out), kind="stable")[:short]] += 1
    return out


def shard_lengths(rows: int, shard: Path, rng: np.random.Generator) -> np.ndarray:
    """Lengths drawn from the shard's article lengths until `rows` are filled (the last one cut)."""
    if not shard.is_file():
        raise SystemExit(f"error: --shard {shard}: not found (run `dvc repro ingest` first)")
    with np.load(shard, allow_pickle=False) as z:
        _, counts = np.unique(z["article_indices"], return_counts=True)
    draw = rng.choice(counts, size=rows // max(1, int(counts.min())) + 1)
    cum = np.cumsum(draw)
    n = int(np.searchsorted(cum, rows)) + 1
    out = draw[:n].astype(np.int64)
    out[-1] -= int(cum[n - 1]) - rows
    return out[out > 0]


def window_counts(lengths: np.ndarray, contexts=CONTEXTS) -> dict:
    """Per context L: the articles long enough for one window (>= L+1 chunks) and the stride-1
    windows they hold (each target at position >= L of its article: n - L per article)."""
    return {str(L): {"articles": int((lengths > L).sum()), "windows": int(count_windows(lengths, L, 1).sum()),
                     "rows_in_those_articles": int(lengths[lengths > L].sum())} for L in contexts}


def narrowest(strings: np.ndarray) -> np.ndarray:
    """np.char.add sizes its result for the longest possible join: cut it to the longest actual one."""
    return strings.astype(f"<U{max(1, int(np.char.str_len(strings).max()))}")


def article_vectors(a: int, n: int, seed: int, projection: np.ndarray, args) -> np.ndarray:
    rng = np.random.default_rng([seed, 1, a])
    latent, dim = projection.shape
    topic = rng.standard_normal(dim)
    topic /= np.linalg.norm(topic)
    shocks = rng.standard_normal((n, latent)) / np.sqrt(latent)
    z = np.empty_like(shocks)
    z[0] = shocks[0]
    keep = np.sqrt(1 - args.rho ** 2)
    for t in range(1, n):  # an AR(1) recurrence: n steps of a [latent] vector
        z[t] = args.rho * z[t - 1] + keep * shocks[t]
    noise = rng.standard_normal((n, dim)) / np.sqrt(dim)
    v = args.topic_weight * topic + args.drift_weight * (z @ projection) + args.noise_weight * noise
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=630_000)
    ap.add_argument("--articles", type=int, default=15_000, help="lognormal lengths only")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--lengths", choices=("lognormal", "shard"), default="lognormal")
    ap.add_argument("--sigma", type=float, default=1.1, help="lognormal lengths: sigma of log length")
    ap.add_argument("--shard", type=Path, default=REPO / "data" / "corpus" / "vectors.npz")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--rho", type=float, default=0.9)
    ap.add_argument("--topic-weight", type=float, default=1.0)
    ap.add_argument("--drift-weight", type=float, default=0.8)
    ap.add_argument("--noise-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "data" / "scale" / "vectors.npz")
    args = ap.parse_args(argv)
    if not 0 <= args.rho < 1:
        raise SystemExit(f"error: --rho must be in [0, 1), got {args.rho}")
    if args.latent > args.dim:
        raise SystemExit(f"error: --latent {args.latent} must be <= --dim {args.dim}")
    t0 = time.perf_counter()
    rng = np.random.default_rng([args.seed, 0])
    lengths = (lognormal_lengths(args.rows, args.articles, args.sigma, rng) if args.lengths == "lognormal"
               else shard_lengths(args.rows, args.shard, rng))
    # orthonormal rows: W z keeps z's norm, so drift_weight is the drift's share of the norm
    projection = np.linalg.qr(rng.standard_normal((args.dim, args.latent)))[0].T
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    article = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    chunk = np.arange(args.rows, dtype=np.int64) - np.repeat(starts, lengths)

    def vector_blocks():
        for a, n in enumerate(lengths):
            yield article_vectors(a, int(n), args.seed, projection, args)

    texts = np.char.add(np.char.add("article ", article.astype(str)), np.char.add(" chunk ", chunk.astype(str)))
    titles = np.char.add("synthetic article ", np.arange(len(lengths)).astype(str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(args.out, compress=False,
             vectors=StreamedArray((args.rows, args.dim), np.float32, vector_blocks()),
             article_indices=article, chunk_indices=chunk,
             concept_texts=narrowest(texts), article_titles=narrowest(titles))
    stats = {"rows": args.rows, "articles": int(len(lengths)), "dim": args.dim, "lengths": args.lengths,
             "length_mean": round(float(lengths.mean()), 2), "length_median": float(np.median(lengths)),
             "length_max": int(lengths.max()), "window_counts": window_counts(lengths),
             "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
             "seconds": round(time.perf_counter() - t0, 1), "bytes": args.out.stat().st_size}
    stats_path = args.out.with_name(args.out.stem + "_stats.json")
    stats_path.write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps({k: stats[k] for k in ("rows", "articles", "length_mean", "length_max", "window_counts",
                                             "seconds", "bytes")}, indent=1))
    print(f"wrote {args.out} and {stats_path}")


if __name__ == "__main__":
    main()
