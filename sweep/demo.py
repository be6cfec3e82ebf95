"""`sweep demo`: a server on the embedded SQLite default, a local pool of workers, the digits
example (shipped inside the package, so the demo runs wherever sweep is installed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sweep import cli
from sweep.client import SweepClient, load_model, load_spec
from sweep.service.config import Settings
from sweep.service.tokens import create_in_database

EXAMPLE = Path(__file__).with_name("examples") / "digits-mlp.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(client: SweepClient, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            client.health()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout:.0f}s")


def run_demo(
    directory: Path,
    *,
    port: int,
    n_workers: int,
    n_trials: int | None = None,
    spec_file: Path | None = None,
) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SWEEP_DATA_DIR": str(directory.resolve())}
    for variable in ("SWEEP_DATABASE_URL", "SWEEP_TOKEN", "SWEEP_AUTH"):
        env.pop(variable, None)
    # The demo's own tokens: one to submit and watch, one for its workers.
    settings = Settings(database_url="", data_dir=directory)
    user_token = create_in_database(role="user", name="demo", settings=settings)
    worker_token = create_in_database(role="worker", name="demo workers", settings=settings)
    processes: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str, token: str = "") -> subprocess.Popen[bytes]:
        with (directory / log).open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "sweep.cli", *args],
                env={**env, "SWEEP_TOKEN": token} if token else env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        return process

    try:
        cli.console.print(f"starting the server at {url} (SQLite in {directory}/)")
        server = start(["server", "--port", str(port), "--log-level", "warning"], "server.log")
        client = SweepClient(url, token=user_token)
        wait_until_up(client, server, timeout=60)
        pool = ["--devices", "all", "--trials-per-device", str(n_workers), "--name", "demo"]
        start(["worker", "--server", url, *pool], "workers.log", token=worker_token)
        cli.console.print(f"started a pool of {n_workers} workers per device (log in {directory}/)")
        spec = load_spec(spec_file or EXAMPLE)
        if n_trials is not None:
            spec["budget"] = {**spec.get("budget", {}), "n_trials": n_trials}
        experiment = client.submit(spec)
        cli.console.print(f"submitted experiment {experiment['id']} ({experiment['name']})")
        cli.console.print(
            f"watch it live while it runs: {url}/dashboard/experiments/{experiment['id']} "
            f"(token: {user_token})",
            soft_wrap=True,
        )
        experiment = client.wait(experiment["id"], progress=True, poll=0.5)
        cli.console.print(cli.status_table(experiment))
        best = client.best(experiment["id"], k=3)
        cli.console.print(cli.best_table(best))
        if not best["trials"]:
            cli.console.print("[red]no trial completed[/red]; see the worker logs")
            return 1
        top = best["trials"][0]
        name = top["name"] or str(top["id"])
        saved = client.download_model(name, directory / f"best-trial-{name.replace('/', '-')}.pt")
        cli.console.print(
            f"best trial {name}: {best['metric']} = {top['value']:.4f}\n"
            f"its model: {saved} (also: sweep download {name} FILE, or "
            f"{url}/api/v1/trials/{top['id']}/model)\n"
            f"{_try_model(saved, experiment['spec']['dataset'])}\n"
            "use it (python, on a host with the worker extra):\n"
            f"  import sweep; model = sweep.load_model('{saved}')\n"
            "  model.predict(X)  # X: raw 8x8 digits as rows of 64 pixel values (0-16)",
            soft_wrap=True,
        )
        return 0
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _try_model(path: Path, dataset: dict[str, Any]) -> str:
    """What the saved model makes of the raw validation digits it was scored on."""
    from sweep.models.datasets import for_spec

    model = load_model(path)
    raw = for_spec({**dataset, "standardize": False})
    accuracy = float((model.predict(raw.X_val) == raw.y_val).mean())
    return (
        f"loaded with sweep.load_model, it labels the {len(raw.X_val)} raw validation digits "
        f"with accuracy {accuracy:.4f}"
    )
