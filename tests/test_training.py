"""Real training on scikit-learn's bundled datasets: small models, few epochs, no mocks."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from sweep.models import bundle, catalog
from sweep.models.activations import ACTIVATIONS
from sweep.models.cnn.network import CNN, CNNConfig
from sweep.models.datasets import Dataset, for_spec, load_dataset
from sweep.models.registry import build_for_trial, build_model
from sweep.worker.train import (
    DeviceData,
    Diverged,
    Pruned,
    Snapshot,
    Stopped,
    TrialConfig,
    TrialResult,
    evaluate,
    measure_latency,
    to_device,
    train_trial,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models train faster on one

CPU = torch.device("cpu")
Reports = list[tuple[int, dict[str, float]]]


_DATA: dict[str, DeviceData] = {}


def device_data(name: str) -> DeviceData:
    """Each dataset loaded once for the whole file, as a worker does."""
    if name not in _DATA:
        _DATA[name] = to_device(load_dataset(name), CPU)
    return _DATA[name]


def make_config(
    dataset: str = "digits",
    model: str = "mlp",
    objective: str = "val_accuracy",
    direction: str = "maximize",
    reduce: str = "best",
    number: int = 0,
    **values: Any,
) -> TrialConfig:
    spec = {"name": dataset, "options": {}, "val_fraction": 0.2, "split_seed": 0}
    hparams = catalog.resolve_hyperparameters(model, values)
    return TrialConfig(model, spec, hparams, objective, direction, reduce, number)


def train(config: TrialConfig) -> tuple[TrialResult, Reports]:
    reports: Reports = []
    result = train_trial(
        config, device_data(config.dataset["name"]), CPU, lambda e, m: reports.append((e, m))
    )
    return result, reports


TIMED = ("epoch_seconds", "latency_ms", "train_seconds")  # vary from run to run


def without_time(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMED}


def reported(task: str) -> set[str]:
    """The metrics every epoch of a `task` trial reports."""
    return {*catalog.TASK_METRICS[task], *catalog.EXTRA_METRICS, *catalog.COST_METRICS}


# -------------------------------------------------------------------------------------------
# Datasets


@pytest.mark.parametrize("name", sorted(catalog.datasets()))
def test_every_catalog_dataset_loads_standardized(name: str) -> None:
    data = load_dataset(name)
    task = catalog.datasets()[name].task
    assert data.task == task
    assert data.X_train.dtype == data.X_val.dtype == np.float32
    assert data.X_train.shape[1:] == data.input_shape
    assert math.prod(data.input_shape) == data.n_features
    flat = data.X_train.reshape(len(data.X_train), -1)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-4)
    expected = np.int64 if task == "classification" else np.float32
    assert data.y_train.dtype == data.y_val.dtype == expected
    if task == "classification":
        assert data.n_outputs == len(np.unique(data.y_train))
    else:
        assert data.n_outputs == 1


def test_split_is_fixed_by_seed_and_stratified() -> None:
    a, b = load_dataset("iris"), load_dataset("iris")
    np.testing.assert_array_equal(a.X_val, b.X_val)
    assert not np.array_equal(a.X_val, load_dataset("iris", split_seed=1).X_val)
    assert np.bincount(a.y_val).tolist() == [10, 10, 10]
    assert len(load_dataset("iris", val_fraction=0.5).y_val) == 75


def test_digits_image_is_digits_reshaped() -> None:
    flat, image = load_dataset("digits"), load_dataset("digits_image")
    assert image.input_shape == (1, 8, 8)
    assert image.X_train.shape == (len(flat.X_train), 1, 8, 8)
    np.testing.assert_array_equal(image.X_train.reshape(len(image.X_train), -1), flat.X_train)


def test_regression_targets_standardized_with_original_scale_kept() -> None:
    data = load_dataset("diabetes")
    assert abs(float(data.y_train.mean())) < 1e-5
    assert data.y_std > 1 and data.y_mean > 1  # diabetes progression is in the tens to hundreds


def test_synthetic_options() -> None:
    options: dict[str, int | float] = {
        "n_samples": 200,
        "n_features": 8,
        "n_informative": 4,
        "n_classes": 3,
    }
    data = load_dataset("synthetic", options)
    assert data.input_shape == (8,) and data.n_outputs == 3
    assert len(data.X_train) + len(data.X_val) == 200


def test_synthetic_that_cannot_be_split_raises_value_error() -> None:
    options: dict[str, int | float] = {"n_samples": 20, "n_classes": 10, "n_informative": 5}
    with pytest.raises(ValueError):
        load_dataset("synthetic", options)


# -------------------------------------------------------------------------------------------
# Models


@pytest.mark.parametrize("model", sorted(catalog.models()))
@pytest.mark.parametrize("activation", catalog.ACTIVATIONS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_catalog_model_and_activation_builds(
    model: str, activation: str, batch_norm: bool
) -> None:
    values: dict[str, catalog.Scalar] = {
        "activation": activation,
        "batch_norm": batch_norm,
        "dropout": 0.1,
    }
    hparams = catalog.resolve_hyperparameters(model, values)
    net = build_model(model, (1, 8, 8), 10, hparams)
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_registry_activations_match_catalog() -> None:
    assert set(ACTIVATIONS) == set(catalog.ACTIVATIONS)


def test_cnn_stops_pooling_at_one_pixel() -> None:
    net = CNN(CNNConfig(input_shape=(3, 2, 2), n_outputs=1, conv_layers=3, kernel_size=5))
    pools = [m for m in net.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 1
    assert net(torch.randn(2, 3, 2, 2)).shape == (2, 1)


def test_cnn_rejects_flat_inputs() -> None:
    with pytest.raises(ValueError, match="channels, height, width"):
        build_model("cnn", (64,), 10, catalog.resolve_hyperparameters("cnn", {}))


# -------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def digits_trial() -> tuple[TrialConfig, TrialResult, Reports]:
    config = make_config(optimizer="adam", lr=1e-3, epochs=15)
    result, reports = train(config)
    return config, result, reports


def test_digits_mlp_learns(digits_trial: tuple[TrialConfig, TrialResult, Reports]) -> None:
    _, result, reports = digits_trial
    assert result.value >= 0.95
    assert [epoch for epoch, _ in reports] == list(range(1, 16))
    assert set(reports[0][1]) == reported("classification")


def test_reduce_best_keeps_best_epoch(
    digits_trial: tuple[TrialConfig, TrialResult, Reports],
) -> None:
    _, result, reports = digits_trial
    accuracies = [m["val_accuracy"] for _, m in reports]
    best = accuracies.index(max(accuracies))  # the first epoch reaching the best value
    assert result.epoch == best + 1 and result.epochs_run == 15
    assert result.value == accuracies[best]
    assert result.metrics == reports[best][1]


def test_kept_weights_reproduce_value(
    digits_trial: tuple[TrialConfig, TrialResult, Reports],
) -> None:
    config, result, _ = digits_trial
    model, data = build_for_trial(config.model, config.dataset, config.hparams)
    model.load_state_dict(bundle.load(result.model).network.state_dict())
    metrics = evaluate(model, to_device(data, CPU), data.task)
    assert metrics["val_accuracy"] == pytest.approx(result.value, abs=1e-4)
    assert metrics["val_loss"] == pytest.approx(result.metrics["val_loss"], abs=1e-4)


def raw_split(config: TrialConfig) -> Dataset:
    """The trial's train/validation split of the samples as the dataset holds them."""
    return for_spec({**config.dataset, "standardize": False})


