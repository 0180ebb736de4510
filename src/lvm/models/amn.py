"""Attention-mixture network: the context mean plus an attention-driven residual correction."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LatentVectorModel


class AMNModel(LatentVectorModel):
    """normalize(mean(context) + MLP([attend(context; query=last), last])) (1.5M params at D=768).

    The context mean alone is a strong baseline for the next vector, so the network only learns a
    correction: one attention head, queried by the last vector, picks the relevant context vectors
    (values are the raw vectors, no projection), and an MLP turns that plus the last vector into the
    residual. No recurrence, so it is by far the cheapest model.
    """

    name = "amn"
    PARAMS = ("amn_hidden", "dropout", "anchor")
    OUTPUT_LAYERS = ("mlp.3",)
    # the attention is queried by the last vector only: one prediction per context (train.targets: last)
    SEQUENCE = False
    DESCRIPTION = "context mean + residual from one-head attention (query = last vector) and an MLP"

    def __init__(self, input_dim, context_length, amn_hidden, dropout, anchor, normalize):
        super().__init__(input_dim, context_length, anchor=anchor, normalize=normalize, amn_hidden=amn_hidden,
                         dropout=dropout)
        self.query = nn.Linear(input_dim, amn_hidden)
        # no key bias: q . b_k is the same for every position, so it would cancel in the softmax
        self.key = nn.Linear(input_dim, amn_hidden, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * input_dim, amn_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(amn_hidden, input_dim),
        )

    def head_output(self, context: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        last = context[:, -1]
        q = self.query(last)                                             # [B, H]
        # q . (W_k x_l) = (W_k^T q) . x_l: fold the key map into the query instead of projecting all
        # L context vectors, O(B*L*D) instead of O(B*L*D*H)
        qk = q @ self.key.weight                                         # [B, D]
        scores = torch.einsum("bd,bld->bl", qk, context) / math.sqrt(q.shape[-1])
        attended = torch.einsum("bl,bld->bd", F.softmax(scores.float(), dim=-1).to(context.dtype), context)
        residual = self.mlp(torch.cat([attended, last], dim=-1))
        if self.anchor != "none":  # the anchor replaces the built-in context mean
            return residual
        # float32 accumulation and result also for a bfloat16 context (lvm.data.WindowDataset.with_context_dtype)
        return context.mean(dim=1, dtype=torch.float32) + residual
