"""Control-plane throughput: plain Optuna on PostgreSQL against Sweep, side by side in one run.

    .venv/bin/python benchmarks/control_plane.py [--clients 1 4 8] [--trials 200] [--warmup 20]
        [--repeats 2] [--server-workers 1] [--claim-wait 5] [--sides optuna sweep]
        [--pg URL] [--profile DIR [--py-spy PATH]] [--json FILE]

No training: a trial's objective is a fixed function of its params, so only the control plane
is timed: TPE suggesting 5 params, 3 intermediate values each followed by a pruning decision,
and the final value. Both sides use the same search space, TPE with the same seed, Sweep's
default pruner (search.DEFAULT_PRUNER), and the same PostgreSQL
server, each side on a fresh database of its own:

- optuna: N client processes running ask -> suggest_* x5 -> (report + should_prune) x3 -> tell
  on one study in an RDBStorage (Optuna's own recipe for parallel optimisation);
- sweep: one real `sweep server` (--server-workers API processes) and N client processes, each
  with one persistent httpx.Client speaking the worker protocol: claim -> 3 reports -> complete.
  Claims long-poll with --claim-wait seconds (5, as `sweep worker` does; 0 makes idle clients
  spin). Like the worker, a client sends a call again after a 503 and drops a trial whose
  attempt was taken away (409); the table counts both, and claims that came back empty.

Per repetition and N, Optuna runs then Sweep, each on a new study or experiment, so both see
the same history sizes. Clients start and get ready (imports, registration) before the clock;
the first --warmup finished trials (completed or pruned) are not timed, the next --trials are.

Printed per run: trials/s of each side and their ratio; CPU milliseconds per trial of the
clients, the server and the PostgreSQL backends of the side's database (from /proc); the
latency of each call as the clients saw it (Sweep: claim, report, complete; Optuna: ask with
its suggestions, report + should_prune, tell). With --profile DIR, a last Sweep run at the
largest N is sampled with py-spy (from PATH, or --py-spy) and the server's time holding the GIL
summarised by Sweep function and by file. The machine may be shared and small: compare the two sides
within a repetition.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import optuna
import psycopg

from sweep.service import search
from sweep.service.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.processes import ServerProcess

API = "/api/v1"
PG_ADMIN = os.environ.get("SWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SEED = 1
EPOCHS = 3
SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
    "optimizer": {
        "type": "categorical",
        "choices": ["sgd", "momentum", "adam", "adamw", "rmsprop"],
    },
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "hidden_units": {"type": "int", "low": 32, "high": 256, "log": True},
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# What each side's three kinds of call are called in the latency table.
CALLS = {"optuna": ("ask", "report", "tell"), "sweep": ("claim", "report", "complete")}


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """SPACE, the way an Optuna user writes it."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 0.3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
        "optimizer": trial.suggest_categorical(
            "optimizer", ["sgd", "momentum", "adam", "adamw", "rmsprop"]
        ),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "hidden_units": trial.suggest_int("hidden_units", 32, 256, log=True),
    }


def objective(params: dict[str, Any]) -> float:
    """A stand-in for validation accuracy: best near lr = 0.01, low dropout, not plain SGD."""
    lr_miss = (math.log10(params["lr"]) + 2.0) ** 2 / 8
    penalty = 0.2 * params["dropout"] + (0.05 if params["optimizer"] == "sgd" else 0.0)
    return max(0.0, 0.99 - lr_miss - penalty)


def curve(value: float, epoch: int) -> float:
    """The objective after `epoch` of EPOCHS epochs: rising to `value` at the last."""
    return value * (0.7 + 0.3 * epoch / EPOCHS)


# --- both sides' clients, each in its own process -------------------------------------------


@dataclass
class Shared:
    """What the clients of one run and the main process share."""

    ready: Any  # multiprocessing.Value: clients set up
    done: Any  # multiprocessing.Value: trials finished
    go: Any  # multiprocessing.Event
    stop: Any  # multiprocessing.Event
    results: Any  # multiprocessing.Queue of Calls, one per client

    @classmethod
    def make(cls, ctx: Any) -> Shared:
        return cls(ctx.Value("i", 0), ctx.Value("i", 0), ctx.Event(), ctx.Event(), ctx.Queue())

    def count(self, value: Any) -> None:
        with value.get_lock():
            value.value += 1