def test_the_model_bundle_predicts_raw_samples_in_the_datasets_labels(
    digits_trial: tuple[TrialConfig, TrialResult, Reports],
) -> None:
    config, result, _ = digits_trial
    model = bundle.load(result.model)
    assert not model.training and model.info["model"] == "mlp"
    raw = raw_split(config)
    assert (model.predict(raw.X_val) == raw.y_val).mean() == pytest.approx(result.value)
    probabilities = model.predict_proba(raw.X_val)
    assert probabilities.shape == (len(raw.X_val), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="needs 64 values"):
        model(raw.X_val[:, :10])


def test_a_bare_state_dict_is_rebuilt_into_the_same_model(
    digits_trial: tuple[TrialConfig, TrialResult, Reports],
) -> None:
    # What trials stored before models were bundled: weights alone, rebuilt from the spec.
    config, result, _ = digits_trial
    bundled = bundle.load(result.model)
    state = bundled.network.state_dict()
    data = for_spec(config.dataset).preprocessing()
    rebuilt = bundle.rebuild(config.model, config.hparams, config.dataset, data, state)
    raw = raw_split(config)
    np.testing.assert_array_equal(rebuilt.predict(raw.X_val), bundled.predict(raw.X_val))
    with pytest.raises(ValueError, match="not a model bundle"):
        bundle.load(bundle_bytes(state))


