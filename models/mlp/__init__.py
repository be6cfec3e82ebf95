"""The bundled MLP, declared as a plugin declares its model: hyperparameters and the function
that builds it (in .network, imported only where a trial trains). No torch here."""

from __future__ import annotations

from sweep.models.plugins import Hyperparameter, ModelPlugin

MODEL = ModelPlugin(
    build="sweep.models.mlp.network:build",
    hyperparameters={
        "hidden_layers": Hyperparameter("int", 2, low=1, high=16),
        "hidden_units": Hyperparameter("int", 64, low=1, high=8192),
        "batch_norm": Hyperparameter("bool", False),
    },
)
