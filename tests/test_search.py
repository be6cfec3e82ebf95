"""The search toolbox through the HTTP API: every sampler and pruner, conditions, no repeats."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from sweep.service.config import Settings
from sweep.service.tables import Trial
from tests.helpers import (
    attempt_headers,
    budget,
    finish_quickly,
    remember,
    run_worker,
    small,
    submit,
    trials_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models train faster on one

API = "/api/v1"
NUMBERS = {
    "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "hidden_units": {"type": "int", "low": 16, "high": 64, "step": 16},
}
MIXED = {**NUMBERS, "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}}
FINITE = {
    "lr": {"type": "categorical", "choices": [0.003, 0.03]},
    "hidden_units": {"type": "int", "low": 16, "high": 32, "step": 16},
}
# Each sampler with options that make it do its own work within a few trials.
SAMPLERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tpe": ({"n_startup_trials": 2, "multivariate": True}, MIXED),
    "random": ({}, MIXED),
    "cmaes": ({"n_startup_trials": 1, "popsize": 4}, NUMBERS),
    "gp": ({"n_startup_trials": 2}, MIXED),
    "qmc": ({"qmc_type": "halton", "scramble": True}, NUMBERS),
    "grid": ({}, FINITE),
    "nsga2": ({"population_size": 2}, MIXED),
}
# What each sampler notes on its trials, proof that it (not a fallback) chose them.
SAMPLER_MARKS = {"cmaes": "cma:", "grid": "grid_id", "nsga2": "NSGAIISampler:generation"}


def system_attrs(settings: Settings, experiment_id: int) -> list[dict[str, Any]]:
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Trial.system_attrs)
            .where(Trial.experiment_id == experiment_id)
            .order_by(Trial.number)
        )
        attrs = [dict(row[0]) for row in rows]
    engine.dispose()
    return attrs


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_runs_a_real_sweep(client: TestClient, settings: Settings, name: str) -> None:
    options, space = SAMPLERS[name]
    spec = small(space, sampler={"name": name, "seed": 3, "options": options}, budget=budget(5, 1))
    experiment_id = submit(client, spec)

    ran = run_worker(client)

    trials = trials_of(client, experiment_id)
    status = client.get(f"{API}/experiments/{experiment_id}").json()
    assert status["state"] == "completed"
    if name == "grid":  # four grid points: each once, then the space is exhausted
        assert ran == 4 and status["n_trials"] == 4
        assert "exhausted" in status["stop_reason"]
    else:
        assert ran == 5
    assert all(t["state"] == "completed" and t["value"] is not None for t in trials)
    if name == "grid":
        configs = {tuple(sorted(t["params"].items())) for t in trials}
        assert len(configs) == 4  # every grid point once
    for t in trials:
        assert set(t["params"]) == set(space)
        assert 16 <= t["params"]["hidden_units"] <= 64 and 1e-3 <= t["params"]["lr"] <= 0.1
    if name in SAMPLER_MARKS:
        marked = [
            a
            for a in system_attrs(settings, experiment_id)
            if any(key.startswith(SAMPLER_MARKS[name]) for key in a)
        ]
        assert marked, f"{name} left no trace on its trials"


def test_validation_says_which_sampler_takes_which_space(client: TestClient) -> None:
    cases = [
        ({"name": "cmaes"}, MIXED, "search_space.optimizer", "numbers only"),
        ({"name": "qmc"}, MIXED, "search_space.optimizer", "numbers only"),
        ({"name": "grid"}, NUMBERS, "search_space.lr", "finitely many"),
        ({"name": "tpe", "options": {"n_startup_trials": -1}}, NUMBERS, None, ">= 0"),
        ({"name": "qmc", "options": {"qmc_type": "lattice"}}, NUMBERS, None, "one of"),
        ({"name": "simulated_annealing"}, NUMBERS, "sampler.name", "known"),
    ]
    for sampler, space, field, words in cases:
        response = client.post(f"{API}/experiments", json=small(space, sampler=sampler))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert words in error["message"]
        if field is not None:
            assert error["field"] == field
        else:
            assert error["field"].startswith("sampler.options.")
    assert client.get(f"{API}/experiments").json()["total"] == 0


# --- pruners -------------------------------------------------------------------------------

PRUNERS: dict[str, dict[str, Any]] = {
    "median": {"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 1}},
    "percentile": {"name": "percentile", "options": {"percentile": 25.0, "n_startup_trials": 2}},
    "successive_halving": {
        "name": "successive_halving",
        "options": {"min_resource": 1, "reduction_factor": 2},
    },
    "hyperband": {
        "name": "hyperband",
        "options": {"min_resource": 1, "max_resource": 6, "reduction_factor": 2},
    },
    "threshold": {"name": "threshold", "options": {"lower": 0.45, "n_warmup_steps": 1}},
    "patient": {
        "name": "patient",
        "options": {"patience": 1},
        "wrapped": {"name": "median", "options": {"n_startup_trials": 2}},
    },
    "wilcoxon": {"name": "wilcoxon", "options": {"p_threshold": 0.2, "n_startup_steps": 2}},
    "none": {"name": "none"},
}
# Curves of eight trials over six epochs: some climb, some stall, some fall back.
BASES = [0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]


def curve(number: int) -> list[float]:
    base = BASES[number]
    slope = 0.02 if number % 3 else -0.01
    return [round(base + slope * epoch + 0.005 * math.sin(number + epoch), 6) for epoch in range(6)]


def optuna_decisions(pruner: optuna.pruners.BasePruner) -> list[int | None]:
    """The epoch each trial is pruned at when Optuna runs the same curves by itself."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name="experiment-1")
    decisions: list[int | None] = []
    for number in range(len(BASES)):
        trial = study.ask()
        for epoch, value in enumerate(curve(number), start=1):
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                decisions.append(epoch)
                break
        else:
            study.tell(trial, curve(number)[-1])
            decisions.append(None)
    return decisions


