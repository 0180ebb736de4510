"""Sparse-attention transformer for long contexts (the original plan's Phase 3): the transformer's
blocks, but each position attends to the last `attention_window` positions (itself included) and to
every `attention_stride`-th earlier position ("summary" positions stride-1, 2*stride-1, ...), as in
the fixed pattern of Child et al. 2019, "Generating Long Sequences with Sparse Transformers".

Computed block by block, so the cost is sparse, not a dense score matrix with a mask: the context is
cut into blocks of `attention_window` queries; a block's keys are its own block, the block before it
and the summary positions (a mask keeps exactly the pattern and causality), one
`torch.nn.functional.scaled_dot_product_attention` call for all blocks. Scores per layer: L x (2 w +
L / s) instead of L^2 (L = 1,000, w = s = 64: 144k against 1M). Plain SDPA with a boolean mask over
batched blocks, not flex_attention: flex_attention's block masks need torch.compile to be fast,
which the CPU pipeline does not use; the math is the same (a test compares it with the dense masked
attention).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LatentVectorModel
from .transformer import Block, TransformerModel


def sparse_pattern(length: int, window: int, stride: int, device=None) -> torch.Tensor:
    """[L, L] bool, True where query t may attend to key j: the local window t-w < j <= t, or a summary
    position j <= t - w with (j + 1) % stride == 0. The dense definition the blocked code must equal."""
    t = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    return ((j <= t) & (j > t - window)) | ((j <= t - window) & ((j + 1) % stride == 0))


def sparse_attention(q, k, v, window: int, stride: int, dropout_p: float = 0.0, last_only: bool = False):
    """sparse_pattern's attention, q/k/v [B, h, L, dh] -> [B, h, L (1 if last_only), dh]."""
    B, h, L, dh = q.shape
    # the positions every stride, oldest first (none when L < stride)
    summary = torch.arange(stride - 1, max(L, stride - 1), stride, device=q.device)
    if last_only:  # the last query: the window, and the summaries older than it; no mask needed
        old = summary[summary <= L - 1 - window]
        keys = torch.cat([k[:, :, old], k[:, :, max(0, L - window):]], dim=2)
        values = torch.cat([v[:, :, old], v[:, :, max(0, L - window):]], dim=2)
        return F.scaled_dot_product_attention(q[:, :, -1:], keys, values, dropout_p=dropout_p)
    w, n = window, -(-L // window)
    pad = n * w - L  # right padding: the padded queries are dropped, real queries never see those keys
    qb, kb, vb = (F.pad(x, (0, 0, 0, pad)).view(B, h, n, w, dh) for x in (q, k, v))
    # each block's keys: the block before (zeros before block 0, masked), its own block, the summaries
    local_k = torch.cat([F.pad(kb[:, :, :-1], (0, 0, 0, 0, 1, 0)), kb], dim=3)   # [B, h, n, 2w, dh]
    local_v = torch.cat([F.pad(vb[:, :, :-1], (0, 0, 0, 0, 1, 0)), vb], dim=3)
    keys = torch.cat([local_k, k[:, :, None, summary].expand(B, h, n, len(summary), dh)], dim=3)
    values = torch.cat([local_v, v[:, :, None, summary].expand(B, h, n, len(summary), dh)], dim=3)
    t = (torch.arange(n, device=q.device)[:, None] * w + torch.arange(w, device=q.device)[None, :])[..., None]
    j_local = (torch.arange(n, device=q.device)[:, None] - 1) * w + torch.arange(2 * w, device=q.device)[None, :]
    local_ok = (j_local[:, None, :] <= t) & (j_local[:, None, :] > t - w) & (j_local[:, None, :] >= 0)
    summary_ok = summary[None, None, :] <= t - w                                  # older than the window
    mask = torch.cat([local_ok, summary_ok.expand(n, w, len(summary))], dim=-1)  # [n, w, 2w + S]
    y = F.scaled_dot_product_attention(qb, keys, values, attn_mask=mask, dropout_p=dropout_p)
    return y.reshape(B, h, n * w, dh)[:, :, :L]


class SparseBlock(Block):
    """The transformer's pre-LN block with sparse_attention in place of dense causal attention."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, window: int, stride: int):
        super().__init__(dim, heads, ff, dropout)
        self.window, self.stride = window, stride

    def attend(self, q, k, v, dropout_p: float, last_only: bool) -> torch.Tensor:
        return sparse_attention(q, k, v, self.window, self.stride, dropout_p, last_only)


class SparseTransformerModel(TransformerModel):
    """The transformer (same layers and parameters: 17.6M at D=768) with local + strided attention."""

    name = "sparse_transformer"
    PARAMS = ("hidden_dim", "transformer_layers", "transformer_heads", "transformer_ff", "attention_window",
              "attention_stride", "dropout", "anchor")
    DESCRIPTION = "the transformer with sparse attention: the last attention_window positions + every attention_stride-th"

    def __init__(self, input_dim, context_length, hidden_dim, transformer_layers, transformer_heads,
                 transformer_ff, attention_window, attention_stride, dropout, anchor, normalize):
        LatentVectorModel.__init__(self, input_dim, context_length, anchor=anchor, normalize=normalize,
                                   hidden_dim=hidden_dim, transformer_layers=transformer_layers,
                                   transformer_heads=transformer_heads, transformer_ff=transformer_ff,
                                   attention_window=attention_window, attention_stride=attention_stride,
                                   dropout=dropout)
        self.inp = nn.Linear(input_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SparseBlock(hidden_dim, transformer_heads, transformer_ff, dropout,
                                                attention_window, attention_stride)
                                    for _ in range(transformer_layers))
        self.ln_f = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, input_dim)
