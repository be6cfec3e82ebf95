"""The sampler sees the whole history, and a restart changes nothing about what it suggests;
suggestions asked ahead see the history as the previous claim left it."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from sweep.service import attempts, rows
from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.service.search.optimizer import SETTLE_SECONDS, directions, reseed, suggest_all
from sweep.service.search.samplers import make_sampler
from sweep.service.search.space import distributions
from tests.helpers import attempt_headers, authorize, budget, make_spec, register, remember

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


# --- asking ahead --------------------------------------------------------------------------

AHEAD_SPEC = make_spec(
    **{
        **SPEC,
        "sampler": {"name": "tpe", "seed": 7, "options": {"n_startup_trials": 2}},
        "pruner": {"name": "none"},
        "budget": budget(8, 1),
    }
)


def claim_and_complete(client: TestClient, worker: int) -> dict[str, Any]:
    """Claim a trial and complete it at once with its objective; the claim's answer."""
    trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())
    assert trial is not None
    tid = trial["trial_id"]
    done = client.post(
        f"{API}/trials/{tid}/complete",
        headers=attempt_headers(tid),
        json={"value": objective(trial["params"])},
    )
    assert done.status_code == 200, done.text
    return trial


def lagging_by_one_claim(spec: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """What plain Optuna suggests for trials 0..n-1 of one worker when trial k is asked as
    trial k - 1 starts: with every trial before k - 1 finished and k - 1 running."""
    study = optuna.create_study(sampler=make_sampler(spec), directions=directions(spec))
    dists = distributions(spec["search_space"])
    seed = spec["sampler"]["seed"]

    def ask(number: int) -> tuple[optuna.Trial, dict[str, Any]]:
        reseed(study.sampler, seed + number)
        trial = study.ask()
        return trial, suggest_all(trial, dists, spec)

    running, params = ask(0)
    suggested = [params]
    for number in range(1, n):
        following, params = ask(number)  # asked while the one before still runs
        study.tell(running, objective(suggested[-1]))
        suggested.append(params)
        running = following
    return suggested


def test_suggestions_asked_ahead_see_the_history_as_the_previous_claim_left_it(
    settings: Settings,
) -> None:
    # Every claim is followed at once by its trial's completion, racing the ask made ahead
    # for the next claim: the suggestions must not depend on which comes first.
    with app_on(settings.model_copy(update={"ask_ahead_after": 0})) as client:
        worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
        eid = client.post(f"{API}/experiments", json=AHEAD_SPEC).json()["id"]
        suggested = [claim_and_complete(client, worker)["params"] for _ in range(8)]
        experiment = client.get(f"{API}/experiments/{eid}").json()
    assert experiment["state"] == "completed"
    assert suggested == lagging_by_one_claim(experiment["spec"], 8)  # the spec as stored
    # Not asking ahead, each claim sees its predecessor's result: TPE then suggests otherwise.
    with app_on(settings) as client:
        worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
        client.post(f"{API}/experiments", json=AHEAD_SPEC)
        assert [claim_and_complete(client, worker)["params"] for _ in range(8)] != suggested


def test_a_suggestion_asked_ahead_whose_number_another_process_took_is_not_handed_out(
    settings: Settings,
) -> None:
    # Two API processes on one database take turns on an experiment. Each asks the next
    # suggestion ahead after its claims; the other one's claim takes that number first.
    ahead = settings.model_copy(update={"ask_ahead_after": 0})
    with app_on(ahead) as first, app_on(ahead) as second:
        worker = first.post(f"{API}/workers", json={"name": "w"}).json()["id"]
        eid = first.post(f"{API}/experiments", json=AHEAD_SPEC).json()["id"]
        trials = [claim_and_complete(app, worker) for app in (first, second) * 4]
        status = first.get(f"{API}/experiments/{eid}").json()
    assert [t["number"] for t in trials] == list(range(8))
    assert status["state"] == "completed"
    assert status["counts"]["completed"] == 8
    # No trial carries params asked for another number: in TPE's random start-up, where a
    # suggestion depends on seed + number alone, those would repeat a neighbour's.
    assert len({t["params"]["lr"] for t in trials}) == 8


def test_the_history_holds_running_trials_epochs_the_pruner_did_not_look_at(
    settings: Settings,
) -> None:
    # The default pruner waits for 5 finished trials: these reports never reach the study.
    with app_on(settings) as client:
        worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
        eid = client.post(f"{API}/experiments", json=SPEC | {"pruner": None}).json()["id"]
        trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())
        assert trial is not None
        for epoch in (1, 2):
            client.post(
                f"{API}/trials/{trial['trial_id']}/reports",
                headers=attempt_headers(trial["trial_id"]),
                json={"epoch": epoch, "metrics": {"val_accuracy": 0.25 * epoch}},
            )
        app = client.app
        with app.state.db.transaction() as session:  # type: ignore[attr-defined]
            experiment = rows.experiment(session, eid)
            [seen] = app.state.optimizer.history(session, experiment)  # type: ignore[attr-defined]
    assert seen.intermediate_values == {1: 0.25, 2: 0.5}


# --- one claim after another ---------------------------------------------------------------


def test_a_claim_waits_for_the_last_claims_commit_to_reach_the_study_instead_of_rebuilding(
    settings: Settings,
) -> None:
    """The database releases the experiment's row lock at commit, a moment before the
    committing thread marks the study settled; the next claim waits for that rather than
    rebuild the study from SQL, and rebuilds only when it does not come in time."""
    with app_on(settings) as client:
        state = client.app.state  # type: ignore[attr-defined]
        db, optimizer = state.db, state.optimizer
        client.post(f"{API}/experiments", json=make_spec(budget=budget(5, 5))).raise_for_status()
        workers = iter([register(client, f"w{i}") for i in range(5)])

        def claim(session: Session) -> int:
            assignment = attempts.claim(
                session, optimizer=optimizer, worker_id=next(workers), lease_seconds=60
            )
            assert assignment is not None
            return assignment.number

        def committed_unsettled() -> Session:
            """A claim committed in the database whose end this process has not seen yet."""
            session = db.writer()
            with session.begin():
                claim(session)
            session.close()
            return session

        def settle(session: Session) -> None:
            for callback in session.info.get("after_commit", []):
                callback()

        with db.transaction() as session:
            assert claim(session) == 0
        builds = optimizer.builds

        # The last claim's end reaches the study while the next claim waits: it is kept.
        late = threading.Timer(0.2, settle, args=(committed_unsettled(),))  # a slow thread
        late.start()
        with db.transaction() as session:
            assert claim(session) == 2
        late.join()
        assert optimizer.builds == builds

        # An end that does not come in time: the study is rebuilt from SQL.
        unsettled = committed_unsettled()
        started = time.monotonic()
        with db.transaction() as session:
            assert claim(session) == 4
        assert time.monotonic() - started >= SETTLE_SECONDS
        assert optimizer.builds == builds + 1
        settle(unsettled)
