"""W&B sweep configurations become Sweep specs the server accepts, naming what does not
convert."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from sweep.client import SweepClient
from sweep.wandb_config import convert

# A configuration as W&B's documentation writes them.
CONFIG: dict[str, Any] = {
    "program": "train.py",
    "method": "bayes",
    "metric": {"name": "val_loss", "goal": "minimize"},
    "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        "batch_size": {"values": [16, 32, 64]},
        "optimizer": {"values": ["adam", "sgd"], "probabilities": [0.7, 0.3]},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "layers": {"distribution": "int_uniform", "min": 1, "max": 4},
        "width": {"distribution": "q_uniform", "min": 32, "max": 256, "q": 32},
        "weight_decay": {"distribution": "log_uniform", "min": -9.2, "max": -2.3},
        "momentum": {"min": 0.8, "max": 0.99},
        "noise": {"distribution": "normal", "mu": 0.0, "sigma": 1.0},
        "epochs": {"value": 10},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3, "s": 2},
    "run_cap": 40,
    "command": ["${env}", "${interpreter}", "${program}", "${args}"],
}


def test_a_wandb_config_converts_and_names_what_it_leaves_out() -> None:
    converted = convert(CONFIG)
    spec = converted.spec
    assert (spec["program"], spec["sampler"], spec["budget"]) == (
        "train",
        {"name": "tpe"},
        {"n_trials": 40},
    )
    assert spec["objective"] == {"metric": "val_loss", "direction": "minimize"}
    space = spec["search_space"]
    assert space["learning_rate"] == {"type": "float", "low": 1e-4, "high": 0.1, "log": True}
    assert space["batch_size"] == {"type": "categorical", "choices": [16, 32, 64]}
    assert space["layers"] == {"type": "int", "low": 1, "high": 4}
    assert space["width"] == {"type": "int", "low": 32, "high": 256, "step": 32}
    assert space["weight_decay"]["low"] == pytest.approx(math.exp(-9.2))
    assert space["momentum"] == {"type": "float", "low": 0.8, "high": 0.99}
    assert "noise" not in space and spec["fixed"] == {"epochs": 10}
    assert spec["pruner"] == {
        "name": "hyperband",
        "options": {"min_resource": 3, "reduction_factor": 3},
    }
    notes = "\n".join(converted.notes)
    for left_out in ("TPE", "probabilities", "normal distribution", "s not converted"):
        assert left_out in notes, left_out
    assert "sweep worker --program train='python train.py {args}'" in notes


def test_a_converted_spec_is_one_the_server_runs(client: TestClient) -> None:
    experiment, notes = SweepClient(http=client).submit_wandb(CONFIG)
    assert experiment["state"] == "running" and experiment["spec"]["program"] == "train"
    assert experiment["spec"]["pruner"]["name"] == "hyperband" and notes
    grid = {
        **CONFIG,
        "method": "grid",
        "parameters": {"a": {"values": [1, 2, 3]}, "b": {"values": ["x", "y"]}},
    }
    experiment, _ = SweepClient(http=client).submit_wandb(grid)
    assert (experiment["spec"]["sampler"]["name"], experiment["n_trials"]) == ("grid", 6)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"metric": None}, "metric"),
        ({"method": "hillclimb"}, "method"),
        ({"parameters": {"lr": {"distribution": "uniform", "min": 0.1}}}, "parameters.lr"),
        ({"method": "grid", "parameters": {"lr": {"min": 0.1, "max": 1.0}}}, "a grid needs"),
    ],
)
def test_what_cannot_convert_is_refused_by_name(change: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        convert({**CONFIG, **change})


def test_the_command_writes_the_spec(tmp_path: Path) -> None:
    source = tmp_path / "sweep.yaml"
    source.write_text(yaml.safe_dump(CONFIG))
    command = [sys.executable, "-m", "sweep.cli", "import-wandb", str(source)]
    done = subprocess.run(
        [*command, "--program", "fit", "--write", str(tmp_path / "spec.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note:" in done.stdout and "Warning" not in done.stderr
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["program"] == "fit"
