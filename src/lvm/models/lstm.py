"""LSTM baseline: a stacked LSTM reads the context; its output at each step predicts the next vector."""

import torch
import torch.nn as nn

from lvm.hardware import native_bf16

from .base import LatentVectorModel


class LSTMModel(LatentVectorModel):
    """2 x LSTM(512) -> Linear -> D (5.1M params at D=768)."""

    name = "lstm"
    PARAMS = ("hidden_dim", "lstm_layers", "dropout", "anchor")
    DESCRIPTION = "stacked LSTM, step output -> linear"

    def __init__(self, input_dim, context_length, hidden_dim, lstm_layers, dropout, anchor, normalize):
        super().__init__(input_dim, context_length, anchor=anchor, normalize=normalize, hidden_dim=hidden_dim,
                         lstm_layers=lstm_layers, dropout=dropout)
        self.lstm = nn.LSTM(input_dim, hidden_dim, lstm_layers, batch_first=True,
                            dropout=dropout if lstm_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_dim, input_dim)

    def head_output(self, x: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not native_bf16(x.device):
            # oneDNN has no bf16 LSTM primitive on CPUs without native bf16 (RuntimeError): run it in fp32
            # on the bf16-rounded input autocast would have given it (so a bf16 context table changes nothing)
            with torch.autocast("cpu", enabled=False):
                y, (h_n, _) = self.lstm(x.to(torch.bfloat16).float())
        else:
            y, (h_n, _) = self.lstm(x)
        # top layer's output at every step (= its state), or its state after the last step
        return self.head(y if all_positions else h_n[-1])