def service_decisions(client: TestClient, pruner: dict[str, Any]) -> list[int | None]:
    spec = small({}, pruner=pruner, budget=budget(len(BASES), 1))
    assert submit(client, spec) == 1  # the study name Hyperband's brackets hang on
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    decisions: list[int | None] = []
    for number in range(len(BASES)):
        trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())
        assert trial is not None and trial["number"] == number
        tid = trial["trial_id"]
        for epoch, value in enumerate(curve(number), start=1):
            answer = client.post(
                f"{API}/trials/{tid}/reports",
                headers=attempt_headers(tid),
                json={"epoch": epoch, "metrics": {"val_accuracy": value}},
            ).json()
            if answer["action"] == "prune":
                decisions.append(epoch)
                break
        else:
            done = client.post(
                f"{API}/trials/{tid}/complete",
                headers=attempt_headers(tid),
                json={"value": curve(number)[-1]},
            )
            assert done.status_code == 200, done.text
            decisions.append(None)
    return decisions


def optuna_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    from sweep.service.search import make_pruner

    return make_pruner({"options": {}, **spec})


@pytest.mark.parametrize("name", list(PRUNERS))
def test_each_pruner_decides_as_optuna_does(client: TestClient, name: str) -> None:
    expected = optuna_decisions(optuna_pruner(PRUNERS[name]))
    if name != "none":
        assert any(epoch is not None for epoch in expected), "the curves must prune some"
    assert service_decisions(client, PRUNERS[name]) == expected
    trials = trials_of(client, 1)
    for trial, epoch in zip(trials, expected, strict=True):
        if epoch is not None:  # a pruned trial keeps its last value, as in Optuna
            assert (
                trial["state"] == "pruned" and trial["value"] == curve(trial["number"])[epoch - 1]
            )


@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 2}},
        {"name": "percentile", "options": {"percentile": 25.0}},  # Optuna's defaults
        {"name": "none", "options": {}},
    ],
)
def test_reports_skip_the_study_only_where_the_pruner_cannot_prune(pruner: dict[str, Any]) -> None:
    from sweep.service.search.pruners import cannot_prune_yet

    for finished in range(4):
        # `finished` completed trials that did well, then a trial doing badly at every epoch.
        study = optuna.create_study(direction="maximize", pruner=optuna_pruner(pruner))
        for _ in range(finished):
            good = study.ask()
            for epoch in range(1, 5):
                good.report(0.9, epoch)
            study.tell(good, 0.9)
        bad = study.ask()
        for epoch in range(1, 5):
            bad.report(0.1, epoch)
            skipped = cannot_prune_yet(pruner, epoch, finished)
            assert skipped != bad.should_prune() or pruner["name"] == "none", (finished, epoch)
            assert skipped or pruner["name"] != "none"


