"""TabularNet: a feed-forward net for tabular binary classification."""

from __future__ import annotations

import torch
from torch import nn


class TabularNet(nn.Module):
    """Per hidden layer Linear -> BatchNorm -> GELU -> Dropout, then one logit."""

    def __init__(self, in_features: int, hidden_dims: list[int], dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
