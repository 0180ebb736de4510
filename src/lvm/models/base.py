"""Shared plumbing for every latent vector model: config capture, the output rule, the normalised
space and the baseline anchor. (The values a model is built with are checked by lvm.config, through
create_model.)

A model reads a context [B, L, D] and predicts the next vector. Subclasses implement
`head_output(x, all_positions)` on the *normalised* context x and return the head's output
[B, D] for the last position, or [B, L, D] for every position (the prediction at position t may
read x[:, :t+1] only: causal). The base class turns that into the raw prediction:

    raw_t = anchor(context[:, :t+1]) + scale * head_t      (model.anchor: last | decay_mean)
    raw_t = shift + scale * head_t                          (model.anchor: none)

`shift`/`scale` are per-dimension statistics of the train split (train.normalize), stored as
buffers so a checkpoint carries them; with normalize none they are 0 and 1 and nothing is applied.
With an anchor the head's last layer starts at zero (`create_model`), so a fresh model predicts
exactly its anchor baseline and training learns only the remainder (as NLinear does).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

def decay_weights(decay: torch.Tensor, length: int) -> torch.Tensor:
    """[L, L] causal weights: row t = decay**(t-i) for i <= t, 0 after t, each row summing to 1
    (row L-1 is the exp_decay_mean baseline's weighting of a full context)."""
    t = torch.arange(length, device=decay.device, dtype=torch.float32)
    age = t[:, None] - t[None, :]
    w = torch.where(age >= 0, decay.float() ** age.clamp_min(0), torch.zeros((), device=decay.device))
    return w / w.sum(dim=1, keepdim=True)


def fit_normalizer(vectors, kind: str):
    """Per-dimension (shift, scale) float32 tensors of `vectors` [N, D] (train rows only):
    center = (mean, 1), standard = (mean, std), robust = (median, 0.7413 * IQR) as in LCM."""
    import numpy as np

    x = np.asarray(vectors, dtype=np.float64)
    if kind == "center":
        shift, scale = x.mean(0), np.ones(x.shape[1])
    elif kind == "standard":
        shift, scale = x.mean(0), x.std(0)
    elif kind == "robust":
        q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75], axis=0)
        shift, scale = q50, 0.7413 * (q75 - q25)  # 0.7413 * IQR = the std of a normal distribution
    else:
        raise ValueError(f"train.normalize: unknown kind {kind!r}")
    # a constant dimension would divide by zero: leave it unscaled
    scale = np.where(scale > 1e-8, scale, 1.0)
    return torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


class LatentVectorModel(nn.Module):
    """Base class: maps a context [B, L, D] to a next-vector prediction [B, D] (or [B, L, D]).

    Subclasses set `name` and `PARAMS` (the `model.*` keys they read), `OUTPUT_LAYERS` (the layers
    whose weights start at zero under an anchor) and implement `head_output`.
    """

    name: str = ""
    PARAMS: tuple[str, ...] = ()
    OUTPUT_LAYERS: tuple[str, ...] = ("head",)
    # can predict at every position in one pass (train.targets: all)
    SEQUENCE: bool = True
    # Under bf16 autocast the model uses its context only through ops that round it to bf16 first
    # (or, amn, averages it in fp32), so training may gather contexts from a bf16 table (train.bf16_contexts).
    BF16_CONTEXTS: bool = True

    def __init__(self, input_dim: int, context_length: int, anchor: str, normalize: str, **params):
        super().__init__()
        # input_dim comes from the encoder, context_length from the data section of params.yaml
        if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim (the vector dimension) must be an integer >= 1, got {input_dim!r}")
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"data.context_length must be an integer >= 1, got {context_length!r}")
        self.input_dim = input_dim
        self.context_length = context_length
        self.anchor = anchor  # (anchor, normalize and the model's params: checked by create_model)
        self.normalize = normalize
        # Everything needed to rebuild the architecture from a checkpoint: create_model(**config)
        self.config = {"name": self.name, "input_dim": input_dim, "context_length": context_length,
                       "anchor": anchor, "normalize": normalize, **params}
        # statistics of the train split (set by set_normalizer); identity until then
        self.register_buffer("norm_shift", torch.zeros(input_dim))
        self.register_buffer("norm_scale", torch.ones(input_dim))
        # decay of the decay_mean anchor: fitted on train by the training loop, like the baseline's
        self.register_buffer("anchor_decay", torch.tensor(0.9))

    # -- set up by the training loop, saved in the state_dict ------------------------------------
    def set_normalizer(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        self.norm_shift.copy_(shift)
        self.norm_scale.copy_(scale)

    def set_anchor_decay(self, decay: float) -> None:
        self.anchor_decay.fill_(float(decay))

    def zero_output_layers(self) -> None:
        """Zero the last layer(s) of the head: with an anchor the fresh model equals the anchor."""
        for name in self.OUTPUT_LAYERS:
            layer = self.get_submodule(name)
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    # -- the forward pass -------------------------------------------------------------------------
    def head_output(self, x: torch.Tensor, all_positions: bool = False, **extra) -> torch.Tensor:
        raise NotImplementedError

    def anchor_output(self, context: torch.Tensor, all_positions: bool) -> torch.Tensor:
        """The anchor baseline (unit vectors, float32) at the last position [B, D] or at every one."""
        ctx = context.float()
        if self.anchor == "last":
            a = ctx if all_positions else ctx[:, -1]
        else:  # decay_mean: the exp_decay_mean baseline over the context up to each position
            w = decay_weights(self.anchor_decay, ctx.shape[1])
            with torch.autocast(ctx.device.type, enabled=False):  # a baseline, so exact float32
                a = torch.einsum("ti,bid->btd", w, ctx) if all_positions else torch.einsum("i,bid->bd", w[-1], ctx)
        return F.normalize(a, dim=-1)

    def predict_raw(self, context: torch.Tensor, all_positions: bool = False, **extra) -> torch.Tensor:
        """Raw (un-normalised) prediction; `extra` goes to head_output (memory_gru's `reads`)."""
        x = context
        if self.normalize != "none":
            x = (context.float() - self.norm_shift) / self.norm_scale
        # float32 before normalising: under bf16 autocast the head emits bf16, too coarse for a unit vector
        out = self.head_output(x, all_positions, **extra).float()
        if self.normalize != "none":
            out = out * self.norm_scale
        if self.anchor != "none":
            return self.anchor_output(context, all_positions) + out
        return out + self.norm_shift if self.normalize != "none" else out

    def forward(self, context: torch.Tensor, return_raw: bool = False, all_positions: bool = False):
        """Unit-norm prediction [B, D] after the whole context, or [B, L, D] after each prefix."""
        if context.dim() != 3 or context.shape[-1] != self.input_dim or context.shape[1] < 1:
            raise ValueError(
                f"{self.name}: expected context of shape [batch, length, {self.input_dim}], "
                f"got {tuple(context.shape)}"
            )
        if all_positions and not self.SEQUENCE:
            raise ValueError(f"{self.name}: predicts after the whole context only (train.targets: last)")
        raw = self.predict_raw(context, all_positions)
        pred = F.normalize(raw, dim=-1)
        return (pred, raw) if return_raw else pred
