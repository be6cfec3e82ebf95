"""What operators see: Prometheus metrics on the server and the worker, and JSON logs in which
one trial's requests share an id across both."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from sweep.service.app import create_app
from sweep.service.config import Settings
from tests.helpers import (
    authorize,
    budget,
    run_worker,
    scrape,
    small,
    submit,
    value,
    wait_for_end,
    wait_until,
)
from tests.processes import free_port, serve, start_worker, stop_workers

API = "/api/v1"
SPACE = {"dropout": {"type": "float", "low": 0.0, "high": 0.3}}


def test_server_metrics_move_as_a_sweep_runs(client: TestClient) -> None:
    torch.set_num_threads(1)
    before = scrape(client.get("/metrics").text)
    assert value(before, "sweep_claims_total", outcome="trial") == 0
    swept = submit(client, small(SPACE, budget=budget(3)))
    waiting = submit(client, small(SPACE, budget=budget(5)))
    client.post(f"{API}/experiments/{waiting}/pause")
    assert run_worker(client) == 3

    after = scrape(client.get("/metrics").text)
    assert value(after, "sweep_claims_total", outcome="trial") == 3
    assert value(after, "sweep_claims_total", outcome="none") >= 1  # the idle worker's last
    assert value(after, "sweep_reports_total", action="continue") == 6  # 3 trials x 2 epochs
    assert value(after, "sweep_sampler_ask_seconds_count") == 3
    assert value(after, "sweep_claim_seconds_count") >= 4
    report_route = f"{API}/trials/{{trial_id}}/reports"
    assert (
        value(
            after,
            "sweep_http_request_duration_seconds_count",
            method="POST",
            route=report_route,
            status="200",
        )
        == 6
    )
    assert value(after, "sweep_experiments", state="completed") == 1
    # Live experiments only: trials by state and what a worker could claim.
    assert (
        "sweep_trials",
        frozenset({("experiment", str(swept)), ("state", "completed")}),
    ) not in after
    assert value(after, "sweep_trials", experiment=str(waiting), state="queued") == 0
    client.post(f"{API}/experiments/{waiting}/resume")
    resumed = scrape(client.get("/metrics").text)
    assert value(resumed, "sweep_queue_depth", experiment=str(waiting)) == 5
    assert value(resumed, "sweep_active_workers") == 1


def test_lease_expiries_are_counted(settings: Settings) -> None:
    quick = settings.model_copy(update={"lease_seconds": 0.3, "lease_check_seconds": 0.1})
    with TestClient(create_app(quick)) as client:
        authorize(client)
        submit(client, small(SPACE, budget=budget(2)))
        worker = client.post(f"{API}/workers", json={"name": "gone"}).json()["id"]
        assert client.post(f"{API}/workers/{worker}/claim", json={}).status_code == 200
        deadline = time.monotonic() + 10
        expired = 0.0
        while expired == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            expired = value(scrape(client.get("/metrics").text), "sweep_lease_expiries_total")
        assert expired == 1


def test_metrics_need_a_reader_token_and_show_its_project(client: TestClient) -> None:
    mine = submit(client, {**small(SPACE, budget=budget(2)), "project": "a"})
    theirs = submit(client, {**small(SPACE, budget=budget(2)), "project": "b"})
    client.headers.pop("Authorization", None)
    assert client.get("/metrics").status_code == 401
    assert authorize(client, role="worker").get("/metrics").status_code == 403
    seen = authorize(client, role="viewer", project="a").get("/metrics")
    assert seen.status_code == 200
    samples = scrape(seen.text)
    assert value(samples, "sweep_queue_depth", experiment=str(mine)) == 2
    assert not any(dict(labels).get("experiment") == str(theirs) for _, labels in samples)
    assert value(samples, "sweep_experiments", state="running") == 1


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.mark.processes
def test_one_trial_story_across_server_and_worker_logs(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    env = {"SWEEP_LOG_FORMAT": "json"}
    server, client = serve(request, sqlite_url, logs, env=env, args=["--log-level", "info"])
    experiment_id = client.submit(small(SPACE, budget=budget(2)))["id"]
    port = free_port()
    worker = start_worker(
        server, logs, "w0", "--exit-when-idle", "60", "--metrics-port", str(port), env=env
    )
    try:
        assert wait_for_end(client, experiment_id, timeout=120)["state"] == "completed"
        worker_metrics = scrape(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    finally:
        stop_workers([worker])

    assert value(worker_metrics, "sweep_worker_trials_total", outcome="completed") == 2
    assert value(worker_metrics, "sweep_worker_epoch_seconds_count") == 4
    assert value(worker_metrics, "sweep_worker_device_memory_bytes", device="cpu") > 0

    trial = client.trials(experiment_id)["items"][0]
    trace = f"w{trial['worker_id']}-t{trial['id']}-a1"
    said = [e for e in json_lines(logs / "w0.log") if e["request_id"] == trace]
    assert any(f"trial {trial['id']} completed" in e["message"] for e in said)
    wanted = {f"{API}/trials/{{trial_id}}/reports", f"{API}/trials/{{trial_id}}/complete"}

    def access_lines() -> list[dict[str, Any]]:
        """The server's access lines of the trial, once its last ones are written."""
        lines = [e for e in json_lines(logs / "server-1.log") if e.get("request_id") == trace]
        return lines if wanted <= {e["route"] for e in lines} else []

    served = wait_until(access_lines, 30, "the server's access lines of the trial")
    assert all(e["trial_id"] == trial["id"] and e["status"] < 300 for e in served)
    assert all(e["logger"] == "sweep.access" and e["duration_ms"] > 0 for e in served)
