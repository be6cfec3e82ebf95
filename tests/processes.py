"""Real server and worker processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sweep.client import SweepClient
from sweep.service.config import Settings
from sweep.service.tokens import create_in_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The collected tests by id (conftest fills it in): a test that starts a process, or whose
# fixture does, must be marked `processes`, so that `scripts/test.sh --fast` starts none.
ITEMS: dict[str, pytest.Item] = {}


def check_marked() -> None:
    running = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    item = ITEMS.get(running)
    if item is not None and item.get_closest_marker("processes") is None:
        raise AssertionError(f"{running} starts processes: mark it pytest.mark.processes")


def spawn(
    args: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Run `python ARGS` with its output in log_path (in `cwd`: `python -m` imports from it
    first)."""
    check_marked()
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )


class ServerProcess:
    """`sweep server` in a subprocess; can be killed and started again on the same port."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.database_url = database_url
        self.cwd = cwd
        self.extra_env = env or {}
        self.extra_args = args or []
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # Real tokens, made in the server's database as an operator would.
        settings = Settings(database_url=database_url)
        self.admin_token = create_in_database(role="admin", name="tests", settings=settings)
        self.worker_token = create_in_database(role="worker", name="workers", settings=settings)

    def start(self, timeout: float = 60.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        env = {
            **os.environ,
            "SWEEP_DATABASE_URL": self.database_url,
            # its artifact store, beside its logs rather than in the working directory
            "SWEEP_DATA_DIR": str(self.log_dir.parent / "server-data"),
            **self.extra_env,
        }
        command = [
            "-m",
            "sweep.cli",
            "server",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.extra_args,
        ]
        self.process = spawn(command, self.log_dir / f"server-{self.starts}.log", env, self.cwd)
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log_dir}")
            try:
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a host dies."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve(
    request: pytest.FixtureRequest,
    database_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> tuple[ServerProcess, SweepClient]:
    """A started `sweep server`, stopped after the test, and an admin client for it."""
    server = ServerProcess(database_url, log_dir, env=env, args=args)
    server.start()
    request.addfinalizer(server.stop)
    client = SweepClient(server.url, token=server.admin_token)
    request.addfinalizer(client.close)
    return server, client


def start_worker(
    server: ServerProcess,
    log_dir: Path,
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`sweep worker` in a subprocess, one torch thread (the test machine has two cores)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    command = ["-m", "sweep.cli", "worker", "--server", server.url, "--threads", "1"]
    env = {**os.environ, "SWEEP_TOKEN": server.worker_token, **(env or {})}
    return spawn([*command, "--name", name, *args], log_dir / f"{name}.log", env)


def stop_workers(workers: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