@dataclass
class Calls:
    """One client's timings: (start, seconds) per call kind, finish times, pruned, idle."""

    samples: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    finished: list[float] = field(default_factory=list)
    pruned: int = 0
    empty_claims: int = 0
    retries: int = 0  # calls answered 503 and sent again, as the real worker does
    lost: int = 0  # trials taken away mid-way (409: their lease ran out), not counted

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.samples[kind].append((start, time.monotonic() - start))


@dataclass(frozen=True)
class OptunaJob:
    url: str
    study_name: str


@dataclass(frozen=True)
class SweepJob:
    url: str
    token: str
    experiment_id: int
    claim_wait: float


def optuna_client(index: int, job: OptunaJob, shared: Shared) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=job.study_name,
        storage=optuna.storages.RDBStorage(job.url),
        sampler=optuna.samplers.TPESampler(seed=SEED + index),  # one seed per process
        pruner=search.make_pruner(search.default_pruner(1)),  # the very pruner Sweep builds
    )
    calls = Calls()
    shared.count(shared.ready)
    shared.go.wait()
    while not shared.stop.is_set():
        with calls.timed("ask"):
            trial = study.ask()
            value = objective(suggest(trial))  # suggest_* is where TPE samples
        for epoch in range(1, EPOCHS + 1):
            with calls.timed("report"):
                trial.report(curve(value, epoch), epoch)
                pruned = trial.should_prune()
            if pruned:
                break
        with calls.timed("tell"):
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
        calls.pruned += pruned
        _finished(calls, shared)
    shared.results.put(calls)


def sweep_client(index: int, job: SweepJob, shared: Shared) -> None:
    headers = {"Authorization": f"Bearer {job.token}"}
    timeout = httpx.Timeout(30.0, read=job.claim_wait + 60)
    with httpx.Client(base_url=job.url + API, headers=headers, timeout=timeout) as http:
        worker = _ok(http.post("/workers", json={"name": f"bench-{index}", "pid": os.getpid()}))
        calls = Calls()
        shared.count(shared.ready)
        shared.go.wait()
        while not shared.stop.is_set():
            if _sweep_trial(http, worker["id"], job, calls):
                _finished(calls, shared)
    shared.results.put(calls)


def _sweep_trial(http: httpx.Client, worker_id: int, job: SweepJob, calls: Calls) -> bool:
    """Claim a trial and run it; False when the claim brought none."""
    body = {"wait_seconds": job.claim_wait, "experiment_id": job.experiment_id}
    with calls.timed("claim"):
        response = _post(http, calls, f"/workers/{worker_id}/claim", body)
    if response.status_code == 204:
        calls.empty_claims += 1
        return False
    assignment = _ok(response)
    trial = f"/trials/{assignment['trial_id']}"
    attempt = {"X-Attempt-Token": assignment["token"]}
    value = objective(assignment["params"])
    for epoch in range(1, EPOCHS + 1):
        report = {"epoch": epoch, "metrics": {"val_accuracy": curve(value, epoch)}}
        with calls.timed("report"):
            answer = _post(http, calls, f"{trial}/reports", report, attempt)
        if _gone(answer, calls):
            return False
        if _ok(answer)["action"] != "continue":  # pruned: the server has finished the trial
            calls.pruned += 1
            return True
    with calls.timed("complete"):
        answer = _post(http, calls, f"{trial}/complete", {"value": value, "epoch": 3}, attempt)
    return not _gone(answer, calls) and _ok(answer) is not None


def _gone(answer: httpx.Response, calls: Calls) -> bool:
    """409: the trial is no longer this attempt's (its lease ran out while we retried)."""
    calls.lost += answer.status_code == 409
    return answer.status_code == 409


def _post(
    http: httpx.Client, calls: Calls, path: str, body: Any, headers: Any = None
) -> httpx.Response:
    """POST, sent again after a 503 (the database busy, or a deadlock), as the worker does."""
    for attempt in range(100):
        response = http.post(path, json=body, headers=headers)
        if response.status_code != 503:
            return response
        calls.retries += 1
        time.sleep(min(0.05 * 2**attempt, 1.0))
    return response


def _ok(response: httpx.Response) -> Any:
    if response.is_error:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return response.json()


def _finished(calls: Calls, shared: Shared) -> None:
    calls.finished.append(time.monotonic())
    shared.count(shared.done)


# --- the two sides, as the main process sets them up ----------------------------------------