@pytest.mark.parametrize("name", list(PRUNERS))
def test_each_pruner_runs_a_real_sweep(client: TestClient, name: str) -> None:
    space = {
        "lr": {"type": "categorical", "choices": [1e-5, 0.01]},  # one hopeless, one good
        "hidden_units": {"type": "int", "low": 16, "high": 64, "step": 16},
    }
    pruner = PRUNERS[name]
    spec = small(
        space,
        sampler={"name": "random", "seed": 5},
        pruner=pruner,
        budget=budget(6, 1),
        fixed={"epochs": 4, "hidden_layers": 1, "optimizer": "adam"},
    )
    experiment_id = submit(client, spec)
    assert run_worker(client) == 6
    status = client.get(f"{API}/experiments/{experiment_id}").json()
    assert status["state"] == "completed"
    assert status["counts"]["completed"] + status["counts"]["pruned"] == 6
    assert status["best_value"] is not None and status["best_value"] > 0.5


def test_pruner_options_are_checked(client: TestClient) -> None:
    cases = [
        ({"name": "percentile"}, "pruner.options.percentile", "needs"),
        ({"name": "threshold"}, "pruner.options", "lower"),
        ({"name": "hyperband", "options": {"reduction_factor": 1}}, None, ">= 2"),
        ({"name": "median", "wrapped": {"name": "median"}}, "pruner.wrapped", "patient"),
        (
            {"name": "patient", "options": {"patience": 1}, "wrapped": {"name": "nope"}},
            "pruner.wrapped.name",
            "known",
        ),
        ({"name": "successive_halving", "options": {"min_resource": "soon"}}, None, "number"),
    ]
    for pruner, field, words in cases:
        response = client.post(f"{API}/experiments", json=small(NUMBERS, pruner=pruner))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert words in error["message"], error
        assert error["field"] == (field or error["field"])
        assert error["field"].startswith("pruner")
    assert client.get(f"{API}/experiments").json()["total"] == 0


# --- conditional parameters ----------------------------------------------------------------

CONDITIONAL = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
    "momentum": {
        "type": "float",
        "low": 0.5,
        "high": 0.99,
        "when": {"param": "optimizer", "in": ["momentum"]},
    },
    "hidden_layers": {"type": "int", "low": 1, "high": 3},
    "dropout": {
        "type": "float",
        "low": 0.0,
        "high": 0.5,
        "when": {"param": "hidden_layers", "gte": 2},
    },
}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_conditional_params_exist_only_when_their_condition_holds(
    client: TestClient, sampler: str
) -> None:
    options = (
        {"multivariate": True, "group": True, "n_startup_trials": 4} if sampler == "tpe" else {}
    )
    spec = small(
        CONDITIONAL,
        sampler={"name": sampler, "seed": 2, "options": options},
        budget=budget(16, 1),
        fixed={"epochs": 1},
    )
    submit(client, spec)
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    seen = []
    for i in range(16):
        trial = finish_quickly(client, worker, value=i / 20)
        assert trial is not None
        params = trial["params"]
        assert ("momentum" in params) == (params["optimizer"] == "momentum"), params
        assert ("dropout" in params) == (params["hidden_layers"] >= 2), params
        # The worker still trains with every hyperparameter: inactive ones take defaults.
        assert {"momentum", "dropout"} <= set(trial["config"])
        seen.append(params)
    assert any("momentum" in p for p in seen) and any("momentum" not in p for p in seen)
    assert any("dropout" in p for p in seen) and any("dropout" not in p for p in seen)


