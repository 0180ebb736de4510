"""LSTM baseline: a stacked LSTM reads the context, its last output predicts the next vector."""

import torch
import torch.nn as nn

from .base import LatentVectorModel, check_dropout, check_int


class LSTMModel(LatentVectorModel):
    """2 x LSTM(512) -> Linear -> D (5.1M params at D=768)."""

    name = "lstm"
    PARAMS = ("hidden_dim", "lstm_layers", "dropout")
    DESCRIPTION = "stacked LSTM, last step -> linear"

    def __init__(self, input_dim, context_length, hidden_dim=512, lstm_layers=2, dropout=0.0):
        check_int("hidden_dim", hidden_dim)
        check_int("lstm_layers", lstm_layers)
        dropout = check_dropout(dropout)
        super().__init__(input_dim, context_length, hidden_dim=hidden_dim, lstm_layers=lstm_layers, dropout=dropout)
        # one fused multi-layer call: the whole stack runs inside a single ATen kernel loop
        self.lstm = nn.LSTM(input_dim, hidden_dim, lstm_layers, batch_first=True,
                            dropout=dropout if lstm_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_dim, input_dim)

    def predict_raw(self, context: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(context)
        return self.head(h_n[-1])  # top layer's state after the last step
