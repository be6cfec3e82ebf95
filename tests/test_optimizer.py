"""The sampler sees the whole history, and a restart changes nothing about what it suggests."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sweep.service.app import create_app
from sweep.service.config import Settings
from tests.helpers import attempt_headers, authorize, budget, make_spec, remember

API = "/api/v1"
SPEC = make_spec(
    search_space={
        "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
        "hidden_units": {"type": "int", "low": 32, "high": 256},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    },
    sampler={"name": "tpe", "seed": 7, "options": {"n_startup_trials": 4}},
    pruner={"name": "median", "options": {"n_startup_trials": 2}},
    budget=budget(14, 1),
)


def objective(params: dict[str, Any]) -> float:
    """A deterministic stand-in for training, so two runs can be compared exactly."""
    return 1 - abs(math.log10(params["lr"]) + 2) / 4 - params["hidden_units"] / 2000


@contextmanager
def app_on(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield authorize(client)


def run(client: TestClient, worker: int, n: int) -> list[dict[str, Any]]:
    """Claim and finish n trials; every fifth fails, every fourth is pruned after two epochs."""
    suggested = []
    for _ in range(n):
        trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())
        assert trial is not None
        suggested.append(trial["params"])
        tid, value = trial["trial_id"], objective(trial["params"])
        if trial["number"] % 5 == 4:
            client.post(
                f"{API}/trials/{tid}/fail",
                headers=attempt_headers(tid),
                json={"reason": "error", "message": "x"},
            )
            continue
        for epoch in (1, 2):
            answer = client.post(
                f"{API}/trials/{tid}/reports",
                headers=attempt_headers(tid),
                json={"epoch": epoch, "metrics": {"val_accuracy": value * epoch / 2}},
            ).json()
            if answer["action"] != "continue":
                break
        else:
            client.post(
                f"{API}/trials/{tid}/complete", headers=attempt_headers(tid), json={"value": value}
            )
    return suggested


NUMBERS_ONLY = {k: v for k, v in SPEC["search_space"].items() if k != "optimizer"}
# Samplers that keep state on their trials (CMA-ES, NSGA-II generations) as well as TPE.
SAMPLERS = {
    "tpe": SPEC,
    "cmaes": make_spec(
        **{
            **SPEC,
            "search_space": NUMBERS_ONLY,
            "sampler": {"name": "cmaes", "seed": 7, "options": {"popsize": 4}},
        }
    ),
    "nsga2": make_spec(
        **{**SPEC, "sampler": {"name": "nsga2", "seed": 7, "options": {"population_size": 4}}}
    ),
    "qmc": make_spec(
        **{**SPEC, "search_space": NUMBERS_ONLY, "sampler": {"name": "qmc", "seed": 7}}
    ),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_suggestions_survive_a_restart(settings: Settings, sampler: str) -> None:
    spec = SAMPLERS[sampler]
    # One uninterrupted run...
    with app_on(settings) as client:
        worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
        assert client.post(f"{API}/experiments", json=spec).status_code == 201
        straight = run(client, worker, 14)
        # ...and the same experiment again, where the server restarts half way: the new app
        # rebuilds its study from SQL.
        eid = client.post(f"{API}/experiments", json=spec).json()["id"]
        first_half = run(client, worker, 7)
    with app_on(settings) as client:
        second_half = run(client, worker, 7)
        status = client.get(f"{API}/experiments/{eid}").json()
    assert first_half + second_half == straight
    assert status["state"] == "completed"
    assert status["counts"]["failed"] == 2
    assert status["counts"]["pruned"] >= 1  # pruned trials are part of the history too
    # A genetic algorithm passes values on from parents; the others suggest anew each time.
    assert len({p["lr"] for p in straight}) >= (10 if sampler == "nsga2" else 14)


def test_studies_dropped_from_a_full_cache_rebuild_to_the_same_suggestions(
    settings: Settings,
) -> None:
    def interleaved(client: TestClient) -> list[list[dict[str, Any]]]:
        worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
        ids = [client.post(f"{API}/experiments", json=SPEC).json()["id"] for _ in range(3)]
        suggested: list[list[dict[str, Any]]] = [[] for _ in ids]
        for experiment_id in ids:
            client.post(f"{API}/experiments/{experiment_id}/pause")
        for _ in range(4):  # a trial of each experiment in turn
            for i, experiment_id in enumerate(ids):
                client.post(f"{API}/experiments/{experiment_id}/resume")
                suggested[i] += run(client, worker, 1)
                client.post(f"{API}/experiments/{experiment_id}/pause")
        return suggested

    with app_on(settings) as client:
        unbounded = interleaved(client)
    bounded = settings.model_copy(update={"max_cached_studies": 1})
    with app_on(bounded) as client:
        assert interleaved(client) == unbounded
        assert client.app.state.optimizer.cached() == 1  # type: ignore[attr-defined]
