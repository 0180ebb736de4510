"""Causal transformer: pre-LN encoder blocks with causal self-attention over the context."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LatentVectorModel


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """Fixed sin/cos table [length, dim], computed per call so any context length works."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])  # odd dim: one fewer cos column
    return pe


class Block(nn.Module):
    """Pre-LN block: causal multi-head self-attention, then a SwiGLU feed-forward."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        # SwiGLU (gate and up in one matmul): 3 x dim x ff weights per block, which puts the
        # 4-layer model at the original's 17.9M without the original's cross-attention
        self.ff_in = nn.Linear(dim, 2 * ff)
        self.ff_out = nn.Linear(ff, dim)
        self.drop = nn.Dropout(dropout)

    def attend(self, q, k, v, dropout_p: float, last_only: bool) -> torch.Tensor:
        """Causal attention, q/k/v [B, heads, L, head_dim] -> [B, heads, L (1 if last_only), head_dim]."""
        if last_only:
            # the prediction reads only the last position, so the top block computes just that row;
            # the last query may see every key, hence no mask (is_causal would align it top-left)
            return F.scaled_dot_product_attention(q[:, :, -1:], k, v, dropout_p=dropout_p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, L, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = self.attend(q, k, v, self.dropout if self.training else 0.0, last_only)
        if last_only:
            x, L = x[:, -1:], 1
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, L, C)))
        gate, up = self.ff_in(self.ln2(x)).chunk(2, dim=-1)
        return x + self.drop(self.ff_out(F.silu(gate) * up))


class TransformerModel(LatentVectorModel):
    """Linear D->512 + sinusoidal positions, 4 causal pre-LN blocks, last position -> Linear -> D."""

    name = "transformer"
    PARAMS = ("hidden_dim", "transformer_layers", "transformer_heads", "transformer_ff", "dropout", "anchor")
    DESCRIPTION = "causal pre-LN transformer (SDPA, SwiGLU), sinusoidal positions, each position -> linear"

    def __init__(self, input_dim, context_length, hidden_dim, transformer_layers, transformer_heads,
                 transformer_ff, dropout, anchor, normalize):
        super().__init__(input_dim, context_length, anchor=anchor, normalize=normalize, hidden_dim=hidden_dim, transformer_layers=transformer_layers,
                         transformer_heads=transformer_heads, transformer_ff=transformer_ff, dropout=dropout)
        self.inp = nn.Linear(input_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden_dim, transformer_heads, transformer_ff, dropout)
                                    for _ in range(transformer_layers))
        self.ln_f = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, input_dim)

    def head_output(self, x: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        L = x.shape[1]
        x = self.drop(self.inp(x) + sinusoidal_positions(L, self.inp.out_features, x.device))
        for i, block in enumerate(self.blocks):
            # causal mask: position t attends to positions <= t only, so every position is a prediction
            x = block(x, last_only=not all_positions and i == len(self.blocks) - 1)
        return self.head(self.ln_f(x if all_positions else x[:, -1]))
