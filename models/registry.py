"""Build the model a trial names: a catalog name -> a torch module, by the function its
declaration names (bundled or a plugin's)."""

from __future__ import annotations

from typing import Any

from torch import nn

from sweep.models import catalog, plugins
from sweep.models.datasets import Dataset, load_dataset


def build_model(
    model: str, input_shape: tuple[int, ...], n_outputs: int, hparams: dict[str, Any]
) -> nn.Module:
    """A freshly initialized `model`; `hparams` as returned by catalog.resolve_hyperparameters."""
    info = catalog.models().get(model)
    if info is None:
        raise ValueError(f"unknown model {model!r}; known: {sorted(catalog.models())}")
    built: nn.Module = plugins.resolve(info.build)(input_shape, n_outputs, hparams)
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
