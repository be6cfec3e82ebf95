"""What running a program under Sweep costs, next to running the same script alone, in one run.

    .venv/bin/python benchmarks/program_overhead.py [--trials 8] [--epochs 12] [--work 2500]

Start: seconds from the moment a trial is handed out (the claim, on the server's clock) to the
end of its program's first step (a report included), for a command with the SDK, a command
printing SWEEP lines, and a function; against the same script started alone, from `Popen` to
the end of its first step. The program needs no torch (benchmarks/programs/overhead.py), so
the figure is Sweep's and Python's, not an import's.

Reporting: the program's own loop time over --epochs epochs of fixed numpy work, reporting
every epoch against not reporting, under Sweep and alone, interleaved and repeated, and the
time spent inside trial.report() itself. On a machine whose cores the server and the worker
share with the program, a report's cost is mostly theirs: the server records it and asks the
pruner while the program trains. A real
`sweep server` (SQLite, no auth) and one `sweep worker` process, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from sweep.client import SweepClient

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "programs" / "overhead.py"
KINDS = {
    "command (SDK)": f"cmd={{python}} {PROGRAM} {{args}}",
    "command (SWEEP lines)": f"line={{python}} {PROGRAM} --sdk=0 {{args}}",
    "function": "fn=overhead:train",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(program: str, n: int, **fixed: Any) -> dict[str, Any]:
    return {
        "name": f"overhead-{program}",
        "program": program,
        "objective": {"metric": "score", "direction": "maximize"},
        "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        "fixed": fixed,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": n, "max_concurrent": 1},
    }


def run_sweep(client: SweepClient, program: str, n: int, **fixed: Any) -> list[dict[str, Any]]:
    """Run an experiment to its end; each trial with its result file's contents."""
    experiment = client.submit(spec(program, n, **fixed))
    while client.experiment(experiment["id"])["state"] != "completed":
        time.sleep(0.2)
    results = []
    for trial in client.all_trials(experiment["id"]):
        found = json.loads(Path(f"{fixed['result']}.{trial['id']}").read_text())
        started = datetime.fromisoformat(str(client.trial(trial["id"])["started_at"]))
        results.append({**found, "started": started.timestamp()})
    return results


def run_alone(n: int, **args: Any) -> list[dict[str, Any]]:
    results = []
    for i in range(n):
        result = f"{args['result']}.alone{i}"
        flags = [f"--{k}={v}" for k, v in {**args, "result": result, "sdk": 0}.items()]
        launched = time.time()
        subprocess.run([sys.executable, str(PROGRAM), *flags], check=True, capture_output=True)
        results.append({**json.loads(Path(result).read_text()), "started": launched})
    return results


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_delays(results: list[dict[str, Any]]) -> list[float]:
    return [r["first_step"] - r["started"] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--work", type=int, default=2500)  # about 0.3 s of numpy per epoch
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SWEEP_AUTH": "false", "SWEEP_DATA_DIR": str(scratch)}
    logs = (scratch / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweep.cli",
            "server",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/api/v1/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        programs = [arg for kind in KINDS.values() for arg in ("--program", kind)]
        worker = subprocess.Popen(
            [sys.executable, "-m", "sweep.worker", "--server", url, "--threads", "1", *programs],
            env={**env, "PYTHONPATH": str(PROGRAM.parent)},
            stdout=(scratch / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        client = SweepClient(url)
        result = str(scratch / "r")
        quick = {"epochs": 1, "work": 0, "report": 1, "result": result}
        print(f"start to first step, {args.trials} trials each (p50, max):")
        alone = start_delays(run_alone(args.trials, **quick))
        print(f"  alone                  {statistics.median(alone):6.3f} s  {max(alone):6.3f} s")
        for kind, option in KINDS.items():
            name = option.split("=", 1)[0]
            delays = start_delays(run_sweep(client, name, args.trials, **quick))
            print(
                f"  {kind:22} {statistics.median(delays):6.3f} s  {max(delays):6.3f} s"
                f"   (+{statistics.median(delays) - statistics.median(alone):.3f} s)"
            )
        print(f"\nreporting every epoch, {args.epochs} epochs, {args.repeats} repeats:")
        loops: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for report in (0, 1):
                work = {"epochs": args.epochs, "work": args.work, "report": report}
                cpu = {
                    name: cpu_seconds(proc.pid)
                    for name, proc in (("server", server), ("worker", worker))
                }
                (under,) = run_sweep(client, "cmd", 1, result=result, **work)
                for name, proc in (("server", server), ("worker", worker)):
                    loops.setdefault(f"{name} cpu {report}", []).append(
                        cpu_seconds(proc.pid) - cpu[name]
                    )
                loops.setdefault(f"sweep {report}", []).append(under["loop"])
                if report:
                    loops.setdefault("inside", []).append(under["reporting"] / args.epochs)
                (solo,) = run_alone(1, result=result, **work)
                loops.setdefault(f"alone {report}", []).append(solo["loop"])
        per_epoch = statistics.median(loops["alone 0"]) / args.epochs
        print(f"  one epoch of work alone: {per_epoch * 1000:.1f} ms")
        for name in ("server", "worker"):
            spent = statistics.median(loops[f"{name} cpu 1"]) - statistics.median(
                loops[f"{name} cpu 0"]
            )
            print(f"  {name} CPU per report: {spent / args.epochs * 1000:.1f} ms")
        inside = statistics.median(loops["inside"]) * 1e6
        print(f"  inside trial.report(), under Sweep: {inside:.0f} us per call")
        for where in ("alone", "sweep"):
            silent = statistics.median(loops[f"{where} 0"])
            loud = statistics.median(loops[f"{where} 1"])
            per_report = (loud - silent) / args.epochs * 1000
            print(
                f"  {where}: {silent:.3f} s without reports, {loud:.3f} s with: "
                f"{(loud / silent - 1) * 100:+.1f}% ({per_report:+.1f} ms per epoch)"
            )
    finally:
        for process in (worker, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
