"""Memory-augmented GRU: read a learned slot memory, process with a GRU, write, read again.

The original kept its memory in a buffer that every training forward overwrote in place (`.data`),
so the write path never got a gradient and evaluation depended on the last training batch; its
first read used a zero query, so every sample read the same content. Here:

* the memory M [S, D] is a learned parameter, never modified by forward;
* every read is content-based: softmax(sharpness * cos(query, slot)) over the S slots, with queries
  computed from the sample (first read: a projection of each context vector, all L steps in one
  matmul);
* the write is per sample and differentiable: M_b' = M + w_b a_b^T (rank-1 add), with write
  weights w_b from the final GRU state's content attention over the slots and an add vector a_b
  scaled by a sigmoid write gate. M_b' exists only inside the forward pass, and is never formed:
  cosine scores and the read from M_b' are computed exactly from M, w_b and a_b in O(B*S*D).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LatentVectorModel
from .fastrnn import gru_stack, use_fast_path


def content_read(query: torch.Tensor, memory: torch.Tensor, sharpness: torch.Tensor):
    """Cosine content addressing of `memory` [S, D] by `query` [..., D] -> (weights [..., S], read [..., D])."""
    scores = F.normalize(query, dim=-1) @ F.normalize(memory, dim=-1).t()
    # softmax in the scores' dtype: under bf16 autocast the [B, L, S] tensor is the biggest in the
    # model, and halving its bytes is worth more than fp32 weights for an averaging read
    weights = F.softmax(sharpness * scores, dim=-1)
    return weights, weights @ memory.to(weights.dtype)  # cast the small [S, D] side, not [..., S]


class MemoryGRUModel(LatentVectorModel):
    """Read (per step) -> GRU over [x, read] -> write (rank-1, per sample) -> read again -> head."""

    name = "memory_gru"
    PARAMS = ("hidden_dim", "memory_slots", "memory_layers", "dropout", "anchor")
    DESCRIPTION = "learned slot memory: per-step cosine read, GRU, per-sample rank-1 write, second read"

    def __init__(self, input_dim, context_length, hidden_dim, memory_slots, memory_layers, dropout, anchor, normalize):
        super().__init__(input_dim, context_length, anchor=anchor, normalize=normalize, hidden_dim=hidden_dim,
                         memory_slots=memory_slots,
                         memory_layers=memory_layers, dropout=dropout)
        D, H = input_dim, hidden_dim
        # unit-norm random slots, like the sentence embeddings they will be compared with
        self.memory = nn.Parameter(F.normalize(torch.randn(memory_slots, D), dim=-1))
        # sharpness starts at sqrt(D): cosines of unrelated D-dim vectors are ~N(0, 1/D), so
        # initial scores have unit spread instead of a flat softmax over thousands of slots
        init = math.log(math.sqrt(D))
        self.log_sharpness = nn.Parameter(torch.full((3,), init))  # first read, write, second read
        self.read_query = nn.Linear(D, D, bias=False)
        self.gru = nn.GRU(2 * D, H, memory_layers, batch_first=True, dropout=dropout if memory_layers > 1 else 0.0)
        self.write_key = nn.Linear(H, D)
        self.write_value = nn.Linear(H, D)
        self.write_gate = nn.Linear(H, 1)
        self.read2_query = nn.Linear(H, D)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(H + D, D)

    def first_read(self, context: torch.Tensor):
        """Weights [B, L, S] and content [B, L, D] of the per-step read; every step of every sample
        has its own query."""
        return content_read(self.read_query(context), self.memory, self.log_sharpness[0].exp())

    def head_output(self, context: torch.Tensor, all_positions: bool = False, reads: dict | None = None):
        """`reads`, if a dict, receives the address weights (for lvm.inspect): 'first' [B, L, S] per-step
        reads, 'write' [B, S] write weights, 'second' [B, S] final read (with all_positions: [B, L, S],
        the write and read after each step). Training never passes it."""
        if use_fast_path(self.gru, context):
            # time-major for lvm.models.fastrnn (reads are per vector, so the layout is free)
            ctx_tm = context.transpose(0, 1)
            weights, read = self.first_read(ctx_tm)
            if reads is not None:
                reads["first"] = weights.transpose(0, 1)
            y, h_n = gru_stack(self.gru, torch.cat([ctx_tm.to(read.dtype), read], dim=-1))
            y = y.transpose(0, 1) if all_positions else None
        else:
            weights, read = self.first_read(context)
            if reads is not None:
                reads["first"] = weights
            # GRU input in the read's dtype: bf16 under autocast, which saves a cast per step inside the GRU
            y, h_n = self.gru(torch.cat([context.to(read.dtype), read], dim=-1))
        # [B, H] after the last step, or [B, L, H] after every step (each step's state is causal)
        h = self.drop((y if all_positions else h_n[-1]).float())

        # The write and second read touch only [B, (L,) S] and [B, (L,) D] tensors: cheap, so keep them in
        # fp32 where a small write (w_s ~ 1/S) is not lost in bf16 rounding of slot norms.
        with torch.autocast(context.device.type, enabled=False):
            M = self.memory.float()
            s_w, s_r = self.log_sharpness[1].exp(), self.log_sharpness[2].exp()
            w, _ = content_read(self.write_key(h), M, s_w)                    # [..., S] write weights
            a = torch.sigmoid(self.write_gate(h)) * self.write_value(h)        # [..., D] gated add vector

            # second read from M' = M + w a^T (per sample and step) without forming the [..., S, D] tensor:
            #   q . M'_s     = q . M_s + w_s (q . a)
            #   |M'_s|^2     = |M_s|^2 + 2 w_s (M_s . a) + w_s^2 |a|^2
            #   sum_s p_s M'_s = p M + (p . w) a
            q = self.read2_query(h)                                            # [..., D]
            dots = q @ M.t() + w * (q * a).sum(-1, keepdim=True)
            slot_sq = (M * M).sum(-1) + 2 * w * (a @ M.t()) + w.square() * a.square().sum(-1, keepdim=True)
            cos = dots / (q.norm(dim=-1, keepdim=True) * slot_sq.clamp_min(0).sqrt()).clamp_min(1e-8)
            p = F.softmax(s_r * cos, dim=-1)
            read2 = p @ M + (p * w).sum(-1, keepdim=True) * a                 # [..., D]
            if reads is not None:
                reads.update(write=w, second=p)

        return self.head(torch.cat([h, read2], dim=-1))
