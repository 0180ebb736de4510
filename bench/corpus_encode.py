"""Encode time per 10,000 chunks of the larger offline corpus, fp32 against bf16.

    PYTHONPATH=src python bench/corpus_encode.py [--source linux-doc+python-doc+brown+shakespeare] [--chunks 2000] [--rounds 2]
        [--out bench/results/corpus_encode.json]

Takes `--chunks` chunks spread evenly over the source's documents (every k-th chunk: all sources and
lengths represented; needs `python -m lvm.sources fetch` first), encodes them with params.yaml's
encoder and batch size in fp32 and in bf16, alternating `--rounds` times so both precisions see the
same load on a shared machine, and reports the best round of each as seconds per 10,000 chunks,
with the CPU's model and whether it has native bf16 (lvm.hardware.native_bf16: what
`ingest.precision: auto` decides on). Not a DVC stage; docs/data.md quotes the result.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import cpu_model  # noqa: E402
from lvm.config import load_params  # noqa: E402
from lvm.corpus import encode, load_encoder  # noqa: E402
from lvm.hardware import native_bf16  # noqa: E402
from lvm.sources import build_source  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16") or f.startswith("amx"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="linux-doc+python-doc+brown+shakespeare")  # (the shard: as the default corpus)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/corpus_encode.json"))
    args = parser.parse_args(argv)
    cfg = load_params()["ingest"]
    _, texts, *_ = build_source(args.source, cfg["max_words"], cfg["min_words"])
    step = max(1, len(texts) // args.chunks)
    sample = texts[::step][:args.chunks]
    models = {precision: load_encoder(cfg["encoder"], precision) for precision in ("fp32", "bf16")}
    seconds = {precision: [] for precision in models}
    for _ in range(args.rounds):
        for precision, model in models.items():
            encode(model, sample[:cfg["batch_size"]], cfg["batch_size"], progress=False)  # warm-up
            t0 = time.perf_counter()
            encode(model, sample, cfg["batch_size"], progress=False)
            seconds[precision].append(time.perf_counter() - t0)
    result = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "native_bf16": native_bf16(torch.device("cpu")),
        "threads": torch.get_num_threads(), "source": args.source, "chunks": len(sample),
        "encoder": cfg["encoder"], "batch_size": cfg["batch_size"], "rounds": args.rounds,
        "seconds_per_10k_chunks": {p: round(min(s) * 10_000 / len(sample), 1) for p, s in seconds.items()},
        "seconds_each_round": {p: [round(x, 2) for x in s] for p, s in seconds.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