def test_bad_conditions_are_refused_naming_the_field(client: TestClient) -> None:
    later = {
        "momentum": {
            "type": "float",
            "low": 0.5,
            "high": 0.9,
            "when": {"param": "optimizer", "in": ["momentum"]},
        },
        "optimizer": {"type": "categorical", "choices": ["sgd", "momentum"]},
    }
    not_a_choice = {
        **CONDITIONAL,
        "momentum": {**CONDITIONAL["momentum"], "when": {"param": "optimizer", "in": ["adamw"]}},
    }
    compared_text = {
        **CONDITIONAL,
        "momentum": {**CONDITIONAL["momentum"], "when": {"param": "optimizer", "gte": 2}},
    }
    empty = {
        **CONDITIONAL,
        "dropout": {**CONDITIONAL["dropout"], "when": {"param": "hidden_layers"}},
    }
    cases = [
        (later, {}, "search_space.momentum.when.param"),
        (not_a_choice, {}, "search_space.momentum.when.in[0]"),
        (compared_text, {}, "search_space.momentum.when.gte"),
        (empty, {}, "search_space.dropout.when"),
        (CONDITIONAL, {"sampler": {"name": "gp"}}, "search_space.momentum.when"),
    ]
    for space, overrides, field in cases:
        spec = small(space, **{"fixed": {"epochs": 1}, **overrides})
        response = client.post(f"{API}/experiments", json=spec)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field, response.json()
    assert client.get(f"{API}/experiments").json()["total"] == 0


# --- no repeats ----------------------------------------------------------------------------

CATEGORICAL = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "activation": {"type": "categorical", "choices": ["relu", "tanh", "gelu"]},
}


def run_to_the_end(client: TestClient, spec: dict[str, Any]) -> tuple[int, list[Any]]:
    """Submit and finish every trial the experiment hands out; its id and their configs."""
    experiment_id = submit(client, spec)
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    configs = []
    while (trial := finish_quickly(client, worker)) is not None:
        configs.append(tuple(sorted(trial["params"].items())))
    return experiment_id, configs


def test_a_finite_space_runs_each_configuration_once_then_completes(client: TestClient) -> None:
    spec = small(
        CATEGORICAL,
        sampler={"name": "tpe", "seed": 1, "options": {"n_startup_trials": 2}},
        budget=budget(10, 1),
    )
    # The same value for every trial: TPE alone would keep suggesting what it has seen.
    experiment_id, configs = run_to_the_end(client, spec)
    assert len(configs) == 6 and len(set(configs)) == 6
    status = client.get(f"{API}/experiments/{experiment_id}").json()
    assert status["state"] == "completed" and status["n_trials"] == 6
    assert status["stop_reason"] == "search space exhausted after 6 trials"


def test_repeats_run_the_whole_budget_when_the_spec_allows_them(client: TestClient) -> None:
    spec = small(
        CATEGORICAL,
        sampler={"name": "random", "seed": 1, "allow_repeats": True},
        budget=budget(10, 1),
    )
    experiment_id, configs = run_to_the_end(client, spec)
    assert len(configs) == 10 and len(set(configs)) < 10
    status = client.get(f"{API}/experiments/{experiment_id}").json()
    assert status["state"] == "completed" and status["stop_reason"] is None


# --- enqueued trials, budget changes, importance -------------------------------------------


def test_enqueued_configs_run_first_and_count_toward_n_trials(client: TestClient) -> None:
    spec = small(MIXED, sampler={"name": "tpe", "seed": 4}, budget=budget(4, 1))
    experiment_id = submit(client, spec)
    url = f"{API}/experiments/{experiment_id}/trials"
    full = {"lr": 0.01, "hidden_units": 32, "optimizer": "adam"}
    queued = [client.post(url, json={"params": p}) for p in (full, {"optimizer": "sgd"})]
    assert [r.status_code for r in queued] == [201, 201], queued[-1].text
    assert [(t["state"], t["number"]) for t in trials_of(client, experiment_id)] == [
        ("queued", None),
        ("queued", None),
    ]
    budget_url = f"{API}/experiments/{experiment_id}"
    assert client.patch(budget_url, json={"budget": {"n_trials": 3}}).status_code == 200
    assert client.post(url, json={"params": full}).status_code == 201  # the third of three
    taken = client.post(url, json={"params": full})
    assert taken.status_code == 409 and "budget" in taken.json()["error"]["message"]
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    started = [finish_quickly(client, worker) for _ in range(4)]
    assert [t["number"] if t else None for t in started] == [0, 1, 2, None]
    first, second, third = started[:3]
    assert first is not None and second is not None and third is not None
    assert first["params"] == full and third["params"] == full  # repeats: a continuous space
    assert second["params"]["optimizer"] == "sgd"
    assert set(second["params"]) == set(MIXED)  # the sampler filled in the rest
    status = client.get(f"{API}/experiments/{experiment_id}").json()
    assert status["state"] == "completed" and status["counts"]["completed"] == 3
    assert client.post(url, json={"params": {}}).status_code == 409  # it has ended


