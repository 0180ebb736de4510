"""GRU stack: residual GRU layers with LayerNorm; the top layer's state at each step predicts the next vector."""

import torch
import torch.nn as nn

from .base import LatentVectorModel
from .fastrnn import gru_stack, use_fast_path


class GRUModel(LatentVectorModel):
    """Linear D->512, 4 x (GRU(512) + residual + LayerNorm), state -> Linear -> D (7.1M at D=768)."""

    name = "gru"
    PARAMS = ("hidden_dim", "gru_layers", "dropout", "anchor")
    DESCRIPTION = "input linear, residual GRU+LayerNorm stack, step state -> linear"

    def __init__(self, input_dim, context_length, hidden_dim, gru_layers, dropout, anchor, normalize):
        super().__init__(input_dim, context_length, anchor=anchor, normalize=normalize, hidden_dim=hidden_dim,
                         gru_layers=gru_layers, dropout=dropout)
        self.inp = nn.Linear(input_dim, hidden_dim)
        # separate single-layer GRUs (not one fused stack) because each layer gets its own residual + norm
        self.grus = nn.ModuleList(nn.GRU(hidden_dim, hidden_dim, batch_first=True) for _ in range(gru_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(gru_layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, input_dim)

    def head_output(self, x: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        if use_fast_path(self.grus[0], x):
            return self._head_fast(x, all_positions)
        x = self.drop(self.inp(x))
        for gru, norm in zip(self.grus, self.norms):
            # the layer above needs every step; only the last step of the top layer is read out
            y, _ = gru(x)
            x = norm(x + self.drop(y))
        return self.head(x if all_positions else x[:, -1])

    def _head_fast(self, x: torch.Tensor, all_positions: bool) -> torch.Tensor:
        """CPU path: the same maths time-major ([L, B, H], so each step is a contiguous block) with
        lvm.models.fastrnn's GRU; for the last position only, the top layer's residual + norm only
        for the step read out."""
        x = self.drop(self.inp(x.transpose(0, 1)))
        last = len(self.grus) - 1
        for i, (gru, norm) in enumerate(zip(self.grus, self.norms)):
            y, _ = gru_stack(gru, x)
            x = norm(x[-1] + self.drop(y[-1])) if i == last and not all_positions else norm(x + self.drop(y))
        return self.head(x.transpose(0, 1) if all_positions else x)
