"""Waiting for an experiment's end: `GET /experiments/{id}?wait=S` answers the moment the
experiment ends (or after S seconds), holding no transaction meanwhile, lets go of a client
that hung up, and SweepClient.wait rides on it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from sweep.client import SweepClient
from sweep.service.db import REQUEST_TRANSACTIONS
from tests.helpers import budget, make_spec, quick_spec, submit, wait_until
from tests.processes import ServerProcess, serve
from tests.test_claims import NO_POLL, metric

API = "/api/v1"


def waiting_for_end(server: ServerProcess) -> float:
    return metric(server, "sweep_requests_waiting_for_end")


def test_a_wait_is_held_until_its_time_is_up_and_bad_waits_are_refused(
    client: TestClient,
) -> None:
    experiment_id = submit(client, quick_spec(budget=budget(2, 1)))
    started = time.monotonic()
    held = client.get(f"{API}/experiments/{experiment_id}", params={"wait": 0.3})
    assert held.status_code == 200 and held.json()["state"] == "running"
    assert time.monotonic() - started >= 0.3

    for bad in (-1, 61, "soon"):
        answer = client.get(f"{API}/experiments/{experiment_id}", params={"wait": bad})
        assert answer.status_code == 422
        assert answer.json()["error"]["field"] == "wait", answer.json()

    started = time.monotonic()
    unknown = client.get(f"{API}/experiments/999999", params={"wait": 60})
    assert unknown.status_code == 404
    assert time.monotonic() - started < 30  # answered at once, not after its wait


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_waits_hold_no_transaction_and_end_together_when_the_experiment_does(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs", env=NO_POLL)
    experiment_id = client.submit(make_spec(budget=budget(4, 1)))["id"]
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    url = f"{server.url}{API}/experiments/{experiment_id}"
    # A client that hangs up stops its wait.
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, params={"wait": 60}, headers=headers, timeout=httpx.Timeout(10, read=1))
    wait_until(lambda: waiting_for_end(server) == 0, 30, "the wait of a client that hung up ends")

    # More waits than requests may hold transactions at once.
    answers: list[httpx.Response] = []
    waiting = REQUEST_TRANSACTIONS + 5

    def wait() -> None:
        answers.append(httpx.get(url, params={"wait": 60}, headers=headers, timeout=120))

    def sdk_wait() -> None:
        with SweepClient(server.url, token=server.admin_token) as sdk:
            sdk_answers.append(sdk.wait(experiment_id, timeout=100)["state"])

    sdk_answers: list[str] = []
    threads = [threading.Thread(target=wait) for _ in range(waiting - 1)]
    threads.append(threading.Thread(target=sdk_wait))
    for thread in threads:
        thread.start()
    wait_until(lambda: waiting_for_end(server) == waiting, 60, f"{waiting} waits held")

    # Reads and writes go on beside them (a held transaction each would take every turn).
    assert client.experiment(experiment_id)["state"] == "running"
    ended = time.monotonic()
    client.cancel(experiment_id)
    for thread in threads:
        thread.join(60)
    assert time.monotonic() - ended < 30  # the end woke them: their wait was 60 s
    assert [a.json()["state"] for a in answers] == ["cancelled"] * (waiting - 1)
    assert sdk_answers == ["cancelled"]
    assert waiting_for_end(server) == 0


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_an_end_in_another_api_process_ends_the_wait(
    postgresql_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    waiting_on, watching = serve(request, postgresql_url, tmp_path / "a", env=NO_POLL)
    _, cancelling = serve(request, postgresql_url, tmp_path / "b", env=NO_POLL)
    experiment_id = cancelling.submit(make_spec(budget=budget(2, 1)))["id"]
    states: list[str] = []
    waiter = threading.Thread(
        target=lambda: states.append(watching.wait(experiment_id, timeout=100)["state"])
    )
    waiter.start()
    wait_until(lambda: waiting_for_end(waiting_on) == 1, 60, "the wait held")
    ended = time.monotonic()
    cancelling.cancel(experiment_id)
    waiter.join(60)
    # Its process looks again only every 120 s on its own: NOTIFY woke it.
    assert states == ["cancelled"] and time.monotonic() - ended < 30
