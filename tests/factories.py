"""Plain factory functions for test data."""

from __future__ import annotations

import copy
from typing import Any

DIGITS_SPEC: dict[str, Any] = {
    "name": "digits-mlp",
    "model": "mlp",
    "dataset": "digits",
    "objective": {"metric": "val_accuracy", "direction": "maximize"},
    "search_space": {
        "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
        "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
        "optimizer": {
            "type": "categorical",
            "choices": ["sgd", "momentum", "adam", "adamw", "rmsprop"],
        },
        "activation": {
            "type": "categorical",
            "choices": ["relu", "sigmoid", "tanh", "gelu", "leaky_relu"],
        },
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "hidden_units": {"type": "int", "low": 32, "high": 256, "log": True},
    },
    "fixed": {"epochs": 20},
    "sampler": {"name": "tpe", "seed": 1},
    "pruner": {"name": "median"},
    "budget": {"n_trials": 30, "max_concurrent": 4},
}


def make_spec(**overrides: Any) -> dict[str, Any]:
    """The issue's digits example, with top-level keys replaced by `overrides`."""
    spec = copy.deepcopy(DIGITS_SPEC)
    spec.update(copy.deepcopy(overrides))
    return spec


def budget(n_trials: int, max_concurrent: int = 4) -> dict[str, int]:
    return {"n_trials": n_trials, "max_concurrent": max_concurrent}


# The attempt token of each claimed trial, sent with every call about it (X-Attempt-Token).
TOKENS: dict[int, str] = {}


def remember(assignment: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep a claim's attempt token for later calls about its trial."""
    if assignment is not None:
        TOKENS[assignment["trial_id"]] = assignment["token"]
    return assignment


def attempt_headers(trial_id: int) -> dict[str, str]:
    return {"X-Attempt-Token": TOKENS.get(trial_id, "none")}


def authorize(client: Any, role: str = "admin", project: str | None = None) -> Any:
    """Give an in-process test client a real token of `role`, made in its app's database."""
    from sweep.service import auth
    from sweep.service.schemas import TokenCreate

    with client.app.state.db.transaction() as session:
        secret, _ = auth.create(session, body=TokenCreate(role=role, project=project))
    client.headers["Authorization"] = f"Bearer {secret}"
    return client
