"""Stage ingest: Wikipedia wikitext (or the larger offline corpus of lvm.sources) -> concept chunks ->
sentence vectors (--out, an npz) and their stats (--stats): dvc.yaml names both."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lvm.entry import stage_main
from lvm.hardware import resolve_precision
from lvm.corpus import build_chunks, default_source, encode, load_encoder
from lvm.io import atomic_outputs, log_run, save_npz, write_json
from lvm.sources import build_source


def run(p: dict, out: str, stats_path: str) -> dict:
    cfg = p["ingest"]
    dump = cfg["source"] == "default" or cfg["source"].endswith((".xml", ".bz2"))
    t0 = time.perf_counter()
    if dump:  # the default shard or a user's dump: no domain keys, so its files stay as they were
        source = default_source() if cfg["source"] == "default" else cfg["source"]
        titles, texts, articles, chunks = build_chunks(source, cfg["max_words"], cfg["min_words"],
                                                       cfg["max_articles"])
        domain_keys, per_source = {}, None
    else:  # named sources (lvm.sources): each row's domain, each source's counts and licence
        titles, texts, articles, chunks, domains, domain_names, per_source = build_source(
            cfg["source"], cfg["max_words"], cfg["min_words"], cfg["max_articles"])
        domain_keys = {"domain_indices": domains, "domain_names": np.array(domain_names, dtype=str)}
    t_parse = time.perf_counter() - t0
    # auto: bf16 only where the CPU multiplies it natively (on an AVX2-only CPU bf16 encoded ~20 chunks/s, fp32 ~57)
    precision = resolve_precision(cfg["precision"], torch.device("cpu"), "ingest.precision")
    model = load_encoder(cfg["encoder"], precision)
    vectors = encode(model, texts, cfg["batch_size"])
    t_total = time.perf_counter() - t0
    # timings change on every run: logged (logs/ingest.jsonl), never in stats.json (a tracked output)
    words = np.array([len(t.split()) for t in texts])
    lengths = np.bincount(articles)
    stats = {
        "source": "gensim-4.4.0:" + Path(source).name if cfg["source"] == "default" else str(cfg["source"]),
        "encoder": cfg["encoder"], "precision": precision,
        "articles": len(titles), "chunks": len(texts), "vector_dim": int(vectors.shape[1]),
        "words_per_chunk_mean": round(float(words.mean()), 3),
        "chunks_per_article_median": float(np.median(lengths)),
        "articles_with_at_least_101_chunks": int((lengths >= 101).sum()),
    }
    if per_source is not None:
        stats["domains"] = domain_names  # domain_indices' values name these (the vectors file's domain_names)
        stats["sources"] = per_source
    with atomic_outputs():  # vectors and their stats change together or not at all
        # Fixed-width unicode arrays: readable with allow_pickle=False, unlike object arrays.
        save_npz(out, compress=True, vectors=vectors, article_indices=articles, chunk_indices=chunks,
                 concept_texts=np.array(texts, dtype=str), article_titles=np.array(titles, dtype=str),
                 **domain_keys)
        write_json(stats_path, stats)
    print(f"ingest: {stats['articles']} articles, {stats['chunks']} chunks, D={stats['vector_dim']} -> {out}")
    log_run("ingest", {"source": cfg["source"], "seconds_parse": round(t_parse, 1), "seconds_encode": round(t_total - t_parse, 1),
                       "seconds_total": round(t_total, 1), "chunks": len(texts), "encoder": cfg["encoder"],
                       "precision": precision, "batch_size": cfg["batch_size"]})
    return stats


main = stage_main(run, __doc__, paths={"--out": "out", "--stats": "stats_path"})


if __name__ == "__main__":
    main()
