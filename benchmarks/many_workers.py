"""A thousand workers on one API process: idle, woken by a submission, then all busy.

    .venv/bin/python benchmarks/many_workers.py [--workers 1000] [--load-processes 2]
        [--idle 60] [--busy 60] [--report-every 2] [--claim-wait 30] [--submit-as-polls-end]
        [--server-workers 1] [--pg URL] [--json FILE]

One real `sweep server` on a fresh PostgreSQL database, and --load-processes processes
simulating --workers workers between them over real HTTP on 127.0.0.1 (asyncio + httpx, a
client each, as every `sweep worker` has; a long poll holds its connection, and a trial's
heartbeats go beside its reports); this process only conducts the phases.
The workers speak the protocol `sweep worker` speaks; they only do not train. Three phases:

a. idle: every worker long-polls its claim (--claim-wait seconds, `sweep worker`'s default
   unless given) with no experiment, for --idle seconds. Printed: the server's CPU as a share
   of one core (target < 10%), PostgreSQL's, and the database's transactions per second.
b. wake: an experiment with a slot for every worker is submitted. Printed: the time from the
   submission to each worker's claim answered with a trial, p50 / p99 / last (target p99 < 2 s),
   as the workers saw it and, from the trials' rows, as the server started them (the first
   leaves out none of the load processes' own delays when they are short of CPU). The workers
   start polling together, so their polls run out together too: --submit-as-polls-end submits
   when the first one does, the worst moment (no claim waits at the server; a thousand are
   being sent again).
c. busy: every worker reports an epoch every --report-every seconds and heartbeats as its
   assignment says, for --busy seconds. Printed: report and heartbeat latency p50 / p99 / max
   (target: report p99 < 250 ms), the server's CPU, and leases lost (a 409, or a stop);
   then the same calls as the server itself timed them (its /metrics histogram), which
   leaves out this process's own delays when it is short of CPU.

Baseline in the same run: the round trip of `GET /healthz` (no database) before phase a, so
the latencies can be read against this machine's HTTP floor. The load runs on the same
machine as the server and PostgreSQL: its own CPU (all its processes) is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import ssl
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.control_plane import (
    PG_ADMIN,
    SPACE,
    cpu_seconds,
    descendants,
    fresh_database,
)
from sweep.worker.loop import WorkerOptions
from tests.processes import ServerProcess

API = "/api/v1"


@dataclass
class Observed:
    claimed_at: list[float] = field(default_factory=list)  # monotonic time of each trial claimed
    reports: list[float] = field(default_factory=list)  # seconds each took
    heartbeats: list[float] = field(default_factory=list)
    lost: int = 0  # 409 on a report or heartbeat, or an answer other than continue
    errors: list[str] = field(default_factory=list)
    retried: int = 0  # calls sent again after a 503 or a lost connection, as a worker does
    empty_claims: int = 0


# The calls whose server-side time phase c prints, by route template.
SERVED = {
    "reports": API + "/trials/{trial_id}/reports",
    "heartbeats": API + "/trials/{trial_id}/heartbeat",
}
LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Target:
    """Where the load goes: the server's address and its tokens."""

    url: str
    worker_token: str
    admin_token: str


@dataclass
class Control:
    """What the conducting process and the load processes share."""

    go: Event  # every load process registered its workers: they start polling together
    busy: Event  # phase c: reports are being timed
    stop: Event
    ready: Any  # multiprocessing.Value("i"): load processes whose workers are registered
    claimed: Any  # multiprocessing.Value("i"): claims answered with a trial, all processes
    emptied: Any  # multiprocessing.Value("i"): claims answered with no trial, all processes


