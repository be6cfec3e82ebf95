"""A trained model of the built-in trainer as one file that needs nothing else to predict:
its weights, what it was built with, and what its data went through before training.

    {"format": "sweep.bundle/1",
     "model": "mlp", "hparams": {...},          # catalog.resolve_hyperparameters
     "dataset": {...},                          # the spec's dataset, as the trial saw it
     "task": "classification", "input_shape": [64], "n_outputs": 10,
     "x_mean": tensor | None, "x_std": tensor | None,   # per flattened feature, float64
     "y_mean": 0.0, "y_std": 1.0,               # regression targets' scaling
     "classes": [...] | None,                   # class index -> label
     "state_dict": {...}}                       # the network's weights

It is a torch.save of plain data, read with torch.load(weights_only=True): loading a bundle
runs no code from it. `load` turns one into a `Predictor`, an nn.Module in eval mode that takes
raw inputs and answers in the data's own units and labels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from sweep.models import catalog
from sweep.models.datasets import Preprocessing
from sweep.models.registry import build_model

FORMAT = "sweep.bundle/1"


def pack(
    model: str,
    hparams: dict[str, Any],
    dataset: dict[str, Any],
    data: Preprocessing,
    state_dict: dict[str, torch.Tensor],
) -> bytes:
    """The bundle of a network trained on data that went through `data`."""
    buffer = io.BytesIO()
    torch.save(_content(model, hparams, dataset, data, state_dict), buffer)
    return buffer.getvalue()


def _content(
    model: str,
    hparams: dict[str, Any],
    dataset: dict[str, Any],
    data: Preprocessing,
    state_dict: dict[str, torch.Tensor],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": model,
        "hparams": hparams,
        "dataset": dataset,
        "task": data.task,
        "input_shape": list(data.input_shape),
        "n_outputs": data.n_outputs,
        "x_mean": _tensor(data.x_mean),
        "x_std": _tensor(data.x_std),
        "y_mean": data.y_mean,
        "y_std": data.y_std,
        "classes": list(data.classes) if data.classes is not None else None,
        "state_dict": state_dict,
    }


def _tensor(values: np.ndarray | None) -> torch.Tensor | None:
    return None if values is None else torch.from_numpy(np.asarray(values, dtype=np.float64))


def read(source: str | Path | bytes | BinaryIO) -> dict[str, Any]:
    """What a model file holds: a bundle, or the bare state_dict older trials stored.

    Raises:
        ValueError: the file is neither (e.g. a program's own model file).
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        content = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle's and zipfile's errors as they come
        raise ValueError(f"not a model file of the built-in trainer: {exc}") from exc
    if not isinstance(content, dict):
        raise ValueError("not a model file of the built-in trainer (no weights in it)")
    return content


def is_bundle(content: dict[str, Any]) -> bool:
    return content.get("format") == FORMAT


def load(source: str | Path | bytes | BinaryIO) -> Predictor:
    """The Predictor of a bundle file (or its bytes), in eval mode on the CPU."""
    content = read(source)
    if not is_bundle(content):
        raise ValueError(
            f"not a model bundle (no format {FORMAT!r}): a bare state_dict needs its trial's "
            "spec to rebuild; load it by trial id with sweep.load_model(TRIAL_ID)"
        )
    return from_content(content)


def from_content(content: dict[str, Any]) -> Predictor:
    network = build_model(
        content["model"], tuple(content["input_shape"]), content["n_outputs"], content["hparams"]
    )
    network.load_state_dict(content["state_dict"])
    predictor = Predictor(
        network,
        task=content["task"],
        input_shape=tuple(content["input_shape"]),
        x_mean=content["x_mean"],
        x_std=content["x_std"],
        y_mean=float(content["y_mean"]),
        y_std=float(content["y_std"]),
        classes=content["classes"],
    )
    predictor.info = {key: content[key] for key in ("model", "hparams", "dataset")}
    return predictor.eval()


def rebuild(
    model: str,
    values: dict[str, Any],
    dataset: dict[str, Any],
    data: Preprocessing,
    state: dict[str, torch.Tensor],
) -> Predictor:
    """The Predictor of a bare state_dict, from the trial's params and its dataset's
    preprocessing (the split is seeded: loaded again, the statistics come out as in training)."""
    hparams = catalog.resolve_hyperparameters(model, values)
    return from_content(_content(model, hparams, dataset, data, state))


class Predictor(nn.Module):
    """A trained network between the preprocessing of its data and the data's own units.

    forward(x) takes raw samples (n, *input_shape) or (n, features), as the dataset holds them
    before any scaling, and answers a tensor: for regression the values in the target's units,
    otherwise class indices (`classes[i]` is the label of index i). `predict` answers labels,
    `predict_proba` class probabilities. `network` is the trained module itself, which takes
    standardized inputs.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        task: str,
        input_shape: tuple[int, ...],
        x_mean: torch.Tensor | None,
        x_std: torch.Tensor | None,
        y_mean: float,
        y_std: float,
        classes: Sequence[Any] | None,
    ) -> None:
        super().__init__()
        self.network = network
        self.task = task
        self.input_shape = input_shape
        self.n_features = int(np.prod(input_shape))
        self.y_mean, self.y_std = y_mean, y_std
        self.classes = list(classes) if classes is not None else None
        self.info: dict[str, Any] = {}
        self.register_buffer("x_mean", x_mean)
        self.register_buffer("x_std", x_std)

    def scores(self, x: Any) -> torch.Tensor:
        """The network's raw outputs (logits, or standardized values) for raw samples."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        device = next(self.network.parameters()).device
        flat = x.reshape(len(x), -1).to(device, torch.float64)
        if flat.shape[1] != self.n_features:
            raise ValueError(
                f"each sample needs {self.n_features} values (shape {self.input_shape}); "
                f"got {flat.shape[1]}"
            )
        if self.x_mean is not None and self.x_std is not None:
            flat = (flat - self.x_mean) / self.x_std
        out: torch.Tensor = self.network(flat.to(torch.float32).reshape(-1, *self.input_shape))
        return out

    def forward(self, x: Any) -> torch.Tensor:
        out = self.scores(x)
        if self.task == "regression":
            return out.view(-1) * self.y_std + self.y_mean
        if self.task == "binary":
            return (out.view(-1) > 0).long()
        return out.argmax(dim=1)

    @torch.no_grad()
    def predict(self, x: Any) -> np.ndarray:
        """Predictions as labels (the uploaded class names, say) or values."""
        predicted = self(x).cpu().numpy()
        if self.task == "regression" or self.classes is None:
            return predicted
        return np.asarray(self.classes)[predicted]

    @torch.no_grad()
    def predict_proba(self, x: Any) -> np.ndarray:
        """(n, classes) probabilities, columns in the order of `classes`."""
        if self.task == "regression":
            raise ValueError("a regression model predicts values, not probabilities")
        out = self.scores(x)
        if self.task == "binary":
            positive = torch.sigmoid(out.view(-1))
            out = torch.stack([1 - positive, positive], dim=1)
        else:
            out = torch.softmax(out, dim=1)
        return out.cpu().numpy()
