"""The OpenAPI document is a contract a foreign client can be built from: openapi-python-client
generates a client from a live server's /openapi.json, mypy checks it with the code that uses
it, and that code drives a whole sweep through it (tests/contract/drive.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.processes import ServerProcess

pytestmark = pytest.mark.processes  # real server, worker or pool processes

DRIVER = Path(__file__).parent / "contract" / "drive.py"
BIN = Path(sys.executable).parent
# What the generator cannot express, and why that is not the document's fault: it has no
# parser for a gzip body (GET /trials/{id}/outputs answers application/gzip, as it should).
KNOWN_WARNINGS = {"WARNING parsing GET /api/v1/trials/{trial_id}/outputs within trials."}
# Its own client template's async context manager, whatever the document says.
GENERATOR_FILES = ("sweep_api/client.py",)


def test_a_generated_client_drives_a_sweep(server: ServerProcess, tmp_path: Path) -> None:
    document = httpx.get(f"{server.url}/openapi.json")
    assert document.status_code == 200
    (tmp_path / "openapi.json").write_bytes(document.content)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # its ruff pass
    generated = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(tmp_path / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "sweep_api"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0, output
    warnings = {line.strip() for line in output.splitlines() if line.startswith("WARNING")}
    assert warnings <= KNOWN_WARNINGS, output

    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--python-version",
            "3.11",
            "--cache-dir",
            str(tmp_path / ".mypy"),
            "--no-error-summary",
            str(DRIVER),
            str(tmp_path / "sweep_api"),
        ],
        capture_output=True,
        text=True,
        env={**env, "MYPYPATH": str(tmp_path)},
        cwd=tmp_path,
        timeout=300,
    )
    errors = [
        line
        for line in checked.stdout.splitlines()
        if ": error:" in line and not line.startswith(GENERATOR_FILES)
    ]
    assert errors == [], checked.stdout[-4000:]

    driven = subprocess.run(
        [sys.executable, str(DRIVER), server.url, server.admin_token, server.worker_token],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(tmp_path)},
        timeout=120,
    )
    assert driven.returncode == 0, driven.stdout[-3000:] + driven.stderr[-6000:]
    assert "the generated client drove the sweep" in driven.stdout
