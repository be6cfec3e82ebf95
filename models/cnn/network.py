"""A small convolutional network for (channels, height, width) images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sweep.models.activations import ACTIVATIONS


@dataclass
class CNNConfig:
    input_shape: tuple[int, int, int] = (1, 8, 8)  # one sample: (channels, height, width)
    n_outputs: int = 10  # classes, or 1 for binary and regression
    channels: int = 16  # filters in the first conv; each later block doubles them
    conv_layers: int = 2  # conv -> (batch norm) -> activation -> pool blocks
    kernel_size: int = 3  # odd, so padding=kernel_size // 2 keeps the spatial size
    fc_units: int = 64  # width of the hidden fully connected layer
    activation: type[nn.Module] = nn.ReLU  # a class, instantiated once per use
    dropout: float = 0.0  # before each fully connected layer; 0 disables
    batch_norm: bool = True  # BatchNorm2d after each conv


class CNN(nn.Module):
    """[Conv2d -> (BatchNorm2d) -> activation -> MaxPool2d(2)] x conv_layers, then
    Dropout -> Linear(fc_units) -> activation -> Dropout -> Linear(n_outputs)."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        in_channels, height, width = config.input_shape
        blocks: list[nn.Module] = []
        for i in range(config.conv_layers):
            out_channels = config.channels * 2**i
            blocks += self._conv(in_channels, out_channels, pool=min(height, width) > 1)
            if min(height, width) > 1:  # pooling a 1-pixel map would leave nothing
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(in_channels * height * width, config.fc_units),
            config.activation(),
            nn.Dropout(config.dropout),
            nn.Linear(config.fc_units, config.n_outputs),
        )

    def _conv(self, in_channels: int, out_channels: int, pool: bool) -> list[nn.Module]:
        k = self.config.kernel_size
        block: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, k, padding=k // 2)]
        if self.config.batch_norm:
            block.append(nn.BatchNorm2d(out_channels))
        block.append(self.config.activation())
        if pool:
            block.append(nn.MaxPool2d(2))
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(input_shape: tuple[int, ...], n_outputs: int, hparams: dict[str, Any]) -> CNN:
    """The CNN of a trial's hyperparameters (catalog.resolve_hyperparameters), for
    (channels, height, width) inputs."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs (channels, height, width) inputs, got shape {input_shape}")
    channels, height, width = input_shape
    return CNN(
        CNNConfig(
            input_shape=(channels, height, width),
            n_outputs=n_outputs,
            channels=int(hparams["channels"]),
            conv_layers=int(hparams["conv_layers"]),
            kernel_size=int(hparams["kernel_size"]),
            fc_units=int(hparams["fc_units"]),
            activation=ACTIVATIONS[str(hparams["activation"])],
            dropout=float(hparams["dropout"]),
            batch_norm=bool(hparams["batch_norm"]),
        )
    )
