"""Declarations only: importing this needs no torch, so a server can validate specs with it.
The model is built, and the data made, on workers, by the functions named here."""

from sweep.models import DatasetPlugin, Hyperparameter, ModelPlugin

RESIDUAL_MLP = ModelPlugin(
    build="sweep_example_plugin.nets:residual_mlp",
    hyperparameters={
        "width": Hyperparameter("int", 64, 4, 1024, help="units in each residual block"),
        "blocks": Hyperparameter("int", 2, 1, 16, help="residual blocks"),
        "dropout": Hyperparameter("float", 0.0, 0.0, 1.0, high_open=True),
    },
)

MOONS = DatasetPlugin(
    load="sweep_example_plugin.data:moons", task="classification", classes=("upper", "lower")
)
