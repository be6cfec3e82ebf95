"""Build the model a trial names: a catalog name -> a torch module, by the function its
declaration names (bundled or a plugin's)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from sweep.models import catalog, plugins
from sweep.models.datasets import Dataset, for_spec


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
    model: str,
    dataset: dict[str, Any],
    values: dict[str, Any],
    uploaded: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[nn.Module, Dataset]:
    """The untrained model and the data of a trial, e.g. to load its downloaded weights.

    `dataset` is the spec's dataset as the service stored it; an uploaded one needs its arrays
    (`uploaded`, X and y). `values` are the trial's params merged with the spec's fixed values.
    (`sweep.load_model(trial_id)` does all of this, and takes raw inputs.)
    """
    data = for_spec(dataset, uploaded)
    hparams = catalog.resolve_hyperparameters(model, values)
    return build_model(model, data.input_shape, data.n_outputs, hparams), data