def bundle_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_reduce_last_keeps_last_epoch() -> None:
    config = make_config(
        "iris", objective="val_loss", direction="minimize", reduce="last", epochs=4, batch_norm=True
    )
    result, reports = train(config)
    assert result.epoch == result.epochs_run == 4
    assert result.metrics == reports[-1][1]
    model = bundle.load(result.model)
    # Batch norm's running statistics came along, and the labels are iris's species names.
    raw = raw_split(config)
    names = np.asarray(["setosa", "versicolor", "virginica"])
    accuracy = (model.predict(raw.X_val) == names[raw.y_val]).mean()
    assert accuracy == pytest.approx(result.metrics["val_accuracy"])


def test_a_regression_bundle_predicts_in_the_targets_units() -> None:
    config = make_config(
        "diabetes", objective="val_mae", direction="minimize", epochs=3, hidden_units=16
    )
    result, _ = train(config)
    raw = raw_split(config)
    predicted = bundle.load(result.model).predict(raw.X_val)
    assert np.abs(predicted - raw.y_val).mean() == pytest.approx(result.value, rel=1e-4)


@pytest.mark.parametrize("optimizer", catalog.OPTIMIZERS)
@pytest.mark.parametrize("activation", catalog.ACTIVATIONS)
def test_every_optimizer_and_activation_trains(optimizer: str, activation: str) -> None:
    config = make_config(
        "iris",
        optimizer=optimizer,
        activation=activation,
        epochs=1,
        batch_size=32,
        weight_decay=1e-4,
        l1=1e-4,
        clip_grad_norm=1.0,
        dropout=0.1,
        batch_norm=True,
    )
    result, reports = train(config)
    assert result.epochs_run == 1 and len(reports) == 1
    assert all(math.isfinite(v) for v in result.metrics.values())


def test_cnn_on_digits_image_trains() -> None:
    result, _ = train(
        make_config("digits_image", "cnn", epochs=3, lr=3e-3, channels=8, fc_units=32)
    )
    assert result.value > 0.8


def test_binary_breast_cancer_trains() -> None:
    result, reports = train(make_config("breast_cancer", epochs=5))
    assert result.value > 0.9
    assert set(reports[0][1]) == reported("binary")


def test_regression_diabetes_trains() -> None:
    config = make_config("diabetes", objective="val_r2", epochs=20, lr=3e-3)
    result, reports = train(config)
    assert result.value > 0.3
    assert set(reports[0][1]) == reported("regression")
    assert 20 < result.metrics["val_mae"] < 100  # in the targets' units, not standardized


def test_huge_learning_rate_diverges() -> None:
    config = make_config(
        optimizer="sgd",
        lr=5.0,
        epochs=3,
        activation="leaky_relu",
        hidden_layers=3,
        hidden_units=128,
    )
    with pytest.raises(Diverged, match="non-finite loss at epoch 1"):
        train(config)


def test_pruned_from_report_propagates() -> None:
    epochs: list[int] = []

    def report(epoch: int, metrics: dict[str, float]) -> None:
        epochs.append(epoch)
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        train_trial(make_config("iris", epochs=10), device_data("iris"), CPU, report)
    assert epochs == [1, 2]


