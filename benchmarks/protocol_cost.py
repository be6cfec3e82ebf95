"""The server's CPU per worker-protocol call at a steady rate, against another commit's code.

    .venv/bin/python benchmarks/protocol_cost.py [--against REF] [--workers 200] [--rate 200]
        [--seconds 25] [--repeats 3] [--load-processes 2] [--pg URL]

One real `sweep server` (one API process) on a fresh PostgreSQL database; --workers workers
registered and each holding a running trial; --load-processes processes send their calls over
real HTTP (asyncio + httpx, a client per worker, as many_workers.py does) at --rate calls a
second in all, spread evenly: five reports for each heartbeat, as `sweep worker` sends them
with epochs of a few seconds. The rate is one the machine keeps up with, so the figure is the
cost of a call, not of a queue: the server's CPU seconds (user + system, from /proc) over the
calls it answered, from the third second to the last but three.

With --against REF, the same run is made with the code of REF (a temporary `git worktree`;
REF must have the same database migrations), alternating with the working tree's, --repeats
times each; printed: each run's figures, then the means and the working tree's ratio to REF's.
On a shared machine compare only runs of one invocation.

    --workers 1 --load-processes 1 --rate 0

sends one worker's calls back to back instead: what a call costs the server when it is the
only one, with no other call and no second load process contending for the two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.control_plane import CLOCK_TICKS, PG_ADMIN, cpu_seconds, fresh_database
from tests.processes import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
REPORTS_PER_HEARTBEAT = 5


@dataclass
class Run:
    code: str
    calls: int
    server_ms_per_call: float
    system_share: float  # of the server's CPU, in the kernel (its sockets)
    p50_ms: float
    p99_ms: float
    load_ms_per_call: float


def send_calls(
    url: str, token: str, assignments: list[dict[str, Any]], rate: float, seconds: float, out: Any
) -> None:
    """One load process: each worker calls every len(assignments) / rate seconds."""
    out.put(asyncio.run(_send_calls(url, token, assignments, rate, seconds)))


async def _send_calls(
    url: str, token: str, assignments: list[dict[str, Any]], rate: float, seconds: float
) -> tuple[list[float], float]:
    headers = {"Authorization": f"Bearer {token}"}
    tls = ssl.create_default_context()  # made once: each takes ~20 ms of CPU
    every = len(assignments) / rate if rate else 0.0  # 0: back to back
    latencies: list[float] = []

    async def worker(assignment: dict[str, Any]) -> None:
        trial = f"/trials/{assignment['trial_id']}"
        attempt = {"X-Attempt-Token": assignment["token"]}
        client = httpx.AsyncClient(base_url=url + API, headers=headers, timeout=60, verify=tls)
        async with client as http:
            await asyncio.sleep(random.random() * every)  # spread over the period
            ends = time.monotonic() + seconds
            epoch = calls = 0
            while time.monotonic() < ends:
                started = time.monotonic()
                calls += 1
                if calls % (REPORTS_PER_HEARTBEAT + 1) == 0:
                    response = await http.post(f"{trial}/heartbeat", headers=attempt)
                else:
                    epoch += 1
                    metrics = {"val_accuracy": random.random(), "loss": random.random()}
                    body = {"epoch": epoch, "metrics": metrics}
                    response = await http.post(f"{trial}/reports", json=body, headers=attempt)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.request.url}: {response.text}")
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    cpu = time.process_time()
    await asyncio.gather(*(worker(a) for a in assignments))
    return latencies, time.process_time() - cpu


def prepare(server: ServerProcess, workers: int) -> list[dict[str, Any]]:
    """An experiment with a running trial for each of `workers` registered workers."""
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    runner = {"Authorization": f"Bearer {server.worker_token}"}
    with httpx.Client(base_url=server.url + API, timeout=60) as http:
        spec = {
            "name": "protocol-cost",
            "model": "mlp",
            "dataset": "digits",
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}},
            "fixed": {"epochs": 10_000},
            "sampler": {"name": "random", "seed": 1},
            "pruner": {"name": "median"},
            "budget": {"n_trials": workers, "max_concurrent": workers},
        }
        experiment = http.post("/experiments", json=spec, headers=admin).raise_for_status()
        assignments = []
        for i in range(workers):
            registered = http.post("/workers", json={"name": f"cost{i}"}, headers=runner)
            claim = {"wait_seconds": 0, "experiment_id": experiment.json()["id"]}
            answer = http.post(
                f"/workers/{registered.raise_for_status().json()['id']}/claim",
                json=claim,
                headers=runner,
            )
            assignments.append(answer.raise_for_status().json())
    return assignments


def measure(code: str, root: Path, args: argparse.Namespace) -> Run:
    admin = psycopg.connect(args.pg, autocommit=True)
    with fresh_database(admin, args.pg) as (_, url), tempfile.TemporaryDirectory() as logs:
        # Started in `root`: `python -m` imports from its working directory first.
        server = ServerProcess(url, Path(logs), env={"PYTHONPATH": str(root)}, cwd=root)
        server.start()
        try:
            assignments = prepare(server, args.workers)
            results: Any = multiprocessing.Queue()
            shares = [assignments[i :: args.load_processes] for i in range(args.load_processes)]
            rate = args.rate / args.load_processes
            loads = [
                multiprocessing.Process(
                    target=send_calls,
                    args=(server.url, server.worker_token, share, rate, args.seconds, results),
                )
                for share in shares
            ]
            for load in loads:
                load.start()
            assert server.process is not None
            pid = server.process.pid
            time.sleep(3)  # every worker under way
            cpu, system, started = cpu_seconds(pid), _system_seconds(pid), time.monotonic()
            time.sleep(args.seconds - 6)
            cpu = cpu_seconds(pid) - cpu
            system = _system_seconds(pid) - system
            elapsed = time.monotonic() - started
            seen = [results.get() for _ in loads]
            for load in loads:
                load.join()
        finally:
            server.stop()
    admin.close()
    latencies = sorted(t for got, _ in seen for t in got)
    calls_per_second = len(latencies) / args.seconds
    return Run(
        code=code,
        calls=len(latencies),
        server_ms_per_call=cpu / elapsed / calls_per_second * 1e3,
        system_share=system / cpu,
        p50_ms=latencies[len(latencies) // 2] * 1e3,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1e3,
        load_ms_per_call=sum(load_cpu for _, load_cpu in seen) / len(latencies) * 1e3,
    )


def _system_seconds(pid: int) -> float:
    """The CPU a process has used in the kernel."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / CLOCK_TICKS


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """REF's code checked out beside this one, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sweep-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", str(path), ref], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="a git ref whose code is the baseline")
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument(
        "--rate", type=float, default=200, help="calls a second, in all (0: back to back)"
    )
    parser.add_argument("--seconds", type=float, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--pg", default=PG_ADMIN)
    args = parser.parse_args()
    runs: list[Run] = []
    with worktree(args.against) if args.against else nullcontext() as baseline:
        for _ in range(args.repeats if args.against else 1):
            codes = [("this tree", ROOT)]
            if baseline is not None:
                codes.insert(0, (args.against, baseline))
            for code, root in codes:
                run = measure(code, root, args)
                runs.append(run)
                print(
                    f"{run.code}: {run.calls} calls, server {run.server_ms_per_call:.3f} ms "
                    f"of CPU a call ({run.system_share:.0%} in the kernel), latency p50 "
                    f"{run.p50_ms:.1f} ms p99 {run.p99_ms:.1f} ms; load "
                    f"{run.load_ms_per_call:.3f} ms a call",
                    flush=True,
                )
    if args.against:
        ours = statistics.mean(r.server_ms_per_call for r in runs if r.code == "this tree")
        theirs = statistics.mean(r.server_ms_per_call for r in runs if r.code == args.against)
        print(
            f"server CPU a call, mean: this tree {ours:.3f} ms, {args.against} {theirs:.3f} ms: "
            f"{ours / theirs:.2f}x"
        )


if __name__ == "__main__":
    main()
