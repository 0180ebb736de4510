"""How much the ingest encoder's vectors move with precision, batch size, input order and threads.

    PYTHONPATH=src python bench/encoder_tolerance.py [--chunks 2000] [--out bench/results/encoder_tolerance.json]

Encodes the first `--chunks` chunks of the default corpus (params.yaml's ingest settings) with the
default encoder, in fp32 and bf16, with batch size 64 (the reference), 64 again (same-process repeat),
32, 64 on shuffled input and 64 on one thread (bf16, emulated and slow on CPUs without native bf16:
fewer variants); for each the max |difference| and the min cosine to its precision's reference, and
bf16 against fp32. Two encode paths: `lvm` (lvm.corpus
.encode: batches fixed by a stable (length, text) order) and `st` (SentenceTransformer.encode called
on the whole list, its own length sort). Not a DVC stage; the README quotes the result.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import cpu_model  # noqa: E402
from lvm.config import load_params  # noqa: E402
from lvm.corpus import build_chunks, default_source, encode, load_encoder  # noqa: E402


def st_encode(model, texts, batch_size):
    with torch.inference_mode():
        emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return torch.nn.functional.normalize(emb.float(), dim=1).cpu().numpy()


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"identical": bool(np.array_equal(a, b)), "max_abs_diff": float(np.abs(a - b).max()),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="bench/results/encoder_tolerance.json")
    ap.add_argument("--refs-only", action="store_true", help="skip the variants except bf16 st shuffled; "
                    "results merged into --out's")
    args = ap.parse_args()
    cfg = load_params(args.params)["ingest"]
    texts = []
    for n in (4, 8, 16, 32, 0):
        _, texts, _, _ = build_chunks(default_source(), cfg["max_words"], cfg["min_words"], n)
        if len(texts) >= args.chunks:
            break
    texts = texts[:args.chunks]
    threads = torch.get_num_threads()
    perm = np.random.default_rng(0).permutation(len(texts))
    inv = np.argsort(perm)
    res = {"chunks": len(texts), "encoder": cfg["encoder"], "threads": threads,
           "machine": f"{cpu_model()}, {threads} threads, torch {torch.__version__}",
           "results": {}}
    refs = {}
    # (precision, path) -> variants; bf16 is emulated (slow) on CPUs without native bf16: fewer runs
    plan = {("fp32", "lvm"): ("bs64_again", "bs32", "bs64_shuffled", "bs64_1thread"),
            ("fp32", "st"): ("bs32", "bs64_shuffled"),
            ("bf16", "lvm"): ("bs32", "bs64_shuffled"),
            ("bf16", "st"): ("bs64_shuffled",)}
    if args.refs_only:  # the four references and their comparisons, plus bf16 st shuffled
        plan = {k: (("bs64_shuffled",) if k == ("bf16", "st") else ()) for k in plan}
    paths = {"lvm": lambda m, t, b: encode(m, t, b, progress=False), "st": st_encode}
    for precision in ("fp32", "bf16"):
        model = load_encoder(cfg["encoder"], precision)
        for (prec, path), variants in plan.items():
            if prec != precision:
                continue
            fn = paths[path]
            ref = refs[(precision, path)] = fn(model, texts, 64)
            for name in variants:
                if name == "bs64_1thread":
                    torch.set_num_threads(1)
                x = (fn(model, [texts[i] for i in perm], 64)[inv] if name == "bs64_shuffled"
                     else fn(model, texts, 32 if name == "bs32" else 64))
                torch.set_num_threads(threads)
                key = f"{precision}/{path}/{name} vs bs64"
                res["results"][key] = compare(ref, x)
                print(f"{key}: {res['results'][key]}", flush=True)
        del model
    for path in ("lvm", "st"):
        res["results"][f"bf16 vs fp32/{path}/bs64"] = compare(refs[("fp32", path)], refs[("bf16", path)])
    res["results"]["fp32 lvm vs st/bs64"] = compare(refs[("fp32", "lvm")], refs[("fp32", "st")])
    res["results"]["bf16 lvm vs st/bs64"] = compare(refs[("bf16", "lvm")], refs[("bf16", "st")])
    for k in list(res["results"])[-4:]:
        print(f"{k}: {res['results'][k]}", flush=True)
    if args.refs_only and Path(args.out).is_file():
        res["results"] = {**json.loads(Path(args.out).read_text())["results"], **res["results"]}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
