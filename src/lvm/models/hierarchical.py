"""Hierarchical GRU: a shared local GRU reads fixed-size chunks, a global GRU reads the chunk summaries;
with `hierarchy_levels` > 2, GRUs in between read groups of `chunk_size` summaries of the level below
(chunks -> sections of chunks -> ... -> document).

Causal at every position: the prediction after position t (in chunk j) reads the local GRU's state at
t (the vectors of chunk j up to t), at each middle level the state after the completed units of t's
group before t's own unit (zeros for the first), and the global GRU's state after the completed
top-level units before t's (zeros for the first); none sees anything after t. The prediction after the
whole context is position L-1.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LatentVectorModel


def completed_before(states: torch.Tensor) -> torch.Tensor:
    """[B, m, c, H] states after units 0..i of each group -> the state after units 0..i-1 (zeros at
    i = 0): what a position inside unit i may read of its own group."""
    return F.pad(states[:, :, :-1], (0, 0, 1, 0))


class HierarchicalGRUModel(LatentVectorModel):
    """Chunks of `chunk_size` -> shared local GRU; global GRU over chunk summaries; MLP head on
    [local state, global state of the completed chunks] plus a linear skip from the current vector
    (9.1M params at D=768, L=100, chunk 10).

    Sequential depth is chunk_size + L/chunk_size steps instead of L, which is why it trains fast.
    `hierarchy_levels` = k >= 2: k - 2 middle GRUs, each over groups of chunk_size summaries of the level
    below, and the global GRU over the last level's summaries, so the depth is (k-1) * chunk_size +
    L / chunk_size^(k-1): 30 steps for L = 1,000, chunk 10, k = 3 (2 is the two-level model, unchanged:
    the same modules, initialised in the same order). The head reads k states.
    Any L works: a context that is not a multiple of chunk_size^(k-1) is left-padded with zero vectors
    (their positions are never read out).
    """

    name = "hierarchical_gru"
    PARAMS = ("hidden_dim", "chunk_size", "hierarchy_layers", "hierarchy_levels", "dropout", "anchor")
    OUTPUT_LAYERS = ("head.3", "skip")
    DESCRIPTION = "shared local GRU over chunks, global GRU over completed chunks, MLP head + skip, causal"
    # CPU autocast leaves nn.GRU in its input's dtype: a bf16 context would turn its fp32 GRUs into bf16 ones
    BF16_CONTEXTS = False

    def __init__(self, input_dim, context_length, hidden_dim, chunk_size, hierarchy_layers, hierarchy_levels,
                 dropout, anchor, normalize):
        super().__init__(input_dim, context_length, anchor=anchor, normalize=normalize, hidden_dim=hidden_dim,
                         chunk_size=chunk_size, hierarchy_layers=hierarchy_layers,
                         hierarchy_levels=hierarchy_levels, dropout=dropout)
        self.chunk_size, self.levels = chunk_size, hierarchy_levels
        rnn_drop = dropout if hierarchy_layers > 1 else 0.0
        self.local = nn.GRU(input_dim, hidden_dim, hierarchy_layers, batch_first=True, dropout=rnn_drop)
        self.glob = nn.GRU(hidden_dim, hidden_dim, hierarchy_layers, batch_first=True, dropout=rnn_drop)
        # empty for two levels: no parameters, no draws from the generator (the same init as before)
        self.middle = nn.ModuleList(nn.GRU(hidden_dim, hidden_dim, hierarchy_layers, batch_first=True,
                                           dropout=rnn_drop) for _ in range(hierarchy_levels - 2))
        self.head = nn.Sequential(
            nn.Linear(hierarchy_levels * hidden_dim, 2 * hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden_dim, input_dim),
        )
        # the next vector is usually closest to the current one; a direct path saves the GRUs relearning it
        self.skip = nn.Linear(input_dim, input_dim)

    def padding(self, length: int) -> int:
        """Zero vectors put before a context of `length` so that every level splits into whole groups."""
        return -length % self.chunk_size ** (self.levels - 1)

    def head_output(self, x: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        B, L, D = x.shape
        pad = self.padding(L)
        if pad:  # L not a multiple of the groups: left-pad with zeros, so the first chunk is partly padding
            x = F.pad(x, (0, 0, pad, 0))
        n, c = (L + pad) // self.chunk_size, self.chunk_size
        # every chunk of every sample in one batched GRU call: [B*n, chunk, D]. nn.GRU, not
        # lvm.models.fastrnn: with sequences this short (chunk_size, then L/chunk_size steps) the fused
        # kernel is 1.07x faster than the custom scan under bf16 (bench/throughput.py ablation).
        local, _ = self.local(x.reshape(B * n, c, D))                  # [B*n, c, H], top layer
        local = local.view(B, n, c, -1)
        summaries, middles = local[:, :, -1], []                        # [B, units, H] per level
        for gru in self.middle:  # groups of c summaries of the level below, one batched call per level
            m = summaries.shape[1] // c
            states, _ = gru(summaries.reshape(B * m, c, -1))
            states = states.view(B, m, c, -1)
            middles.append(completed_before(states).reshape(B, m * c, -1))  # per unit of the level below
            summaries = states[:, :, -1]
        glob, _ = self.glob(summaries)                                  # [B, n_top, H]: after units 0..j
        # what position t may read: the global state after the top-level units before t's
        before = F.pad(glob[:, :-1], (0, 0, 1, 0))                      # [B, n_top, H], zeros for unit 0
        if not all_positions:
            state = torch.cat([local[:, -1, -1], *(m[:, -1] for m in middles), before[:, -1]], dim=-1)
            return self.head(state) + self.skip(x[:, -1])
        if not middles:  # two levels: each chunk reads its own global state
            state = torch.cat([local, before[:, :, None].expand_as(local)], dim=-1).view(B, n * c, -1)[:, pad:]
            return self.head(state) + self.skip(x[:, pad:])
        # unit sizes in positions: c for the first middle level's units (chunks), c^2 for the next, ...
        per_position = [m.repeat_interleave(c ** (k + 1), dim=1) for k, m in enumerate(middles)]
        top = before.repeat_interleave(c ** (self.levels - 1), dim=1)
        state = torch.cat([local.reshape(B, n * c, -1), *per_position, top], dim=-1)[:, pad:]
        return self.head(state) + self.skip(x[:, pad:])
