"""This project's models against plain-PyTorch references of the original implementation's models,
timed side by side in ONE process, interleaved step by step, so that the ratio does not depend on how
fast this shared machine happens to be that minute.

    .venv/bin/python bench/original_interleaved.py                 # D=768, batch 32, 2 threads, 8 rounds (~6 min)
    .venv/bin/python bench/original_interleaved.py --models lstm memory_gru --rounds 4

The references are written from the original's description (its code is not copied; layer sizes as
docs/performance.md "The original implementation" lists them): fp32, nn.LSTM / nn.GRU / nn.GRUCell /
nn.TransformerEncoder layers, MSE on the raw output against the target, AdamW(lr 5e-4, wd 0.01),
clip_grad_norm_ 1.0, one target per window (the prediction after the whole context). Ours: the
model `lvm.models.create_model` builds from params.yaml's model section (normaliser off), trained
by lvm.training.train_step with the cosine loss, one target per window, in fp32 and (where the CPU
has native bf16) in bf16 autocast.

One round = for every model: `--steps` training steps of the reference, of ours in fp32, of ours in
bf16 (after `--warmup` untimed steps of each in the first round). A configuration's time in a round
is the mean of its steps; its figure is the median over the rounds; the ratio reference / ours is
taken per round (the two ran seconds apart) and its median reported.

Writes bench/results/original_interleaved.json and .md (the table in docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_model, repository_params  # noqa: E402

MODELS = ("lstm", "gru", "transformer", "amn", "hierarchical_gru", "memory_gru")
# the original implementation's parameter counts at D=768 (its description)
ORIGINAL_PARAMS = {"lstm": 5.1e6, "gru": 7.1e6, "transformer": 17.9e6, "amn": 1.5e6,
                   "hierarchical_gru": 8.6e6, "memory_gru": 11.3e6}
TARGET = 2.0
H = 512


# --- the references: plain PyTorch, as the original describes its models ---------------------------

class RefLSTM(nn.Module):
    """2 x LSTM(512), last step -> Linear -> D."""

    def __init__(self, d):
        super().__init__()
        self.lstm = nn.LSTM(d, H, num_layers=2, batch_first=True)
        self.out = nn.Linear(H, d)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.out(y[:, -1])


class RefGRU(nn.Module):
    """Linear D -> 512, 4 x (GRU(512) + residual + LayerNorm), last step -> Linear -> D."""

    def __init__(self, d, layers=4):
        super().__init__()
        self.inp = nn.Linear(d, H)
        self.grus = nn.ModuleList(nn.GRU(H, H, batch_first=True) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(H) for _ in range(layers))
        self.out = nn.Linear(H, d)

    def forward(self, x):
        h = self.inp(x)
        for gru, norm in zip(self.grus, self.norms):
            y, _ = gru(h)
            h = norm(h + y)
        return self.out(h[:, -1])


class RefTransformer(nn.Module):
    """Linear D -> 512 + learned positions, 4 causal encoder layers (8 heads, ff 2048), MLP head."""

    def __init__(self, d, length=100):
        super().__init__()
        self.inp = nn.Linear(d, H)
        self.pos = nn.Parameter(torch.zeros(length, H))
        layer = nn.TransformerEncoderLayer(H, 8, 2048, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.Linear(H, 2048), nn.GELU(), nn.Linear(2048, d))

    def forward(self, x):
        L = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=x.device)
        h = self.enc(self.inp(x) + self.pos[:L], mask=mask, is_causal=True)
        return self.out(h[:, -1])


class RefAMN(nn.Module):
    """normalize(mean(context) + residual): one-head attention (query = last vector) and an MLP."""

    def __init__(self, d, hidden=384):
        super().__init__()
        self.q, self.k = nn.Linear(d, hidden), nn.Linear(d, hidden)
        self.mlp = nn.Sequential(nn.Linear(2 * d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x):
        att = torch.softmax(self.k(x) @ self.q(x[:, -1]).unsqueeze(-1) / self.q.out_features ** 0.5, dim=1)
        read = (att * x).sum(1)
        return x.mean(1) + self.mlp(torch.cat([read, x[:, -1]], -1))


class RefHierarchical(nn.Module):
    """10 chunks x 10 vectors through a shared 2-layer GRU(512), chunk summaries through a 2-layer
    global GRU(512), MLP head, plus a linear of the last input vector."""

    def __init__(self, d, chunk=10):
        super().__init__()
        self.chunk = chunk
        self.local = nn.GRU(d, H, num_layers=2, batch_first=True)
        self.glob = nn.GRU(H, H, num_layers=2, batch_first=True)
        self.head = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, d))
        self.skip = nn.Linear(d, d)

    def forward(self, x):
        B, L, D = x.shape
        n = L // self.chunk
        _, h = self.local(x.reshape(B * n, self.chunk, D))
        g, _ = self.glob(h[-1].reshape(B, n, H))
        return self.head(g[:, -1]) + self.skip(x[:, -1])


class RefMemoryGRU(nn.Module):
    """2048 x D slot memory, cosine content addressing from the top state, 4-layer GRU(512) stepped
    through the context (read -> process), output Linear -> D."""

    def __init__(self, d, slots=2048, layers=4):
        super().__init__()
        self.memory = nn.Parameter(torch.randn(slots, d) * 0.02)
        self.query = nn.Linear(H, d)
        self.cells = nn.ModuleList([nn.GRUCell(2 * d, H)] + [nn.GRUCell(H, H) for _ in range(layers - 1)])
        self.out = nn.Linear(H, d)

    def forward(self, x):
        B, L, _ = x.shape
        hs = [x.new_zeros(B, H) for _ in self.cells]
        mem = F.normalize(self.memory, dim=-1)
        for t in range(L):
            w = torch.softmax(F.normalize(self.query(hs[-1]), dim=-1) @ mem.t() * 10.0, dim=-1)
            inp = torch.cat([x[:, t], w @ self.memory], -1)
            for i, cell in enumerate(self.cells):
                hs[i] = cell(inp, hs[i])
                inp = hs[i]
        return self.out(hs[-1])


REFERENCES = {"lstm": RefLSTM, "gru": RefGRU, "transformer": RefTransformer, "amn": RefAMN,
              "hierarchical_gru": RefHierarchical, "memory_gru": RefMemoryGRU}


def build(name: str, d: int, L: int, batch: int):
    """{config: step function} for the reference (fp32, MSE) and ours (fp32, bf16 where native)."""
    from lvm.hardware import native_bf16
    from lvm.models import count_parameters, create_model
    from lvm.training import train_step

    g = torch.Generator().manual_seed(1)
    batches = [(F.normalize(torch.randn(batch, L, d, generator=g), dim=-1),
                F.normalize(torch.randn(batch, d, generator=g), dim=-1)) for _ in range(4)]
    torch.manual_seed(0)
    ref = REFERENCES[name](d)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=5e-4, weight_decay=0.01)

    def ref_step(i):
        ctx, tgt = batches[i % len(batches)]
        loss = F.mse_loss(ref(ctx), tgt)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        return loss.item()

    params = repository_params()
    ours = create_model(name, input_dim=d, context_length=L, normalize="none", **params["model"])
    opt = torch.optim.AdamW(ours.parameters(), lr=params["train"]["lr"], weight_decay=params["train"]["weight_decay"])
    cfg = {**params["train"], "loss": "cosine", "min_context": 1}

    def our_step(precision):
        def step(i):
            ctx, tgt = batches[i % len(batches)]
            return train_step(ours, ctx, tgt, opt, {**cfg, "precision": precision}).item()
        return step

    ref.train()
    ours.train()
    steps = {"reference fp32": ref_step, "ours fp32": our_step("fp32")}
    if native_bf16(torch.device("cpu")):
        steps["ours bf16"] = our_step("bf16")
    params = {"reference": count_parameters(ref), "ours": count_parameters(ours)}
    return steps, params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--context", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "original_interleaved.json"))
    args = ap.parse_args(argv)
    from lvm.runtime import set_threads

    set_threads(args.threads)
    built = {m: build(m, args.dim, args.context, args.batch) for m in args.models}
    for steps, _ in built.values():
        for fn in steps.values():
            for i in range(args.warmup):
                fn(i)
    times = {m: {c: [] for c in built[m][0]} for m in args.models}
    for r in range(args.rounds):
        for m in args.models:
            for config, fn in built[m][0].items():
                t0 = time.perf_counter()
                for i in range(args.steps):
                    fn(i)
                times[m][config].append((time.perf_counter() - t0) / args.steps)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = {}
    for m in args.models:
        t = times[m]
        ours = [c for c in t if c.startswith("ours")]
        # per round: the reference's time over our fastest configuration's
        per_round = [t["reference fp32"][r] / min(t[c][r] for c in ours) for r in range(args.rounds)]
        rows[m] = {"seq_per_s": {c: round(args.batch / statistics.median(v), 1) for c, v in t.items()},
                   "speedup_fp32": round(statistics.median(t["reference fp32"][r] / t["ours fp32"][r]
                                                           for r in range(args.rounds)), 2),
                   "speedup_best": round(statistics.median(per_round), 2),
                   "speedup_best_min_max": [round(min(per_round), 2), round(max(per_round), 2)],
                   "params": built[m][1], "original_params": ORIGINAL_PARAMS[m]}
        rows[m]["meets_2x"] = rows[m]["speedup_best"] >= TARGET
        print(f"{m}: {rows[m]}", flush=True)
    out = {"config": {**{k: v for k, v in vars(args).items() if k not in ("models", "out")},
                      "cpu": cpu_model(), "torch": torch.__version__, "python": platform.python_version()},
           "models": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(out))
    return 0


def markdown(out: dict) -> str:
    c = out["config"]
    lines = [f"Interleaved in one process (`bench/original_interleaved.py`): D={c['dim']}, L={c['context']}, "
             f"batch {c['batch']}, {c['threads']} threads, {c['rounds']} rounds x {c['steps']} steps, {c['cpu']}. "
             "Training seq/s (median over rounds); speedup = median over rounds of the reference's step time "
             "over ours (fp32, and the faster of our fp32 / bf16), min-max over rounds in brackets.", "",
             "| model | params ref / ours (original at D=768) | reference fp32 | ours fp32 | ours bf16 | x ref (fp32) "
             "| x ref (best) | >= 2x |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for m, r in out["models"].items():
        s = r["seq_per_s"]
        lo, hi = r["speedup_best_min_max"]
        lines.append(f"| {m} | {r['params']['reference'] / 1e6:.2f}M / {r['params']['ours'] / 1e6:.2f}M "
                     f"({r['original_params'] / 1e6:.1f}M) | {s['reference fp32']} | {s['ours fp32']} | "
                     f"{s.get('ours bf16', '—')} | {r['speedup_fp32']:.2f} | {r['speedup_best']:.2f} "
                     f"[{lo:.2f}-{hi:.2f}] | {'yes' if r['meets_2x'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
