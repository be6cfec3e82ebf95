"""The CLI's comforts, run as a user runs them: subprocesses against a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.processes import serve

pytestmark = pytest.mark.processes  # real server, worker or pool processes

CLI = [sys.executable, "-m", "sweep.cli"]


def test_init_ls_trials_watch_and_migrate(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    env = {**os.environ, "SWEEP_TOKEN": server.admin_token, "SWEEP_SERVER": server.url}

    def sweep(*args: str, code: int = 0, answer: str = "") -> str:
        done = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=env, cwd=tmp_path, input=answer
        )
        assert done.returncode == code, done.stdout + done.stderr
        return done.stdout

    assert "wrote sweep.yaml" in sweep("init")
    assert "exists" in sweep("init", code=1)
    assert "# " in (tmp_path / "sweep.yaml").read_text()  # commented
    assert "submitted" in sweep("submit", "sweep.yaml")  # the template is a valid spec
    [experiment] = client.experiments()["items"]
    assert experiment["name"] == "my-sweep" and experiment["n_trials"] == 30
    # The same spec again runs the same suggestions: said; an idempotency key submits once.
    twin = " ".join(sweep("submit", "sweep.yaml", "--idempotency-key", "k1").split())
    assert f"experiment {experiment['id']} already runs this spec under this name" in twin
    twin_id = client.experiments()["items"][0]["id"]
    again = sweep("submit", "sweep.yaml", "--idempotency-key", "k1")
    assert f"experiment {twin_id} (my-sweep) submitted" in again
    assert client.experiments()["total"] == 2
    client.delete(twin_id)

    assert "wrote own.yaml" in sweep("init", "own.yaml", "--program", "train_cnn")
    assert "submitted" in sweep("submit", "own.yaml")  # so is the program's
    own = client.experiments()["items"][0]
    assert (own["spec"]["program"], own["name"]) == ("train_cnn", "train_cnn-sweep")
    client.cancel(own["id"])

    listed = sweep("ls", "--state", "running")
    assert "my-sweep" in listed and "0/30" in listed
    client.enqueue(experiment["id"], {"lr": 0.01, "dropout": 0.1})
    queued = sweep("trials", str(experiment["id"]), "--state", "queued")
    assert "1 trial(s)" in queued and max(map(len, queued.splitlines())) <= 80
    # A column per parameter; --wide adds the id, attempt and worker.
    assert ["trial", "state", "reason", "value", "epoch", "lr", "dropout"] in cells(queued)
    assert ["(queued)", "queued", "", "-", "-", "0.01", "0.1"] in cells(queued)
    wide = sweep("trials", str(experiment["id"]), "--wide")
    assert (cells(wide)[0][:9]) == [
        "trial",
        "state",
        "reason",
        "value",
        "epoch",
        "epochs",
        "attempt",
        "worker",
        "id",
    ]
    # Why nothing runs (no worker registered) shows in status, as does why it ended.
    waiting = cells(sweep("status", str(experiment["id"])))
    assert ["waiting for", client.experiment(experiment["id"])["waiting_for"]] in waiting
    client.cancel(experiment["id"])
    # Into a pipe, watch prints a line per change; it has ended, so one line, and returns.
    [watched] = sweep("watch", str(experiment["id"])).splitlines()
    assert f"experiment {experiment['id']} cancelled: 1/30 done, 0 running" in watched
    assert watched.endswith("; cancelled by request")

    # For scripts: JSON, as the API answers it.
    shown = json.loads(sweep("status", str(experiment["id"]), "--json"))
    assert (shown["id"], shown["state"]) == (experiment["id"], "cancelled")
    assert json.loads(sweep("ls", "--json"))["total"] == 2
    page = json.loads(sweep("trials", str(experiment["id"]), "--json"))
    assert [t["params"] for t in page["items"]] == [{"lr": 0.01, "dropout": 0.1}]
    assert json.loads(sweep("best", str(experiment["id"]), "--json"))["trials"] == []
    assert json.loads(sweep("workers", "--json")) == []
    assert json.loads(sweep("dataset", "ls", "--json")) == []
    [line] = sweep("watch", str(experiment["id"]), "--json").splitlines()
    assert json.loads(line)["stop_reason"] == "cancelled by request"

    # Deleting says what goes and asks first.
    kept = " ".join(sweep("delete", str(experiment["id"]), code=1, answer="n\n").split())
    assert "deletes its 1 trials, their metrics and model files" in kept
    assert "nothing deleted" in kept and client.experiment(experiment["id"])
    assert "deleted" in sweep("delete", str(experiment["id"]), "--yes")
    assert not any(e["id"] == experiment["id"] for e in client.experiments()["items"])

    fresh = tmp_path / "fresh.db"
    env["SWEEP_DATABASE_URL"] = f"sqlite:///{fresh}"
    assert "up to date" in sweep("migrate")
    assert fresh.exists()


def test_what_goes_wrong_with_the_server_is_one_line_saying_what_to_do(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> None:
    server, _ = serve(request, sqlite_url, tmp_path / "logs")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_")}

    def fails(*args: str, token: str | None = server.admin_token, code: int = 1) -> str:
        given = {**env, "SWEEP_TOKEN": token} if token else env
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, env=given)
        said = done.stdout + done.stderr
        assert done.returncode == code, said
        assert "Traceback" not in said and len(said.strip().splitlines()) <= 2, said
        return " ".join(said.split())

    down = fails("ls", "--server", nowhere)
    assert f"cannot reach the Sweep server at {nowhere}" in down and "--server" in down
    assert "--server takes the server's address alone" in fails(
        "ls", "--server", f"{server.url}/api/v1"
    )
    assert "set SWEEP_TOKEN or pass --token" in fails("ls", "--server", server.url, token=None)
    assert "refused the token" in fails("ls", "--server", server.url, token="wrong")
    # --debug shows where it came from.
    debug = subprocess.run(
        [*CLI, "--debug", "ls", "--server", nowhere], capture_output=True, text=True, env=env
    )
    assert debug.returncode != 0 and "ConnectError" in debug.stdout + debug.stderr

    # A worker with a token the server refuses stops at once, saying so.
    refused = fails("worker", "--server", server.url, token="wrong", code=4)
    assert "refused this worker's token" in refused and "--role worker" in refused
    # One with a wrong address says which, as it retries.
    log = tmp_path / "lost-worker.log"
    with open(log, "wb") as out:
        lost = subprocess.Popen(
            [*CLI, "worker", "--server", nowhere],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "SWEEP_TOKEN": server.worker_token},
        )

    def names_the_url() -> bool:
        assert lost.poll() is None, log.read_text()  # it retries rather than exits
        return f"POST {nowhere}/api/v1/workers failed" in log.read_text()

    try:
        wait_until(names_the_url, 60, "the worker to name the URL it retries", poll=0.1)
    finally:
        lost.kill()
        lost.wait()


def cells(table: str) -> list[list[str]]:
    """The rows of a table the CLI printed, as lists of their cells' text."""
    rows = (
        line.strip().strip("│┃").replace("┃", "│").split("│")
        for line in table.splitlines()
        if "│" in line or "┃" in line
    )
    return [[cell.strip() for cell in row] for row in rows]
