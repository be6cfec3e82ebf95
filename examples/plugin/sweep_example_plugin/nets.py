"""The residual MLP: blocks of Linear-ReLU-Linear with a skip connection."""

from typing import Any

from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def residual_mlp(
    input_shape: tuple[int, ...], n_outputs: int, hparams: dict[str, Any]
) -> nn.Module:
    width = int(hparams["width"])
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, width),
        *(Block(width, float(hparams["dropout"])) for _ in range(int(hparams["blocks"]))),
        nn.ReLU(),
        nn.Linear(width, n_outputs),
    )