def test_early_stopping_after_patience_epochs_without_improvement() -> None:
    # A learning rate this small leaves the accuracy where it starts: no epoch improves.
    result, reports = train(make_config("iris", lr=1e-9, epochs=50, patience=3))
    assert result.epochs_run == 4 and len(reports) == 4
    assert result.epoch == 1


def test_same_seed_and_number_repeat_exactly() -> None:
    def metrics(number: int) -> list[dict[str, float]]:
        _, reports = train(make_config("wine", epochs=3, dropout=0.2, number=number))
        return [without_time(m) for _, m in reports]

    assert metrics(3) == metrics(3)
    assert metrics(3) != metrics(4)


@pytest.mark.parametrize("schedule", catalog.LR_SCHEDULES)
def test_every_lr_schedule(schedule: str) -> None:
    config = make_config(
        "iris", lr=0.1, lr_schedule=schedule, lr_step_size=1, lr_gamma=0.5, epochs=3
    )
    _, reports = train(config)
    lrs = [m["lr"] for _, m in reports]
    expected = {
        "none": [0.1, 0.1, 0.1],
        "step": [0.1, 0.05, 0.025],
        "exponential": [0.1, 0.05, 0.025],
        "cosine": [
            0.1,
            0.1 * (1 + math.cos(math.pi / 3)) / 2,
            0.1 * (1 + math.cos(2 * math.pi / 3)) / 2,
        ],
    }[schedule]
    assert lrs == pytest.approx(expected)


def test_synthetic_dataset_trains() -> None:
    options = {
        "n_samples": 300,
        "n_features": 10,
        "n_informative": 5,
        "n_classes": 3,
        "class_sep": 2.0,
        "seed": 7,
    }
    config = make_config(epochs=5)
    data = to_device(load_dataset("synthetic", options), CPU)
    result = train_trial(config, data, CPU, lambda e, m: None)
    assert result.value > 0.6


@pytest.mark.parametrize(
    ("dataset", "model", "values"),
    [
        ("iris", "mlp", {"batch_norm": True}),
        ("diabetes", "mlp", {"dropout": 0.1}),
        ("digits_image", "cnn", {"channels": 4, "fc_units": 16}),
    ],
)
def test_cost_metrics_are_reported_every_epoch(
    dataset: str, model: str, values: dict[str, Any]
) -> None:
    config = make_config(
        dataset, model, objective="n_params", direction="minimize", epochs=3, **values
    )
    result, reports = train(config)
    data = device_data(dataset)
    net = build_model(model, data.input_shape, data.n_outputs, config.hparams)
    n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert [epoch for epoch, _ in reports] == [1, 2, 3]
    assert all(m["n_params"] == n_params for _, m in reports)
    assert result.value == n_params
    assert all(0 < m["latency_ms"] < math.inf for _, m in reports)
    seconds = [m["train_seconds"] for _, m in reports]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    assert seconds[-1] == pytest.approx(sum(m["epoch_seconds"] for _, m in reports))


def test_n_params_counts_weights_and_norm_scales_but_not_running_stats() -> None:
    config = make_config("iris", epochs=1, hidden_layers=1, hidden_units=8, batch_norm=True)
    _, reports = train(config)
    # Linear(4, 8) + BatchNorm1d(8) weight and bias + Linear(8, 3)
    assert reports[0][1]["n_params"] == (4 * 8 + 8) + (8 + 8) + (8 * 3 + 3)


def test_cost_metrics_are_objectives_of_every_task() -> None:
    for task in catalog.TASK_METRICS:
        assert set(catalog.COST_METRICS) <= set(catalog.objective_metrics(task))


def test_latency_times_a_bounded_slice_in_eval_mode() -> None:
    calls: list[int] = []
    net = build_model("mlp", (4,), 3, catalog.resolve_hyperparameters("mlp", {"dropout": 0.5}))
    net.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    latency = measure_latency(net, torch.randn(5000, 4), samples=1000, batch_size=300)
    assert calls == [300, 300, 300, 100]
    assert not net.training
    assert 0 < latency < math.inf


