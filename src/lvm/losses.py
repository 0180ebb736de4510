"""The training loss, and which targets of a batch are no negatives for each other."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lvm import LvmError


def near_duplicates(rows: torch.Tensor, articles: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """[N, N] bool: target j is within `radius` chunks of target i in the same article (j != i). Such a
    target is no negative for i: neighbouring chunks are near-paraphrases, and with overlapping
    windows or every-position training the very same row recurs in a batch.

    Built from the few pairs that can match (rows sorted, each row's +-radius range found by binary
    search) instead of [N, N] integer differences: with every-position targets N = 3,200 and the
    dense form took 190 ms a step on one core, this one 6 ms (tests/test_train.py checks both agree)."""
    n = len(rows)
    order = torch.argsort(rows, stable=True)
    ranked = rows[order]
    lo = torch.searchsorted(ranked, rows - radius)
    counts = torch.searchsorted(ranked, rows + radius, right=True) - lo
    i = torch.repeat_interleave(torch.arange(n), counts)
    first = torch.repeat_interleave(lo, counts)
    offset = torch.arange(len(i)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    j = order[first + offset]
    keep = (articles[i] == articles[j]) & (i != j)
    near = torch.zeros(n, n, dtype=torch.bool)
    near[i[keep], j[keep]] = True
    return near


def compute_loss(pred: torch.Tensor, raw: torch.Tensor, target: torch.Tensor, kind: str, tau: float,
                 weight: float, rows=None, articles=None) -> torch.Tensor:
    """mse (raw output vs target, as the original) | cosine (1 - cos) | infonce (in-batch negatives at
    temperature `tau`, minus the target's near-duplicates when `rows`/`articles` [N] are given) |
    mixtures `a+infonce` = a + weight * infonce (train.loss, train.infonce_tau, train.infonce_weight).
    Inputs are [N, D]."""
    raw, target = raw.float(), target.float()

    def term(name):
        if name == "mse":
            return F.mse_loss(raw, target)
        if name == "cosine":
            return (1 - F.cosine_similarity(raw, target, dim=-1)).mean()
        if name == "infonce":
            logits = pred.float() @ F.normalize(target, dim=-1).T / tau
            if rows is not None:
                logits = logits.masked_fill(near_duplicates(rows, articles).to(logits.device), float("-inf"))
            return F.cross_entropy(logits, torch.arange(len(target), device=target.device))
        raise LvmError(f"params: train.loss: unknown loss {name!r}")

    if "+" in kind:
        base, extra = kind.split("+")
        return term(base) + weight * term(extra)
    return term(kind)


def target_ids(dataset, idx, all_targets: bool, min_context: int = 1):
    """(rows, articles) int64 tensors of the scored targets of windows `idx` of a WindowDataset,
    flattened like the loss inputs: [B] for the last position, [B * (L - min_context + 1)] for every
    position."""
    rows = dataset.target_rows(idx, all_targets)
    if all_targets:
        rows = rows[:, min_context - 1:]
    rows = rows.reshape(-1)
    return torch.from_numpy(rows), torch.from_numpy(np.asarray(dataset.article_indices[rows], dtype=np.int64))
