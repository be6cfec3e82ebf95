"""The bundled CNN, declared as a plugin declares its model: hyperparameters, image inputs, and
the function that builds it (in .network, imported only where a trial trains). No torch here."""

from __future__ import annotations

from sweep.models.plugins import Hyperparameter, ModelPlugin

MODEL = ModelPlugin(
    build="sweep.models.cnn.network:build",
    hyperparameters={
        "channels": Hyperparameter("int", 16, low=1, high=512, help="filters in the first conv"),
        "conv_layers": Hyperparameter("int", 2, low=1, high=3, help="conv+pool blocks"),
        "kernel_size": Hyperparameter("choice", 3, choices=(1, 3, 5)),
        "fc_units": Hyperparameter("int", 64, low=1, high=8192),
        "batch_norm": Hyperparameter("bool", True),
    },
    inputs="image",
)