def test_enqueued_params_are_checked_and_nothing_is_queued_on_error(client: TestClient) -> None:
    experiment_id = submit(client, small(CONDITIONAL, fixed={"epochs": 1}))
    url = f"{API}/experiments/{experiment_id}/trials"
    cases = [
        ({"lr": 0.1}, "params.lr", "not searched"),
        ({"hidden_layers": 9}, "params.hidden_layers", "within [1, 3]"),
        ({"hidden_layers": 2.5}, "params.hidden_layers", "integer"),
        ({"optimizer": "nadam"}, "params.optimizer", "one of"),
        ({"momentum": 0.9}, "params.momentum", "condition"),
        ({"optimizer": "sgd", "momentum": 0.9}, "params.momentum", "condition"),
    ]
    for params, field, words in cases:
        response = client.post(url, json={"params": params})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field and words in error["message"], error
    assert trials_of(client, experiment_id) == []
    fine = client.post(url, json={"params": {"optimizer": "momentum", "momentum": 0.9}})
    assert fine.status_code == 201, fine.text
    finite = f"{API}/experiments/{submit(client, small(CATEGORICAL))}/trials"
    config = {"params": {"optimizer": "sgd", "activation": "relu"}}
    assert client.post(finite, json=config).status_code == 201
    assert client.post(finite, json=config).status_code == 409  # each configuration once
    grid = submit(client, small(FINITE, sampler={"name": "grid"}))
    partial = client.post(f"{API}/experiments/{grid}/trials", json={"params": {"lr": 0.003}})
    assert partial.status_code == 422 and partial.json()["error"]["field"] == "params"


def test_budget_changes_take_effect_at_the_next_claim(client: TestClient) -> None:
    experiment_id = submit(client, small(NUMBERS, budget=budget(3, 1)))
    url = f"{API}/experiments/{experiment_id}"
    worker_a = client.post(f"{API}/workers", json={"name": "a"}).json()["id"]
    worker_b = client.post(f"{API}/workers", json={"name": "b"}).json()["id"]
    held = remember(client.post(f"{API}/workers/{worker_a}/claim", json={}).json())
    assert held is not None
    assert client.post(f"{API}/workers/{worker_b}/claim", json={}).status_code == 204

    raised = client.patch(url, json={"budget": {"max_concurrent": 2}})
    assert raised.status_code == 200 and raised.json()["max_concurrent"] == 2
    assert client.post(f"{API}/workers/{worker_b}/claim", json={}).status_code == 200

    too_low = client.patch(url, json={"budget": {"n_trials": 1}})
    assert too_low.status_code == 422
    assert too_low.json()["error"]["field"] == "budget.n_trials"
    for bad in ({"budget": {"n_trials": 0}}, {"budget": {}, "name": "x"}, {}):
        assert client.patch(url, json=bad).status_code == 422, bad
    assert client.get(url).json()["n_trials"] == 3  # nothing changed

    lowered = client.patch(url, json={"budget": {"n_trials": 2}}).json()
    assert lowered["n_trials"] == 2 and lowered["spec"]["budget"]["n_trials"] == 2
    for worker in (worker_a, worker_b):
        trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())
        assert trial is not None  # each gets back the trial it holds
        client.post(
            f"{API}/trials/{trial['trial_id']}/complete",
            headers=attempt_headers(trial["trial_id"]),
            json={"value": 0.5},
        )
    assert client.get(url).json()["state"] == "completed"
    assert client.patch(url, json={"budget": {"n_trials": 5}}).status_code == 409


@pytest.mark.parametrize("evaluator", ["fanova", "mean_decrease_impurity", "ped_anova"])
def test_importance_finds_the_parameter_that_matters(client: TestClient, evaluator: str) -> None:
    spec = small(NUMBERS, sampler={"name": "random", "seed": 0}, budget=budget(20, 1))
    experiment_id = submit(client, spec)
    url = f"{API}/experiments/{experiment_id}/importance"
    assert client.get(url).status_code == 409  # nothing completed yet
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    for _ in range(20):  # lr alone decides
        assert finish_quickly(client, worker, lambda p: -abs(math.log10(p["lr"]) + 2))
    response = client.get(url, params={"evaluator": evaluator})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["trials"] == 20 and set(result["importances"]) == {"lr", "hidden_units"}
    assert result["importances"]["lr"] > result["importances"]["hidden_units"]
    assert client.get(url, params={"evaluator": "shap"}).status_code == 422


