"""What the tests share: specs, tokens, the worker protocol spoken over an in-process client,
a real worker loop, waiting for states, and reading metrics. Real processes are in
tests.processes."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

API = "/api/v1"

# --- specs ---------------------------------------------------------------------------------

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
    """The digits example, with top-level keys replaced by `overrides`."""
    spec = copy.deepcopy(DIGITS_SPEC)
    spec.update(copy.deepcopy(overrides))
    return spec


def quick_spec(**overrides: Any) -> dict[str, Any]:
    """The digits example searching dropout only (trials that differ little, train quickly)."""
    space = {"dropout": {"type": "float", "low": 0.0, "high": 0.1}}
    return make_spec(**{"search_space": space, **overrides})


def small(search_space: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A spec of 2-epoch, one-layer trials over `search_space`, unpruned."""
    defaults = {"fixed": {"epochs": 2, "hidden_layers": 1}, "pruner": {"name": "none"}}
    return make_spec(search_space=search_space, **{**defaults, **overrides})


def budget(n_trials: int, max_concurrent: int = 4) -> dict[str, int]:
    return {"n_trials": n_trials, "max_concurrent": max_concurrent}


# --- tokens --------------------------------------------------------------------------------

# The attempt token of each claimed trial, sent with every call about it (X-Attempt-Token).
TOKENS: dict[int, str] = {}


def remember(assignment: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep a claim's attempt token for later calls about its trial."""
    if assignment is not None:
        TOKENS[assignment["trial_id"]] = assignment["token"]
    return assignment


def attempt_headers(trial_id: int, upload: bytes | None = None) -> dict[str, str]:
    """The attempt's token, and for an upload of `upload` its sha256."""
    headers = {"X-Attempt-Token": TOKENS.get(trial_id, "none")}
    return headers if upload is None else {**headers, **checksum(upload)}


def checksum(data: bytes) -> dict[str, str]:
    """The header every artifact upload carries."""
    return {"X-Content-SHA256": hashlib.sha256(data).hexdigest()}


def authorize(client: Any, role: str = "admin", project: str | None = None) -> Any:
    """Give an in-process test client a real token of `role`, made in its app's database."""
    from sweep.service import auth
    from sweep.service.schemas import TokenCreate

    with client.app.state.db.transaction() as session:
        secret, _ = auth.create(session, body=TokenCreate(role=role, project=project))
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


# --- the protocol, in process --------------------------------------------------------------


def submit(client: Any, spec: dict[str, Any]) -> int:
    """Create an experiment (201 expected); its id."""
    response = client.post(f"{API}/experiments", json=spec)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def trials_of(client: Any, experiment_id: int) -> list[dict[str, Any]]:
    return list(client.get(f"{API}/experiments/{experiment_id}/trials").json()["items"])


def register(client: Any, name: str = "w", **body: Any) -> int:
    """A new worker's id."""
    return int(client.post(f"{API}/workers", json={"name": name, **body}).json()["id"])


def claim(client: Any, worker: int | str, **body: Any) -> dict[str, Any] | None:
    """What a claim hands the worker (its attempt token remembered), or None for nothing; a
    name instead of an id registers a new worker first."""
    worker_id = register(client, worker) if isinstance(worker, str) else worker
    response = client.post(f"{API}/workers/{worker_id}/claim", json=body)
    assert response.status_code in (200, 204), response.text
    return remember(None if response.status_code == 204 else dict(response.json()))


def claim_trial(client: Any, worker: int | str, **body: Any) -> dict[str, Any]:
    """A claim that must hand out a trial."""
    trial = claim(client, worker, **body)
    assert trial is not None, "the claim handed out no trial"
    return trial


def call(client: Any, trial: dict[str, Any], action: str, **body: Any) -> Any:
    """POST /trials/{id}/{action} as the attempt `trial` (a claim's answer)."""
    return client.post(
        f"{API}/trials/{trial['trial_id']}/{action}",
        json=body or None,
        headers={"X-Attempt-Token": trial["token"]},
    )


def finish_quickly(
    client: Any, worker: int, value: float | Callable[[dict[str, Any]], float] = 0.5
) -> dict[str, Any] | None:
    """Claim a trial and complete it at once with `value` (or value(params)); None when there
    is nothing to claim."""
    trial = claim(client, worker)
    if trial is None:
        return None
    tid = trial["trial_id"]
    if callable(value):
        value = value(trial["params"])
    client.post(
        f"{API}/trials/{tid}/reports",
        headers=attempt_headers(tid),
        json={"epoch": 1, "metrics": {"val_accuracy": value}},
    )
    done = client.post(
        f"{API}/trials/{tid}/complete", headers=attempt_headers(tid), json={"value": value}
    )
    assert done.status_code == 200, done.text
    return trial


def run_worker(
    client: Any, *, wait_seconds: float = 0.1, exit_when_idle: float = 0.3, **options: Any
) -> int:
    """A real worker loop on the CPU, through the in-process client, until it has been idle
    for `exit_when_idle` seconds; returns the trials it ran."""
    import torch

    from sweep.worker.client import ServiceClient
    from sweep.worker.loop import Worker, WorkerOptions

    settings = WorkerOptions(
        name="w",
        device=torch.device("cpu"),
        wait_seconds=wait_seconds,
        exit_when_idle=exit_when_idle,
        **options,
    )
    return Worker(ServiceClient("", http=client), settings).run()


# --- waiting -------------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.2) -> Any:
    """Poll `condition` until it returns something true, which is returned."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return found


def wait_for_end(client: Any, experiment_id: int, timeout: float) -> dict[str, Any]:
    """The experiment (a SweepClient's answer) once it has completed or been cancelled."""
    seen: dict[str, Any] = {}

    def ended() -> dict[str, Any] | None:
        seen.update(client.experiment(experiment_id))
        return seen if seen["state"] in ("completed", "cancelled") else None

    try:
        return dict(wait_until(ended, timeout, f"experiment {experiment_id} to end", poll=0.5))
    except AssertionError as exc:
        raise AssertionError(f"experiment still {seen['state']}: {seen['counts']}") from exc


def assert_metrics_intact(client: Any, experiment_id: int) -> list[dict[str, Any]]:
    """Every finished trial's curve is whole: epochs 1..last, and its value comes from it."""
    trials = client.trials(experiment_id, limit=1000)["items"]
    details = [client.trial(t["id"]) for t in trials]
    for trial in details:
        epochs = [m["epoch"] for m in trial["metrics"]]
        assert epochs == list(range(1, trial["last_epoch"] + 1)), trial
        curve = [m["values"]["val_accuracy"] for m in trial["metrics"]]
        if trial["state"] == "completed":
            assert trial["value"] == max(curve)
            assert trial["has_weights"]
        elif trial["state"] == "pruned":
            assert trial["value"] == curve[-1]
    return details


# --- data and metrics ----------------------------------------------------------------------


def wine_csv() -> bytes:
    """scikit-learn's wine as a CSV whose target holds class names."""
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"f{i}" for i in range(X.shape[1])] + ["cultivar"])
    for row, label in zip(X, y, strict=True):
        writer.writerow([*row, f"cultivar_{'abc'[label]}"])
    return out.getvalue().encode()


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and labels (parsed, not grepped)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
