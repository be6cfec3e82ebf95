"""Property-based fuzzing of the live API from its own OpenAPI schema (Schemathesis).

A real server with an admin token takes every generated request; none may answer 5xx, every
status answered must be one the schema lists for the route, and every response must match the
schema the app publishes. Token revocation is left out: a generated
DELETE could revoke the very token the run uses, and the authorization matrix covers it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import make_spec
from tests.processes import ServerProcess

pytestmark = pytest.mark.processes  # real server, worker or pool processes

MIN_REQUESTS = 600


@pytest.fixture
def fuzzed_server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        db_url,
        tmp_path / "logs",
        env={
            # Generated claims would otherwise long-poll for work that never comes.
            "SWEEP_MAX_CLAIM_WAIT_SECONDS": "0.2",
            "SWEEP_MAX_SUBMISSIONS_PER_MINUTE": "100000",
            "SWEEP_DATA_DIR": str(tmp_path / "data"),
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_generated_requests_never_get_a_server_error(
    fuzzed_server: ServerProcess, tmp_path: Path
) -> None:
    # Real rows, a running trial among them, so that generated ids sometimes hit something.
    headers = {"Authorization": f"Bearer {fuzzed_server.admin_token}"}
    for _ in range(3):
        created = httpx.post(
            f"{fuzzed_server.url}/api/v1/experiments", json=make_spec(), headers=headers
        )
        assert created.status_code == 201, created.text
    worker = {"Authorization": f"Bearer {fuzzed_server.worker_token}"}
    registered = httpx.post(
        f"{fuzzed_server.url}/api/v1/workers", json={"name": "fuzz"}, headers=worker
    )
    claimed = httpx.post(
        f"{fuzzed_server.url}/api/v1/workers/{registered.json()['id']}/claim",
        json={},
        headers=worker,
    )
    assert claimed.status_code == 200 and claimed.json() is not None, claimed.text

    st = Path(sys.executable).with_name("st")
    run = subprocess.run(
        [
            str(st),
            "run",
            f"{fuzzed_server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {fuzzed_server.admin_token}",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--exclude-operation-id",
            "revoke_token",
            "--max-examples",
            # Fewer on SQLite: the other backend, fuzzed in full on PostgreSQL.
            "8" if fuzzed_server.database_url.startswith("sqlite") else "15",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output[-3000:]
    assert int(generated.group(1)) >= MIN_REQUESTS, output[-3000:]
    print(output[-1500:])