class Load:
    def __init__(self, target: Target, args: argparse.Namespace, workers: int) -> None:
        self.args = args
        self.workers = workers
        self.target = target
        self.tls = ssl.create_default_context()  # made once: each takes ~20 ms of CPU
        self.http = self.client(connections=50)  # registration and the HTTP floor
        # One client per simulated worker, as each `sweep worker` has: a client's connection
        # pool looks through all its connections on every request, which for one pool of a
        # thousand connections cost this process more CPU than the calls themselves.
        self.clients: dict[int, httpx.AsyncClient] = {}
        self.admin = httpx.AsyncClient(
            base_url=target.url + API,
            headers={"Authorization": f"Bearer {target.admin_token}"},
            timeout=60,
        )
        self.metrics_url = target.url + "/metrics"
        self.observed = Observed()
        self.busy = asyncio.Event()  # phase c: reports are being timed
        self.stop = asyncio.Event()
        self.on_claim: Any = None  # called for each claim answered with a trial
        self.on_empty: Any = None  # called for each claim answered with no trial

    def client(self, connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.target.url + API,
            headers={"Authorization": f"Bearer {self.target.worker_token}"},
            timeout=self.args.claim_wait + 60,
            limits=httpx.Limits(max_connections=connections),
            verify=self.tls,
        )

    async def served(self) -> dict[str, dict[float, float]]:
        """The server's own request-duration histogram (sweep_http_request_duration_seconds)
        of POSTs, by route: cumulative counts by bucket bound, every status together. It
        times a call from its arrival to its answer, without this process's own delays.
        Empty when the server does not answer within the client's timeout."""
        try:
            text = (await self.admin.get(self.metrics_url)).text
        except httpx.TimeoutException:
            print("   (the server's /metrics did not answer in time)", flush=True)
            return {}
        found: dict[str, dict[float, float]] = {}
        for line in text.splitlines():
            if line.startswith("sweep_http_request_duration_seconds_bucket{"):
                labels = dict(LABEL.findall(line))
                if labels.get("method") == "POST":
                    bounds = found.setdefault(labels["route"], {})
                    bound = float(labels["le"])
                    bounds[bound] = bounds.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        return found

    async def post(self, http: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
        while True:  # as a worker does: a lost connection or a 503 is sent again
            try:
                response = await http.post(path, **kwargs)
            except httpx.TransportError:
                self.observed.retried += 1
                continue
            if response.status_code != 503:
                return response
            self.observed.retried += 1
            await asyncio.sleep(float(response.headers.get("retry-after", 1)))

    async def register(self, first: int) -> list[int]:
        """Register this process's workers, named sim<first>, sim<first + 1>, ..."""
        gate = asyncio.Semaphore(50)

        async def one(i: int) -> int:
            async with gate:
                response = await self.post(self.http, "/workers", json={"name": f"sim{first + i}"})
                return int(response.raise_for_status().json()["id"])

        return await asyncio.gather(*(one(i) for i in range(self.workers)))

    async def worker(self, worker_id: int) -> None:
        # A claim, then a trial's reports and its heartbeats, side by side.
        http = self.clients[worker_id] = self.client(connections=2)
        while not self.stop.is_set():
            response = await self.post(
                http, f"/workers/{worker_id}/claim", json={"wait_seconds": self.args.claim_wait}
            )
            if response.status_code == 204:
                self.observed.empty_claims += 1
                if self.on_empty is not None:
                    self.on_empty()
                continue
            if response.status_code != 200:
                self.observed.errors.append(f"claim {response.status_code}: {response.text}")
                return
            self.observed.claimed_at.append(time.monotonic())
            if self.on_claim is not None:
                self.on_claim()
            await self.run_trial(http, response.json())
            return

    async def run_trial(self, http: httpx.AsyncClient, assignment: dict[str, Any]) -> None:
        headers = {"X-Attempt-Token": assignment["token"]}
        trial = assignment["trial_id"]
        beating = asyncio.create_task(self.heartbeat(http, trial, headers, assignment))
        try:
            epoch = 0
            # Trials do not train in step: each one's epochs end at an offset of its own.
            next_at = time.monotonic() + self.args.report_every * (1 + random.random())
            while not self.stop.is_set():
                await _until(next_at, self.stop)
                if self.stop.is_set():
                    return
                epoch += 1
                body = {"epoch": epoch, "metrics": {"val_accuracy": 0.5 + 0.4 * epoch / 100}}
                started = time.monotonic()
                response = await self.post(
                    http, f"/trials/{trial}/reports", json=body, headers=headers
                )
                if self.busy.is_set():
                    self.observed.reports.append(time.monotonic() - started)
                if not self.answered_continue(response):
                    return
                next_at += self.args.report_every
        finally:
            beating.cancel()

    async def heartbeat(
        self, http: httpx.AsyncClient, trial: int, headers: dict[str, str], assignment: Any
    ) -> None:
        every = float(assignment["heartbeat_seconds"])
        next_at = time.monotonic() + every
        while not self.stop.is_set():
            await _until(next_at, self.stop)
            if self.stop.is_set():
                return
            started = time.monotonic()
            response = await self.post(http, f"/trials/{trial}/heartbeat", headers=headers)
            if self.busy.is_set():
                self.observed.heartbeats.append(time.monotonic() - started)
            if not self.answered_continue(response):
                return
            next_at += every

    def answered_continue(self, response: httpx.Response) -> bool:
        if response.status_code == 200 and response.json().get("action") == "continue":
            return True
        if not self.stop.is_set():
            self.observed.lost += 1
            self.observed.errors.append(f"{response.status_code}: {response.text[:200]}")
        return False

    async def floor(self, n: int = 200) -> list[float]:
        """Round trips of GET /healthz: the HTTP floor on this machine."""
        times = []
        for _ in range(n):
            started = time.monotonic()
            (await self.http.get("/healthz")).raise_for_status()
            times.append(time.monotonic() - started)
        return times

    async def close(self) -> None:
        for http in (self.http, self.admin, *self.clients.values()):
            await http.aclose()


async def _until(deadline: float, stop: asyncio.Event) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), remaining)