class OptunaSide:
    name = "optuna"
    client = staticmethod(optuna_client)

    def __init__(self, url: str, database: str) -> None:
        self.url, self.database = url, database
        self.storage = optuna.storages.RDBStorage(url)  # made once: each holds a pool

    def prepare(self, label: str, n_clients: int, args: argparse.Namespace) -> OptunaJob:
        optuna.create_study(
            storage=self.storage,
            study_name=label,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=SEED),
            pruner=search.make_pruner(search.default_pruner(1)),
        )
        return OptunaJob(self.url, label)

    def server_pids(self) -> list[int]:
        return []

    def done(self, job: OptunaJob | SweepJob) -> None:
        pass


class SweepSide:
    name = "sweep"
    client = staticmethod(sweep_client)

    def __init__(self, server: ServerProcess, database: str) -> None:
        self.server, self.database = server, database
        self.admin = httpx.Client(
            base_url=server.url + API,
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=60,
        )

    def prepare(self, label: str, n_clients: int, args: argparse.Namespace) -> SweepJob:
        budget = {
            "n_trials": args.warmup + args.trials + 10 * n_clients + 100,
            "max_concurrent": n_clients,
        }
        spec = {
            "name": label,
            "model": "mlp",
            "dataset": "digits",
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "search_space": SPACE,
            "fixed": {"epochs": EPOCHS},
            "sampler": {"name": "tpe", "seed": SEED},
            "pruner": search.DEFAULT_PRUNER,
            "budget": budget,
        }
        experiment = _ok(self.admin.post("/experiments", json=spec))
        server = self.server
        return SweepJob(server.url, server.worker_token, experiment["id"], args.claim_wait)

    def server_pids(self) -> list[int]:
        assert self.server.process is not None
        return [self.server.process.pid, *descendants(self.server.process.pid)]

    def done(self, job: OptunaJob | SweepJob) -> None:
        assert isinstance(job, SweepJob)
        _ok(self.admin.post(f"/experiments/{job.experiment_id}/cancel"))


@contextmanager
def sweep_server(database_url: str, workers: int, log_dir: Path) -> Iterator[ServerProcess]:
    """A real `sweep server` on a free port, with real tokens made in its database, polling
    for other processes' work at the default pace."""
    server = ServerProcess(
        database_url,
        log_dir,
        env={"SWEEP_CLAIM_POLL_SECONDS": str(Settings().claim_poll_seconds)},
        args=["--workers", str(workers)],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def fresh_database(admin: psycopg.Connection[Any], pg: str) -> Iterator[tuple[str, str]]:
    """A new empty PostgreSQL database: (name, SQLAlchemy URL); dropped afterwards."""
    name = f"sweep_bench_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield name, f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- measuring ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def cpu_snapshot(
    admin: psycopg.Connection[Any], database: str, clients: list[int], server: list[int]
) -> dict[str, dict[int, float]]:
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))
    backends = [row[0] for row in rows]
    groups = {"clients": clients, "server": server, "postgres": backends}
    return {name: {pid: cpu_seconds(pid) for pid in pids} for name, pids in groups.items()}


