"""A multilayer perceptron for flat (or flattened) feature vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sweep.models.activations import ACTIVATIONS


@dataclass
class MLPConfig:
    in_features: int = 64  # features per sample after flattening
    n_outputs: int = 10  # classes, or 1 for binary and regression
    hidden_layers: int = 2
    hidden_units: int = 64
    activation: type[nn.Module] = nn.ReLU  # a class, instantiated once per hidden layer
    dropout: float = 0.0  # after each hidden layer's activation; 0 disables
    batch_norm: bool = False  # BatchNorm1d between each hidden Linear and its activation


class MLP(nn.Module):
    """Flatten -> [Linear -> (BatchNorm1d) -> activation -> Dropout] x hidden_layers -> Linear."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Flatten()]
        width = config.in_features
        for _ in range(config.hidden_layers):
            layers += self._hidden(width, config)
            width = config.hidden_units
        layers.append(nn.Linear(width, config.n_outputs))
        self.net = nn.Sequential(*layers)

    @staticmethod
    def _hidden(width: int, config: MLPConfig) -> list[nn.Module]:
        block: list[nn.Module] = [nn.Linear(width, config.hidden_units)]
        if config.batch_norm:
            block.append(nn.BatchNorm1d(config.hidden_units))
        block += [config.activation(), nn.Dropout(config.dropout)]
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(input_shape: tuple[int, ...], n_outputs: int, hparams: dict[str, Any]) -> MLP:
    """The MLP of a trial's hyperparameters (catalog.resolve_hyperparameters), for inputs of
    any shape (flattened)."""
    in_features = 1
    for size in input_shape:
        in_features *= size
    return MLP(
        MLPConfig(
            in_features=in_features,
            n_outputs=n_outputs,
            hidden_layers=int(hparams["hidden_layers"]),
            hidden_units=int(hparams["hidden_units"]),
            activation=ACTIVATIONS[str(hparams["activation"])],
            dropout=float(hparams["dropout"]),
            batch_norm=bool(hparams["batch_norm"]),
        )
    )
