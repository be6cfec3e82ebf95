"""A large artifact up and down through a real `sweep server` (SQLite, a directory store):
the server's peak memory growth, and the transfer rates beside copying the same bytes to
the same disk in the same run (the baseline, since this machine is shared and noisy).

    .venv/bin/python benchmarks/artifact_transfer.py [--gib 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.processes import ServerProcess

API = "/api/v1"
BLOCK = 1 << 20


def memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0)
    blocks = int(parser.parse_args().gib * 1024)
    block = os.urandom(BLOCK)
    digest = hashlib.sha256()
    for _ in range(blocks):
        digest.update(block)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        started = time.perf_counter()
        with open(root / "baseline", "wb") as file:
            for _ in range(blocks):
                file.write(block)
            file.flush()
            os.fsync(file.fileno())
        baseline = time.perf_counter() - started
        (root / "baseline").unlink()

        server = ServerProcess(f"sqlite:///{root / 'sweep.db'}", root / "logs")
        server.start()
        try:
            headers = {"Authorization": f"Bearer {server.admin_token}"}
            http = httpx.Client(base_url=server.url, headers=headers, timeout=600)
            spec = {
                "name": "transfer",
                "model": "mlp",
                "dataset": "digits",
                "objective": {"metric": "val_accuracy", "direction": "maximize"},
                "search_space": {"lr": {"type": "float", "low": 0.001, "high": 0.1}},
                "budget": {"n_trials": 1},
            }
            http.post(f"{API}/experiments", json=spec).raise_for_status()
            worker = http.post(f"{API}/workers", json={"name": "bench"}).json()["id"]
            trial = http.post(f"{API}/workers/{worker}/claim", json={}).json()
            url = f"{API}/trials/{trial['trial_id']}/weights"
            pid = server.process.pid  # type: ignore[union-attr]
            before = memory(pid, "VmRSS")
            started = time.perf_counter()
            answer = http.put(
                url,
                content=(block for _ in range(blocks)),
                headers={"X-Attempt-Token": trial["token"], "X-Content-SHA256": digest.hexdigest()},
            )
            answer.raise_for_status()
            up = time.perf_counter() - started
            received = hashlib.sha256()
            started = time.perf_counter()
            with http.stream("GET", f"{API}/trials/{trial['trial_id']}/model") as response:
                for chunk in response.iter_bytes(BLOCK):
                    received.update(chunk)
            down = time.perf_counter() - started
            assert received.hexdigest() == digest.hexdigest()
            growth = memory(pid, "VmHWM") - before
        finally:
            server.stop()
    mib = blocks
    print(f"{mib / 1024:.1f} GiB, server RSS {before / 2**20:.0f} MiB before")
    print(f"server peak memory growth: {growth / 2**20:.1f} MiB (target < 100)")
    print(f"baseline (write to disk): {mib / baseline:.0f} MiB/s")
    print(f"upload:   {mib / up:.0f} MiB/s ({baseline / up:.2f}x the baseline)")
    print(f"download: {mib / down:.0f} MiB/s ({baseline / down:.2f}x the baseline)")


if __name__ == "__main__":
    main()