def cpu_used(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    return {
        name: sum(seconds - before[name].get(pid, 0.0) for pid, seconds in after[name].items())
        for name in after
    }


@dataclass
class Run:
    side: str
    n_clients: int
    rep: str
    rate: float  # trials per second over the timed trials
    pruned: float  # share of finished trials that were pruned
    cpu_ms: dict[str, float]  # CPU milliseconds per trial: clients, server, postgres
    latencies: dict[str, list[float]]  # seconds, timed window only
    empty_claims: int
    retries: int
    lost: int


NO_RUN = Run("-", 0, "-", math.nan, math.nan, {}, {}, 0, 0, 0)  # a side left out by --sides


def measure(
    side: OptunaSide | SweepSide,
    n_clients: int,
    rep: str,
    args: argparse.Namespace,
    admin: psycopg.Connection[Any],
    profile: Path | None = None,
) -> Run:
    ctx = multiprocessing.get_context("spawn")
    shared = Shared.make(ctx)
    job = side.prepare(f"bench-{rep}-n{n_clients}", n_clients, args)
    processes = [
        ctx.Process(target=side.client, args=(i, job, shared), daemon=True)
        for i in range(n_clients)
    ]
    for process in processes:
        process.start()
    _wait_until(lambda: shared.ready.value >= n_clients, processes, timeout=300)
    pids = [p.pid for p in processes if p.pid is not None]
    shared.go.set()
    _wait_until(lambda: shared.done.value >= args.warmup, processes)
    done0, cpu0 = shared.done.value, cpu_snapshot(admin, side.database, pids, side.server_pids())
    with py_spy(side.server_pids()[:1], profile, args.py_spy):
        _wait_until(lambda: shared.done.value >= args.warmup + args.trials, processes)
        done1 = shared.done.value
        cpu1 = cpu_snapshot(admin, side.database, pids, side.server_pids())
    shared.stop.set()
    results: list[Calls] = [shared.results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    side.done(job)
    cpu = {k: v * 1e3 / max(1, done1 - done0) for k, v in cpu_used(cpu0, cpu1).items()}
    return _summarise(side.name, n_clients, rep, args, results, cpu)


def _wait_until(condition: Callable[[], bool], processes: list[Any], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if any(p.exitcode not in (None, 0) for p in processes):
            raise RuntimeError("a client process died; its traceback is above")
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the clients")
        time.sleep(0.01)


def _summarise(
    side: str,
    n_clients: int,
    rep: str,
    args: argparse.Namespace,
    results: list[Calls],
    cpu: dict[str, float],
) -> Run:
    finishes = sorted(t for r in results for t in r.finished)
    start, end = finishes[args.warmup - 1], finishes[args.warmup + args.trials - 1]
    latencies = {
        kind: [seconds for r in results for t, seconds in r.samples[kind] if start <= t < end]
        for kind in CALLS[side]
    }
    return Run(
        side=side,
        n_clients=n_clients,
        rep=rep,
        rate=args.trials / (end - start),
        pruned=sum(r.pruned for r in results) / len(finishes),
        cpu_ms=cpu,
        latencies=latencies,
        empty_claims=sum(r.empty_claims for r in results),
        retries=sum(r.retries for r in results),
        lost=sum(r.lost for r in results),
    )


# --- profiling ------------------------------------------------------------------------------


@contextmanager
def py_spy(pids: list[int], output: Path | None, executable: str) -> Iterator[None]:
    """Sample the server with py-spy (raw collapsed stacks) while the block runs."""
    if output is None or not pids:
        yield
        return
    # --gil: only the thread holding the GIL, i.e. where an API process spends its one core
    # (threads waiting on PostgreSQL or on locks would otherwise count too).
    command = [executable, "record", "--pid", str(pids[0]), "--subprocesses", "--gil"]
    spy = subprocess.Popen(
        [*command, "--format", "raw", "--output", str(output)], stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy.wait(timeout=60)


def _frame(frame: str) -> tuple[str, str]:
    """`name (path/to/file.py:12)` -> (name, path)."""
    name, _, where = frame.rpartition(" (")
    return name, where.rsplit(":", 1)[0]


def _file(path: str) -> str:
    """A frame's file as py-spy names it, without any site-packages prefix."""
    return path.rsplit("site-packages/", 1)[-1]


def _own(frame: str) -> str | None:
    name, path = _frame(frame)
    if "/service/" in path or path.startswith("service/"):
        return f"{path.rsplit('service/', 1)[1].removesuffix('.py')}.{name}"
    return None


def summarise_profile(path: Path, top: int) -> None:
    inclusive: Counter[str] = Counter()
    leaf_file: Counter[str] = Counter()
    by_owner: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames, count = stack.split(";"), int(count_text)
        total += count
        own = [f for f in map(_own, frames) if f is not None]
        inclusive.update(dict.fromkeys(own, count))
        leaf = _file(_frame(frames[-1])[1])
        leaf_file[leaf] += count
        by_owner[(own[-1] if own else "-", leaf)] += count
    print(f"\nserver profile: {total} samples (py-spy --gil: holding the GIL), {path}")
    _print_shares("inclusive, by Sweep function", inclusive, total, top)
    _print_shares("self, by file of the innermost frame", leaf_file, total, top)
    owners = Counter({f"{o}  ->  {leaf}": n for (o, leaf), n in by_owner.items()})
    _print_shares("self, by innermost Sweep function -> file", owners, total, top)


def _print_shares(title: str, counts: Counter[str], total: int, top: int) -> None:
    print(f"  {title}:")
    for key, n in counts.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {key}")


# --- output ---------------------------------------------------------------------------------


def print_tables(runs: list[Run]) -> None:
    pairs: dict[tuple[int, str], dict[str, Run]] = defaultdict(dict)
    for run in runs:
        pairs[(run.n_clients, run.rep)][run.side] = run
    print("\ntrials/s (completed or pruned), each side on its own fresh study / experiment")
    print(f"{'N':>3} {'rep':>4} {'optuna':>7} {'sweep':>7} {'sweep/optuna':>13}", end="")
    print(f" {'pruned o/s':>11} {'empty claims':>13} {'503 retries':>12} {'409 lost':>9}")
    for (n, rep), pair in sorted(pairs.items()):
        o, s = pair.get("optuna", NO_RUN), pair.get("sweep", NO_RUN)
        print(f"{n:>3} {rep:>4} {o.rate:>7.1f} {s.rate:>7.1f} {s.rate / o.rate:>13.2f}", end="")
        print(f" {o.pruned:>5.0%}/{s.pruned:<5.0%} {s.empty_claims:>13} {s.retries:>12}", end="")
        print(f" {s.lost:>9}")
    print(f"\nCPU ms per timed trial\n{'N':>3} {'rep':>4} {'side':>7}", end="")
    print(f" {'clients':>8} {'server':>7} {'postgres':>9} {'total':>7}")
    for run in sorted(runs, key=lambda r: (r.n_clients, r.rep, r.side)):
        c = run.cpu_ms
        print(f"{run.n_clients:>3} {run.rep:>4} {run.side:>7} {c['clients']:>8.1f}", end="")
        print(f" {c['server']:>7.1f} {c['postgres']:>9.1f} {sum(c.values()):>7.1f}")
    print_latencies(runs)


def print_latencies(runs: list[Run]) -> None:
    print("\nclient-side latency per call, ms: p50 / p99 (calls timed)")
    for run in sorted(runs, key=lambda r: (r.n_clients, r.rep, r.side)):
        cells = []
        for kind, seconds in run.latencies.items():
            ordered = sorted(seconds) or [math.nan]
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            median = statistics.median(ordered)
            cells.append(f"{kind:>8} {median * 1e3:5.1f} / {p99 * 1e3:5.1f} ({len(seconds)})")
        print(f"{run.n_clients:>3} {run.rep:>4} {run.side:>7} " + "  ".join(cells))


# --- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--trials", type=int, default=200, help="timed trials per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed trials first")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--server-workers", type=int, default=1, help="sweep API processes")
    parser.add_argument(
        "--claim-wait", type=float, default=5.0, help="claims' wait_seconds (the worker's: 5)"
    )
    parser.add_argument("--sides", nargs="+", default=["optuna", "sweep"])
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL to make databases on")
    parser.add_argument("--profile", type=Path, help="also profile Sweep's server into DIR")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--top", type=int, default=25, help="lines per profile table")
    parser.add_argument("--json", type=Path, help="also write every run here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    with (
        psycopg.connect(args.pg, autocommit=True) as admin,
        fresh_database(admin, args.pg) as (optuna_db, optuna_url),
        fresh_database(admin, args.pg) as (sweep_db, sweep_url),
        tempfile.TemporaryDirectory() as tmp,
        sweep_server(sweep_url, args.server_workers, Path(tmp) / "logs") as server,
    ):
        sweep = SweepSide(server, sweep_db)
        everything = (OptunaSide(optuna_url, optuna_db), sweep)
        sides = [side for side in everything if side.name in args.sides]
        print(
            f"sweep server: {args.server_workers} API process(es), claim wait_seconds "
            f"{args.claim_wait}; {args.warmup} warm-up + {args.trials} timed trials per run"
        )
        runs = []
        for rep in range(1, args.repeats + 1):
            for n in args.clients:
                for side in sides:
                    runs.append(measure(side, n, str(rep), args, admin))
                    print(f"  rep {rep} N={n} {side.name}: {runs[-1].rate:.1f} trials/s")
        print_tables(runs)
        if args.json:
            args.json.write_text(json.dumps([vars(r) for r in runs], indent=1))
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            n = max(args.clients)
            output = args.profile / f"sweep-server-n{n}.txt"
            run = measure(sweep, n, "prof", args, admin, profile=output)
            print(f"\nprofiled sweep run, N={n}: {run.rate:.1f} trials/s (py-spy slows it)")
            summarise_profile(output, args.top)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