def test_unreported_objective_is_rejected() -> None:
    with pytest.raises(ValueError, match="val_r2"):
        train(make_config("iris", objective="val_r2"))


def test_single_sample_remainder_batch_with_batch_norm() -> None:
    # iris trains on 120 samples: batches of 119 would leave one sample, which batch norm
    # cannot normalize alone.
    result, _ = train(make_config("iris", batch_size=119, batch_norm=True, epochs=1))
    assert result.epochs_run == 1


class KeepCheckpoints:
    """Keeps every checkpoint; optionally ends the trial right after saving one epoch's."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.saved: dict[int, Snapshot] = {}
        self.stop_after = stop_after

    def due(self, epoch: int) -> bool:
        return True

    def save(self, epoch: int, snapshot: Snapshot) -> None:
        self.saved[epoch] = snapshot
        if epoch == self.stop_after:
            raise Stopped("preempted")


@pytest.mark.parametrize("schedule", ["none", "cosine"])
def test_a_resumed_trial_goes_on_exactly_as_if_never_interrupted(schedule: str) -> None:
    digits = device_data("digits")
    config = make_config(epochs=6, lr_schedule=schedule, dropout=0.2, optimizer="adam", number=3)
    straight: list[dict[str, float]] = []
    whole = train_trial(config, digits, CPU, lambda e, m: straight.append(m))

    interrupted = KeepCheckpoints(stop_after=3)
    first_part: list[dict[str, float]] = []
    with pytest.raises(Stopped):
        train_trial(config, digits, CPU, lambda e, m: first_part.append(m), checkpoints=interrupted)
    rest: list[tuple[int, dict[str, float]]] = []
    checkpoint = interrupted.saved[3].to_bytes()
    resumed = train_trial(config, digits, CPU, lambda e, m: rest.append((e, m)), resume=checkpoint)

    assert [e for e, _ in rest] == [4, 5, 6]
    resumed_metrics = first_part + [m for _, m in rest]
    assert [without_time(m) for m in resumed_metrics] == [without_time(m) for m in straight]
    # Training time goes on from the checkpoint's epoch rather than from zero.
    at_checkpoint = first_part[2]["train_seconds"]
    assert rest[0][1]["train_seconds"] == at_checkpoint + rest[0][1]["epoch_seconds"]
    assert (resumed.value, resumed.epoch, resumed.model) == (
        whole.value,
        whole.epoch,
        whole.model,
    )


def test_a_checkpoint_serialized_after_training_went_on_still_resumes_exactly() -> None:
    # The outbox serializes a snapshot later, on its own thread: what it holds must not have
    # moved with the model and optimizer since.
    digits = device_data("digits")
    config = make_config(epochs=5, lr_schedule="cosine", optimizer="adam", number=4)
    straight: list[dict[str, float]] = []
    kept = KeepCheckpoints()
    whole = train_trial(config, digits, CPU, lambda e, m: straight.append(m), checkpoints=kept)

    rest: list[dict[str, float]] = []
    resumed = train_trial(
        config, digits, CPU, lambda e, m: rest.append(m), resume=kept.saved[2].to_bytes()
    )

    assert [without_time(m) for m in rest] == [without_time(m) for m in straight[2:]]
    assert resumed.model == whole.model


def test_after_the_warm_up_a_trials_optimizer_imports_nothing() -> None:
    """The first optimizer a process builds imports torch's compiler stack (over a second);
    a worker builds one while it registers, so its first trial's does not wait for that."""
    script = """
import sys
import torch
from sweep.worker.train import make_optimizer, warm_up

before = set(sys.modules)
warm_up()
assert set(sys.modules) - before, "the warm-up imported nothing: it has nothing to do"
before = set(sys.modules)
hp = {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.0}
make_optimizer(torch.nn.Linear(4, 2), hp)
assert set(sys.modules) == before, set(sys.modules) - before
"""
    subprocess.run([sys.executable, "-c", script], check=True)
