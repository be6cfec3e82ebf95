"""Build the model a trial names: catalog names -> torch modules.

The names mirror sweep.models.catalog (which the service reads without torch); a test checks that
every name there builds here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sweep.models import catalog, plugins
from sweep.models.cnn import CNN, CNNConfig
from sweep.models.datasets import Dataset, load_dataset
from sweep.models.mlp import MLP, MLPConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def _mlp(input_shape: tuple[int, ...], n_outputs: int, hparams: dict[str, Any]) -> nn.Module:
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


def _cnn(input_shape: tuple[int, ...], n_outputs: int, hparams: dict[str, Any]) -> nn.Module:
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


_BUILDERS = {"mlp": _mlp, "cnn": _cnn}


def build_model(
    model: str, input_shape: tuple[int, ...], n_outputs: int, hparams: dict[str, Any]
) -> nn.Module:
    """A freshly initialized `model`; `hparams` as returned by catalog.resolve_hyperparameters."""
    if model in _BUILDERS:
        return _BUILDERS[model](input_shape, n_outputs, hparams)
    plugin = plugins.model_plugins().get(model)
    if plugin is None:
        raise ValueError(f"unknown model {model!r}; known: {sorted(catalog.MODELS)}")
    built: nn.Module = plugins.resolve(plugin.build)(input_shape, n_outputs, hparams)
    return built


def build_for_trial(
    model: str, dataset: dict[str, Any], values: dict[str, Any]
) -> tuple[nn.Module, Dataset]:
    """The untrained model and the data of a trial, e.g. to load its downloaded weights.

    `dataset` is the spec's {"name", "options", "val_fraction", "split_seed", "standardize"}
    of a bundled or plugin dataset; `values` are the trial's params merged with the spec's
    fixed values.
    """
    data = load_dataset(
        dataset["name"],
        dataset.get("options") or {},
        val_fraction=float(dataset.get("val_fraction", 0.2)),
        split_seed=int(dataset.get("split_seed", 0)),
        standardize=bool(dataset.get("standardize", True)),
    )
    hparams = catalog.resolve_hyperparameters(model, values)
    return build_model(model, data.input_shape, data.n_outputs, hparams), data