# --- several objectives --------------------------------------------------------------------

TWO_OBJECTIVES = [
    {"metric": "val_accuracy", "direction": "maximize"},
    {"metric": "n_params", "direction": "minimize"},
]


def dominates(a: list[float], b: list[float]) -> bool:
    """a beats b: accuracy as high or higher and parameters as few or fewer, one strictly."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_a_multi_objective_sweep_returns_the_pareto_front(client: TestClient, sampler: str) -> None:
    options = {"population_size": 4} if sampler == "nsga2" else {"n_startup_trials": 3}
    spec = small(
        {
            "hidden_units": {"type": "int", "low": 4, "high": 64, "log": True},
            "lr": {"type": "float", "low": 1e-3, "high": 0.05, "log": True},
        },
        objective=None,
        objectives=TWO_OBJECTIVES,
        sampler={"name": sampler, "seed": 1, "options": options},
        budget=budget(8, 1),
    )
    experiment_id = submit(client, spec)
    assert run_worker(client) == 8

    trials = trials_of(client, experiment_id)
    assert all(t["state"] == "completed" and len(t["values"]) == 2 for t in trials)
    for t in trials:  # the values are the metrics of the epoch the first objective chose
        detail = client.get(f"{API}/trials/{t['id']}").json()
        [chosen] = [m for m in detail["metrics"] if m["epoch"] == t["best_epoch"]]
        assert t["values"] == [chosen["values"]["val_accuracy"], chosen["values"]["n_params"]]
        assert t["value"] == t["values"][0]
    best = client.get(f"{API}/experiments/{experiment_id}/best").json()
    assert best["pareto_front"] is True and best["objectives"] == TWO_OBJECTIVES
    front = [t["values"] for t in best["trials"]]
    assert front and all(not dominates(a, b) for a in front for b in front)
    others = [t["values"] for t in trials if t["id"] not in {f["id"] for f in best["trials"]}]
    assert all(any(dominates(f, o) for f in front) for o in others)
    importance = client.get(f"{API}/experiments/{experiment_id}/importance")
    assert importance.status_code == 200, importance.text  # of the first objective


def test_multi_objective_specs_are_checked(client: TestClient) -> None:
    cases = [
        ({"sampler": {"name": "cmaes"}}, "sampler.name"),
        ({"pruner": {"name": "median"}}, "pruner.name"),
        ({"objectives": [TWO_OBJECTIVES[0], TWO_OBJECTIVES[0]]}, "objectives[1].metric"),
        (
            {"objectives": [TWO_OBJECTIVES[0], {"metric": "f1", "direction": "maximize"}]},
            "objectives[1].metric",
        ),
        ({"objective": TWO_OBJECTIVES[0]}, "objectives"),
    ]
    for overrides, field in cases:
        spec = small(NUMBERS, **{"objective": None, "objectives": TWO_OBJECTIVES, **overrides})
        response = client.post(f"{API}/experiments", json=spec)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field, response.json()
    neither = small(NUMBERS, objective=None)
    assert client.post(f"{API}/experiments", json=neither).json()["error"]["field"] == "objective"
    assert client.get(f"{API}/experiments").json()["total"] == 0


def test_a_spec_without_a_pruner_gets_the_default_for_its_objectives(client: TestClient) -> None:
    single = small(NUMBERS)
    del single["pruner"]
    several = {**single, "objective": None, "objectives": TWO_OBJECTIVES}
    stored = [client.post(f"{API}/experiments", json=s).json()["spec"] for s in (single, several)]
    assert stored[0]["pruner"]["name"] != "none"
    assert stored[1]["pruner"]["name"] == "none"


def test_every_example_spec_is_accepted(client: TestClient) -> None:
    for path in sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml")):
        response = client.post(f"{API}/experiments", json=yaml.safe_load(path.read_text()))
        assert response.status_code == 201, (path.name, response.text)
