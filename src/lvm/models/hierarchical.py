"""Hierarchical GRU: a shared local GRU reads fixed-size chunks, a global GRU reads the chunk summaries.

Causal at every position: the prediction after position t (in chunk j) reads the local GRU's state at
t (the vectors of chunk j up to t) and the global GRU's state after chunks 0 .. j-1 (zeros for the
first chunk); both see nothing after t. The prediction after the whole context is position L-1: the
last chunk's local state plus the global state over every earlier chunk.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LatentVectorModel


class HierarchicalGRUModel(LatentVectorModel):
    """Chunks of `chunk_size` -> shared local GRU; global GRU over chunk summaries; MLP head on
    [local state, global state of the completed chunks] plus a linear skip from the current vector
    (9.1M params at D=768, L=100, chunk 10).

    Sequential depth is chunk_size + L/chunk_size steps instead of L, which is why it trains fast.
    Any L works: a context that is not a multiple of chunk_size is left-padded with zero vectors
    (their positions are never read out).
    """

    name = "hierarchical_gru"
    PARAMS = ("hidden_dim", "chunk_size", "hierarchy_layers", "dropout", "anchor")
    OUTPUT_LAYERS = ("head.3", "skip")
    DESCRIPTION = "shared local GRU over chunks, global GRU over completed chunks, MLP head + skip, causal"
    # CPU autocast leaves nn.GRU in its input's dtype: a bf16 context would turn its fp32 GRUs into bf16 ones
    BF16_CONTEXTS = False

    def __init__(self, input_dim, context_length, hidden_dim, chunk_size, hierarchy_layers, dropout, anchor, normalize):
        super().__init__(input_dim, context_length, anchor=anchor, normalize=normalize, hidden_dim=hidden_dim,
                         chunk_size=chunk_size, hierarchy_layers=hierarchy_layers, dropout=dropout)
        self.chunk_size = chunk_size
        rnn_drop = dropout if hierarchy_layers > 1 else 0.0
        self.local = nn.GRU(input_dim, hidden_dim, hierarchy_layers, batch_first=True, dropout=rnn_drop)
        self.glob = nn.GRU(hidden_dim, hidden_dim, hierarchy_layers, batch_first=True, dropout=rnn_drop)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_dim, 2 * hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden_dim, input_dim),
        )
        # the next vector is usually closest to the current one; a direct path saves the GRUs relearning it
        self.skip = nn.Linear(input_dim, input_dim)

    def padding(self, length: int) -> int:
        """Zero vectors put before a context of `length` so that it splits into whole chunks."""
        return -length % self.chunk_size

    def head_output(self, x: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        B, L, D = x.shape
        pad = self.padding(L)
        if pad:  # L not a multiple of chunk_size: left-pad with zeros, so the first chunk is partly padding
            x = F.pad(x, (0, 0, pad, 0))
        n, c = (L + pad) // self.chunk_size, self.chunk_size
        # every chunk of every sample in one batched GRU call: [B*n, chunk, D]. nn.GRU, not
        # lvm.models.fastrnn: with sequences this short (chunk_size, then L/chunk_size steps) the fused
        # kernel is 1.07x faster than the custom scan under bf16 (bench/throughput.py ablation).
        local, _ = self.local(x.reshape(B * n, c, D))                  # [B*n, c, H], top layer
        local = local.view(B, n, c, -1)
        glob, _ = self.glob(local[:, :, -1])                            # [B, n, H]: after chunks 0..j
        # what position t in chunk j may read: the global state after chunks 0 .. j-1
        before = F.pad(glob[:, :-1], (0, 0, 1, 0))                      # [B, n, H], zeros for chunk 0
        if not all_positions:
            state = torch.cat([local[:, -1, -1], before[:, -1]], dim=-1)
            return self.head(state) + self.skip(x[:, -1])
        state = torch.cat([local, before[:, :, None].expand_as(local)], dim=-1).view(B, n * c, -1)[:, pad:]
        return self.head(state) + self.skip(x[:, pad:])
