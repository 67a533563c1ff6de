"""Forecast models: past L hours of all features at a station -> PM2.5 for the next K hours."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from crosscity.config import ModelConfig


class MLPForecaster(nn.Module):
    """Flattens the window: cheap and strong enough to beat persistence."""

    def __init__(self, past: int, n_inputs: int, horizon: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        width = past * n_inputs
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, horizon))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class GRUForecaster(nn.Module):
    """Reads the window hour by hour; the last hidden state predicts all horizons."""

    def __init__(self, n_inputs: int, horizon: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(
            n_inputs, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class CausalBlock(nn.Module):
    """One residual layer of a temporal convolution network: a dilated convolution that sees only
    the past (left padding), GELU, dropout."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.drop(F.gelu(self.conv(F.pad(h, (self.pad, 0)))))


class TCNForecaster(nn.Module):
    """Temporal convolutions with dilations 1, 2, 4, ...: `layers` blocks of kernel 3 see the last
    2^(layers+1) - 1 hours; the last hour's features predict all horizons. Shares its weights over
    time, so it has far fewer parameters than the MLP's first layer."""

    KERNEL = 3

    def __init__(self, n_inputs: int, horizon: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.inp = nn.Conv1d(n_inputs, hidden, 1)
        self.blocks = nn.Sequential(*(CausalBlock(hidden, self.KERNEL, 2**i, dropout) for i in range(layers)))
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.transpose(1, 2)))
        return self.head(h[:, :, -1])


def build_model(cfg: ModelConfig, past: int, n_inputs: int, horizon: int) -> nn.Module:
    if cfg.kind == "mlp":
        return MLPForecaster(past, n_inputs, horizon, cfg.hidden, cfg.layers, cfg.dropout)
    if cfg.kind == "tcn":
        return TCNForecaster(n_inputs, horizon, cfg.hidden, cfg.layers, cfg.dropout)
    return GRUForecaster(n_inputs, horizon, cfg.hidden, cfg.layers, cfg.dropout)