class Meter:
    """CPU of the server's processes, of the database's backends and of this process, and the
    database's transactions, between two marks."""

    def __init__(
        self, admin: psycopg.Connection[Any], database: str, server_pid: int, load: list[int]
    ) -> None:
        self.admin, self.database, self.server_pid = admin, database, server_pid
        self.load = load  # the load processes' pids

    def read(self) -> dict[str, float]:
        server = [self.server_pid, *descendants(self.server_pid)]
        backends = [
            row[0]
            for row in self.admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
            )
        ]
        (xacts,) = self.admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (self.database,),
        ).fetchone() or (0,)
        own = os.times()
        return {
            "at": time.monotonic(),
            "server": sum(cpu_seconds(p) for p in server),
            "postgres": sum(cpu_seconds(p) for p in backends),
            "load": own.user + own.system + sum(cpu_seconds(p) for p in self.load),
            "xacts": float(xacts),
        }

    @staticmethod
    def rates(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        elapsed = after["at"] - before["at"]
        return {k: (after[k] - before[k]) / elapsed for k in before if k != "at"} | {
            "seconds": elapsed
        }


def bucket_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """p50 and p99 of the observations between two reads of a histogram, as the upper bound
    of the bucket each falls in (inf: past the largest bucket)."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1]
    if total <= 0:
        return {"n": 0, "p50": math.nan, "p99": math.nan}
    return {"n": total} | {
        name: next(bound for bound, count in counts if count >= q * total)
        for name, q in (("p50", 0.5), ("p99", 0.99))
    }


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else []
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": cut[98] if cut else ordered[0],
        "max": ordered[-1],
    }


def seconds(q: dict[str, float]) -> str:
    if not q.get("n"):
        return "none"
    return f"p50 {q['p50']:.2f} s, p99 {q['p99']:.2f} s, last {q['max']:.2f} s"


def ms(q: dict[str, float]) -> str:
    if not q.get("n"):
        return "none"
    return f"p50 {q['p50'] * 1e3:.1f} ms, p99 {q['p99'] * 1e3:.1f} ms, max {q['max'] * 1e3:.1f} ms"


def started_after_submission(database_url: str, experiment_id: int) -> list[float]:
    """Seconds from the experiment's submission to each of its trials' start, by the server's
    own clock (the rows it wrote): the wake without the load processes' delays."""
    with psycopg.connect(database_url.replace("+psycopg", "")) as db:
        rows = db.execute(
            "SELECT EXTRACT(EPOCH FROM t.started_at - e.created_at) FROM sweep_trials t"
            " JOIN sweep_experiments e ON e.id = t.experiment_id"
            " WHERE e.id = %s AND t.started_at IS NOT NULL",
            (experiment_id,),
        ).fetchall()
    return [float(seconds) for (seconds,) in rows]


def simulate(
    target: Target, args: argparse.Namespace, workers: range, control: Control, out: Any
) -> None:
    """One load process: simulated workers (numbered `workers`) until told to stop; what they
    saw goes to `out`."""
    out.put(asyncio.run(_simulate(target, args, workers, control)))


async def _simulate(
    target: Target, args: argparse.Namespace, workers: range, control: Control
) -> dict[str, Any]:
    load = Load(target, args, len(workers))

    def claimed() -> None:
        with control.claimed.get_lock():
            control.claimed.value += 1

    def emptied() -> None:
        with control.emptied.get_lock():
            control.emptied.value += 1

    load.on_claim = claimed
    load.on_empty = emptied
    try:
        worker_ids = await load.register(workers.start)
        with control.ready.get_lock():
            control.ready.value += 1
        while not control.go.is_set():
            await asyncio.sleep(0.01)
        tasks = [asyncio.create_task(load.worker(w)) for w in worker_ids]
        while not control.stop.is_set():  # follow the conductor's phases
            if control.busy.is_set():
                load.busy.set()
            else:
                load.busy.clear()
            await asyncio.sleep(0.05)
        load.busy.clear()
        load.stop.set()
        await asyncio.wait(tasks, timeout=args.claim_wait + 30)
        for task in tasks:
            task.cancel()
    finally:
        await load.close()
    return asdict(load.observed)


async def scenario(
    server: ServerProcess, meter: Meter, loads: int, args: argparse.Namespace, control: Control
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "workers": args.workers,
        "load_processes": args.load_processes,
        "claim_wait": args.claim_wait,
    }
    target = Target(server.url, server.worker_token, server.admin_token)
    conductor = Load(target, args, 0)
    try:
        floor = await conductor.floor()
        results["healthz"] = quantiles(floor)
        print(f"baseline GET /healthz: {ms(results['healthz'])}", flush=True)
        while control.ready.value < loads:  # every worker registered
            await asyncio.sleep(0.1)
        control.go.set()

        # a. idle: let every claim reach its long poll, then measure.
        await asyncio.sleep(min(5.0, args.claim_wait))
        before = meter.read()
        await asyncio.sleep(args.idle)
        idle = Meter.rates(before, meter.read())
        results["idle"] = idle
        print(
            f"a. idle {args.workers} workers, {idle['seconds']:.0f} s: server "
            f"{idle['server'] * 100:.1f}% of a core, PostgreSQL {idle['postgres'] * 100:.1f}%, "
            f"{idle['xacts']:.1f} database transactions/s, load {idle['load'] * 100:.1f}%",
            flush=True,
        )

        # b. wake: one experiment with a slot for every worker.
        spec = {
            "name": "many-workers",
            "model": "mlp",
            "dataset": "digits",
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "search_space": SPACE,
            "sampler": {"name": "tpe", "seed": 1},
            "budget": {"n_trials": args.workers, "max_concurrent": args.workers},
        }
        if args.submit_as_polls_end:
            # The worst moment: the long polls run out (all of them within about a second)
            # and their claims are sent again, while none waits at the server.
            empty = control.emptied.value
            ends = time.monotonic() + args.claim_wait + 10
            while control.emptied.value == empty and time.monotonic() < ends:
                await asyncio.sleep(0.005)
        submitted = time.monotonic()
        response = await conductor.admin.post("/experiments", json=spec)
        response.raise_for_status()
        experiment_id = response.json()["id"]
        deadline = submitted + 120
        while control.claimed.value < args.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        woken = control.claimed.value
        print(
            f"b. {woken} of {args.workers} claims started "
            f"{time.monotonic() - submitted:.2f} s after the submission",
            flush=True,
        )
        results["wake_server"] = quantiles(
            started_after_submission(server.database_url, experiment_id)
        )

        # c. busy: every trial reports and heartbeats; time the calls for --busy seconds.
        before = meter.read()
        served_before = await conductor.served()
        control.busy.set()
        await asyncio.sleep(args.busy)
        control.busy.clear()
        busy = Meter.rates(before, meter.read())
        served_after = await conductor.served()
        control.stop.set()
        await conductor.admin.post(f"/experiments/{experiment_id}/cancel")
    finally:
        await conductor.close()
    return results | {
        "submitted": submitted,
        "woken": woken,
        "busy": busy,
        "served": {
            call: bucket_quantiles(served_before.get(route, {}), hist)
            for call, route in SERVED.items()
            if (hist := served_after.get(route))
        },
    }


def summarize(
    results: dict[str, Any], seen: list[dict[str, Any]], args: argparse.Namespace
) -> None:
    """Merge what the load processes saw into `results` and print phases b and c."""
    observed = Observed(
        claimed_at=[t for s in seen for t in s["claimed_at"]],
        reports=[t for s in seen for t in s["reports"]],
        heartbeats=[t for s in seen for t in s["heartbeats"]],
        lost=sum(s["lost"] for s in seen),
        errors=[e for s in seen for e in s["errors"]],
        retried=sum(s["retried"] for s in seen),
        empty_claims=sum(s["empty_claims"] for s in seen),
    )
    submitted = results.pop("submitted")
    waits = [t - submitted for t in observed.claimed_at]
    results["wake"] = wake = quantiles(waits)
    print(
        f"b. submit -> claims answered, as the workers saw it: {results.pop('woken')} of "
        f"{args.workers}, {seconds(wake)}",
        flush=True,
    )
    print(
        f"   submit -> trials started, by the server's rows: {results['wake_server']['n']} "
        f"trials, {seconds(results['wake_server'])}",
        flush=True,
    )
    busy, served = results["busy"], results.pop("served")
    busy |= {
        "reports": quantiles(observed.reports),
        "heartbeats": quantiles(observed.heartbeats),
        "lost": observed.lost,
        "served": served,
    }
    print(
        f"c. busy {busy['seconds']:.0f} s: {len(observed.reports)} reports "
        f"({len(observed.reports) / busy['seconds']:.0f}/s) {ms(busy['reports'])}; "
        f"{len(observed.heartbeats)} heartbeats {ms(busy['heartbeats'])}; "
        f"leases lost {observed.lost}; server {busy['server'] * 100:.0f}% of a core, "
        f"PostgreSQL {busy['postgres'] * 100:.0f}%, load {busy['load'] * 100:.0f}%",
        flush=True,
    )
    print(
        "   as the server timed them (its /metrics, one API process; bucket bounds): "
        + "; ".join(
            f"{call} {q['n']:.0f}, p50 <= {q['p50'] * 1e3:g} ms, p99 <= {q['p99'] * 1e3:g} ms"
            for call, q in served.items()
        ),
        flush=True,
    )
    results["retried_503"] = observed.retried
    results["errors"] = observed.errors[:10]
    if observed.errors:
        print(f"errors ({len(observed.errors)}):", *observed.errors[:5], sep="\n  ")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of phase a")
    parser.add_argument("--busy", type=float, default=60.0, help="seconds of phase c")
    parser.add_argument("--report-every", type=float, default=2.0)
    parser.add_argument(
        "--claim-wait", type=float, default=WorkerOptions.wait_seconds, help="long poll"
    )
    parser.add_argument(
        "--submit-as-polls-end",
        action="store_true",
        help="submit in phase b when the first long poll after phase a runs out",
    )
    parser.add_argument("--server-workers", type=int, default=1, help="API processes")
    parser.add_argument(
        "--load-processes", type=int, default=2, help="processes the workers are spread over"
    )
    parser.add_argument("--pg", default=PG_ADMIN)
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    context = multiprocessing.get_context("spawn")
    control = Control(
        go=context.Event(),
        busy=context.Event(),
        stop=context.Event(),
        ready=context.Value("i", 0),
        claimed=context.Value("i", 0),
        emptied=context.Value("i", 0),
    )
    with (
        psycopg.connect(args.pg, autocommit=True) as admin,
        fresh_database(admin, args.pg) as (
            name,
            url,
        ),
    ):
        log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"many-workers-{os.getpid()}"
        server = ServerProcess(url, log_dir, args=["--workers", str(args.server_workers)])
        server.start()
        out = context.Queue()
        target = Target(server.url, server.worker_token, server.admin_token)
        step = math.ceil(args.workers / args.load_processes)
        shares = [range(i, min(i + step, args.workers)) for i in range(0, args.workers, step)]
        loads = [
            context.Process(target=simulate, args=(target, args, share, control, out))
            for share in shares
        ]
        try:
            for load in loads:
                load.start()
            assert server.process is not None
            pids = [load.pid for load in loads if load.pid is not None]
            meter = Meter(admin, name, server.process.pid, pids)
            results = asyncio.run(scenario(server, meter, len(loads), args, control))
            seen = [out.get(timeout=args.claim_wait + 120) for _ in loads]
        finally:
            control.stop.set()
            for load in loads:
                load.join(timeout=args.claim_wait + 60)
                if load.is_alive():
                    load.kill()
            server.stop()
    summarize(results, seen, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
