"""Shared plumbing for every latent vector model: config capture, param checks, the output rule."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_int(key: str, value, minimum: int = 1) -> int:
    # bool is an int subclass; `model.hidden_dim: true` in YAML is a typo, not 1
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"model.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def check_dropout(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"model.dropout must be a number in [0, 1), got {value!r}")
    return float(value)


class LatentVectorModel(nn.Module):
    """Base class: maps a context [B, L, D] to a next-vector prediction [B, D].

    Subclasses set `name` and `PARAMS` (the `model.*` keys they read) and implement `predict_raw`.
    """

    name: str = ""
    PARAMS: tuple[str, ...] = ()
    # Under bf16 autocast the model uses its context only through ops that round it to bf16 first
    # (or, amn, averages it in fp32), so training may gather contexts from a bf16 table (train.bf16_contexts).
    BF16_CONTEXTS: bool = True

    def __init__(self, input_dim: int, context_length: int, **params):
        super().__init__()
        # input_dim comes from the encoder, context_length from the data section of params.yaml
        if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim (the vector dimension) must be an integer >= 1, got {input_dim!r}")
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"data.context_length must be an integer >= 1, got {context_length!r}")
        self.input_dim = input_dim
        self.context_length = context_length
        # Everything needed to rebuild the architecture from a checkpoint: create_model(**config)
        self.config = {"name": self.name, "input_dim": input_dim, "context_length": context_length, **params}

    def predict_raw(self, context: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, context: torch.Tensor, return_raw: bool = False):
        if context.dim() != 3 or context.shape[-1] != self.input_dim or context.shape[1] < 1:
            raise ValueError(
                f"{self.name}: expected context of shape [batch, length, {self.input_dim}], "
                f"got {tuple(context.shape)}"
            )
        # float32 before normalising: under bf16 autocast the head emits bf16, too coarse for a unit vector
        raw = self.predict_raw(context).float()
        pred = F.normalize(raw, dim=-1)
        return (pred, raw) if return_raw else pred
