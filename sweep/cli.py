"""The `sweep` command line: run the server and workers, submit and inspect experiments.

Commands that talk to a server need only the client. The server's commands (server, token,
migrate) and the worker's import theirs when they run, so a server host runs `sweep server`
without torch and a laptop runs `sweep ls` without the server's packages loaded.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from sweep import logs
from sweep.client import (
    API,
    DEFAULT_SERVER,
    ENDED,
    ApiError,
    BestTrials,
    Experiment,
    SweepClient,
    Trial,
    Unreachable,
    finished,
)

if TYPE_CHECKING:
    from sweep.worker.client import ServiceError

app = typer.Typer(help="Sweep: hyperparameter sweeps over HTTP.", no_args_is_help=True)
console = Console()

SPEC_TEMPLATE = Path(__file__).with_name("spec_template.yaml")
PROGRAM_TEMPLATE = Path(__file__).with_name("program_template.yaml")
ServerOpt = Annotated[str, typer.Option("--server", envvar="SWEEP_SERVER", help="service URL")]
TrialArg = Annotated[
    str,
    typer.Argument(metavar="TRIAL", help="EXPERIMENT/NUMBER as tables show it (1/17), or its id"),
]
WideOpt = Annotated[
    bool, typer.Option("--wide", help="every column, whole (tables fit 80 columns otherwise)")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="print JSON for scripts (watch: one line per change)")
]


class _Options:
    # Set by the options before any command runs.
    token: str | None = None  # --token, or SWEEP_TOKEN
    debug: bool = False  # --debug: errors with their traceback


@app.callback()
def main(
    token: Annotated[
        str | None, typer.Option("--token", envvar="SWEEP_TOKEN", help="API token")
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="show errors with their traceback")
    ] = False,
) -> None:
    """Sweep: hyperparameter sweeps over HTTP."""
    _Options.token, _Options.debug = token, debug


def run() -> None:
    """The `sweep` command: what went wrong with the server in one line that says what to do,
    never a traceback (but with --debug)."""
    try:
        app(prog_name="sweep")
    except (ApiError, Unreachable) as exc:
        if _Options.debug:
            raise
        console.print(f"[red]error:[/red] {escape(_explain(exc))}", soft_wrap=True)
        raise SystemExit(1) from None


def _client(server: str) -> SweepClient:
    return SweepClient(server, token=_Options.token)


def _fail(exc: Exception) -> typer.Exit:
    if _Options.debug:
        console.print_exception()
    console.print(f"[red]error:[/red] {escape(_explain(exc))}", soft_wrap=True)
    return typer.Exit(1)


def _print_json(value: Any) -> None:
    """One JSON document on a line of its own, for scripts (not through rich, which wraps)."""
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def _explain(exc: Exception) -> str:
    """An error and, where the cause is a usual one, what to do about it."""
    if isinstance(exc, Unreachable):
        return (
            f"{exc}: is it running (sweep server)? The address comes from --server or SWEEP_SERVER"
        )
    if not isinstance(exc, ApiError):
        return str(exc)
    if exc.status == 401:
        if not _Options.token:
            return "the server needs an API token: set SWEEP_TOKEN or pass --token"
        return f"the server refused the token ({exc.message}): check SWEEP_TOKEN or --token"
    if exc.status == 403:
        return f"{exc.message} (HTTP 403: the token's role or project does not allow this)"
    if exc.status == 404 and exc.code != "not_found":
        server = exc.url.split(API)[0] if exc.url.count(API) == 1 else exc.url
        return (
            f"no Sweep API at {server} ({exc.url} answered 404): --server takes the server's "
            "address alone, e.g. http://host:8642"
        )
    return str(exc)


@app.command()
def server(
    host: Annotated[str, typer.Option(envvar="SWEEP_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SWEEP_PORT")] = 8642,
    workers: Annotated[int, typer.Option(help="API processes")] = 1,
    log_level: str = "info",
) -> None:
    """Run the API server (SQLite in ./sweep-data unless SWEEP_DATABASE_URL is set)."""
    import uvicorn

    from sweep.service.config import Settings

    uvicorn.run(
        "sweep.service.app:server_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=logs.config(Settings().log_format, log_level),  # SWEEP_LOG_FORMAT
        access_log=False,  # Sweep's own (sweep.access) carries the request id
        timeout_graceful_shutdown=5,  # long-polled claims must not hold a shutdown
    )


dataset_app = typer.Typer(
    help="Your own datasets: CSV or NPZ files, validated and kept by the server."
)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("upload")
def dataset_upload(
    file: Path,
    name: Annotated[str, typer.Option(help="what specs call it")],
    target: Annotated[str | None, typer.Option(help="a CSV's column to predict")] = None,
    task: Annotated[
        str | None, typer.Option(help="classification, binary or regression (default: inferred)")
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
) -> None:
    """Upload a CSV (with --target) or an NPZ (arrays X and y)."""
    try:
        d = _client(server).upload_dataset(file, name, target=target, task=task)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except ApiError as exc:
        raise _fail(exc) from exc
    classes = f", {len(d['classes'])} classes" if d["classes"] else ""
    console.print(
        f"dataset [bold]{d['name']}[/bold] in project {d['project']}: {d['task']}, "
        f"{d['n_samples']} samples x {d['n_features']} features{classes} ({d['sha256'][:12]})"
    )


@dataset_app.command("rm")
def dataset_remove(name: str, server: ServerOpt = DEFAULT_SERVER) -> None:
    """Delete a dataset that no running or paused experiment uses."""
    try:
        _client(server).delete_dataset(name)
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(f"dataset {name} deleted")


@dataset_app.command("ls")
def dataset_list(server: ServerOpt = DEFAULT_SERVER, as_json: JsonOpt = False) -> None:
    """The datasets your token's project holds."""
    try:
        found = _client(server).datasets()
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(found)
        return
    table = Table("project", "name", "task", "samples", "features", "classes", "uploaded")
    for d in found:
        classes = str(len(d["classes"])) if d["classes"] else "-"
        table.add_row(
            d["project"],
            d["name"],
            d["task"],
            str(d["n_samples"]),
            str(d["n_features"]),
            classes,
            d["created_at"][:19],
        )
    console.print(table)


token_app = typer.Typer(help="API tokens (run on the server host, against its database).")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, user, viewer or worker")],
    project: Annotated[str | None, typer.Option(help="confine the token to a project")] = None,
    name: Annotated[str, typer.Option()] = "token",
) -> None:
    """Make a token in the database SWEEP_DATABASE_URL names; prints it alone on the last
    line. This is how the first admin token is made: there is no default password."""
    from pydantic import ValidationError

    from sweep.service.tokens import create_in_database

    try:
        secret = create_in_database(role=role, project=project, name=name)
    except ValidationError as exc:
        raise _fail(ValueError(exc.errors()[0]["msg"])) from exc
    console.print(
        f"{role} token{f' for project {project}' if project else ''} "
        "(shown only now; keep it secret):"
    )
    print(secret)


@app.command()
def worker(
    server: ServerOpt = DEFAULT_SERVER,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ...")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    max_trials: Annotated[int | None, typer.Option(help="exit after this many trials")] = None,
    exit_when_idle: Annotated[
        float | None, typer.Option(help="exit after this many seconds without work")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    devices: Annotated[
        str | None,
        typer.Option(help="all, or a list like cuda:0,cuda:1: one process per trial slot"),
    ] = None,
    trials_per_device: Annotated[
        int, typer.Option(min=1, help="trials at once on each of --devices")
    ] = 1,
    exit_on_oom: Annotated[
        bool, typer.Option(hidden=True, help="exit 3 after a trial ran out of memory (pools)")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve Prometheus metrics on this port (a pool: port, port+1, ...)"),
    ] = None,
    program: Annotated[
        list[str] | None,
        typer.Option(
            "--program",
            help="run your own code: NAME=module:function or NAME='python train.py {args}' "
            "(repeatable; specs name it as program: NAME)",
        ),
    ] = None,
    grace_seconds: Annotated[
        float, typer.Option(min=0, help="a program that must end gets this long after SIGTERM")
    ] = 30.0,
    gpus: Annotated[
        str | None,
        typer.Option(help="GPUs one program trial uses at once, like 0,1 (resources.gpus)"),
    ] = None,
) -> None:
    """Run a worker: claim trials from the server and train them. With --devices (or
    --trials-per-device above 1), run a pool of worker processes on this host instead."""
    from sweep.worker.programs import ProgramError, installed

    try:
        programs = installed(program or [])
    except ProgramError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    gpu_list = None
    if gpus is not None:
        try:
            gpu_list = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError as exc:
            raise typer.BadParameter("a list of GPU numbers like 0,1", param_hint="--gpus") from exc
        if devices is not None or trials_per_device > 1:
            raise typer.BadParameter(
                "--gpus gives one worker several GPUs; --devices runs a worker per device",
                param_hint="--gpus",
            )
    if devices is not None or trials_per_device > 1:
        from sweep.worker.pool import EXIT_REFUSED, Pool, resolve_devices

        logs.configure()
        passed = [] if max_trials is None else ["--max-trials", str(max_trials)]
        if exit_when_idle is not None:
            passed += ["--exit-when-idle", str(exit_when_idle)]
        for option in program or []:
            passed += ["--program", option]
        passed += ["--grace-seconds", str(grace_seconds)]
        pool = Pool(
            server,
            devices=resolve_devices(devices or (device or "all")),
            per_device=trials_per_device,
            token=_Options.token,
            threads=threads,
            name=name,
            worker_args=passed,
            metrics_port=metrics_port,
        )
        pool.install_signal_handlers()
        pool.run()
        if pool.refused:
            raise typer.Exit(EXIT_REFUSED)
        return
    from sweep.worker.client import ServiceError
    from sweep.worker.main import run_worker  # torch is needed here only, not on a server host
    from sweep.worker.pool import EXIT_OUT_OF_MEMORY, EXIT_REFUSED

    try:
        ran = run_worker(
            server,
            token=_Options.token,
            device=device,
            name=name,
            max_trials=max_trials,
            exit_when_idle=exit_when_idle,
            threads=threads,
            exit_on_oom=exit_on_oom,
            metrics_port=metrics_port,
            programs=programs,
            grace_seconds=grace_seconds,
            gpus=gpu_list,
        )
    except (ServiceError, ConnectionError) as exc:
        if _Options.debug:
            raise
        refused = isinstance(exc, ServiceError) and exc.status in (401, 403)
        console.print(f"[red]error:[/red] {escape(_worker_trouble(exc, server))}", soft_wrap=True)
        raise typer.Exit(EXIT_REFUSED if refused else 1) from None
    if exit_on_oom and ran.ran_out_of_memory:
        raise typer.Exit(EXIT_OUT_OF_MEMORY)


def _worker_trouble(exc: ServiceError | ConnectionError, server: str) -> str:
    if isinstance(exc, ConnectionError):
        return f"{exc}: is the server running at {server}? The address comes from --server"
    if exc.status in (401, 403):
        return (
            f"the server at {server} refused this worker's token ({exc.message}): set "
            "SWEEP_TOKEN or pass --token with a worker token (sweep token create --role worker)"
        )
    if exc.status == 404:
        return f"no Sweep API at {server} ({exc}): --server takes the server's address alone"
    return str(exc)


@app.command()
def submit(
    spec_file: Path,
    server: ServerOpt = DEFAULT_SERVER,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="submit once under this key: again, it names the same experiment"),
    ] = None,
) -> None:
    """Submit an experiment spec (YAML or JSON); prints its id, and warns when one of the same
    name and spec already runs (its trials would repeat the same suggestions)."""
    client = _client(server)
    try:
        experiment = client.submit(spec_file, idempotency_key=idempotency_key)
        twins = [
            e["id"]
            for e in client.experiments(state="running", limit=1000)["items"]
            if e["id"] != experiment["id"]
            and (e["name"], e["spec"]) == (experiment["name"], experiment["spec"])
        ]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(f"experiment [bold]{experiment['id']}[/bold] ({experiment['name']}) submitted")
    if twins:
        console.print(
            f"[yellow]warning:[/yellow] experiment {twins[0]} already runs this spec under this "
            f"name: with the same seed its trials repeat the same suggestions. If that was not "
            f"meant, sweep cancel {experiment['id']}; to submit once whatever the retries, pass "
            "--idempotency-key",
            soft_wrap=True,
        )


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="where to write it")] = Path("sweep.yaml"),
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
    program: Annotated[
        str | None, typer.Option(help="a spec for your own code, run as this program")
    ] = None,
) -> None:
    """Write a commented example spec to edit and submit."""
    if path.exists() and not force:
        raise _fail(FileExistsError(f"{path} exists; --force overwrites it"))
    if program is None:
        path.write_text(SPEC_TEMPLATE.read_text())
    else:
        from sweep.worker.programs import NAME

        if not NAME.match(program):
            raise typer.BadParameter("use 1-64 letters, digits and _ . -", param_hint="--program")
        path.write_text(PROGRAM_TEMPLATE.read_text().replace("NAME", program))
    console.print(f"wrote {path}; edit it, then: sweep submit {path}")


@app.command("ls")
def list_experiments(
    server: ServerOpt = DEFAULT_SERVER,
    state: Annotated[str | None, typer.Option(help="running, paused, completed...")] = None,
    limit: int = 50,
    as_json: JsonOpt = False,
) -> None:
    """List experiments, newest first."""
    try:
        page = _client(server).experiments(state=state, limit=limit)
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(page)
        return
    table = Table("id", "name", "state", "progress", "best", "created")
    for e in page["items"]:
        table.add_row(
            str(e["id"]),
            e["name"],
            e["state"],
            f"{finished(e)}/{e['n_trials']}",
            _fmt(e["best_value"]),
            e["created_at"][:19],
        )
    console.print(table)


app.command("list", hidden=True)(list_experiments)  # the name it had first


@app.command()
def trials(
    experiment_id: int,
    server: ServerOpt = DEFAULT_SERVER,
    state: Annotated[str | None, typer.Option(help="queued, running, completed...")] = None,
    sort: Annotated[str, typer.Option(help="number or objective (best first)")] = "number",
    limit: int = 100,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """An experiment's trials as a table, a column per parameter."""
    try:
        page = _client(server).trials(experiment_id, state=state, sort=sort, limit=limit)
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(page)
        return
    console.print(trials_table(page["items"], f"{page['total']} trial(s)", wide=wide))


@app.command("trial")
def show_trial(
    trial: TrialArg,
    server: ServerOpt = DEFAULT_SERVER,
    lines: Annotated[int, typer.Option(help="lines of its program's output to show")] = 20,
) -> None:
    """One trial: its state, params, config, how it ended, and its program's output."""
    try:
        t = _client(server).trial(trial)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TRIAL") from exc
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(
        f"trial [bold]{t['name'] or 'waiting to start'}[/bold] (id {t['id']}, experiment "
        f"{t['experiment_id']}): "
        f"{t['state']}, value {_fmt(t['value'])}, attempt {t['attempt']}, "
        f"{t['last_epoch']} report(s)"
    )
    console.print(f"params: {_params(t['params'])}")
    if t["failure_reason"]:
        console.print(f"{t['failure_reason']}: {t['failure_message'] or ''}", markup=False)
    if t.get("output") and lines > 0:
        kept = (t["output"] or "").splitlines()
        console.rule(f"the last {min(lines, len(kept))} lines of its output")
        console.print("\n".join(kept[-lines:]), markup=False, highlight=False)


def trials_table(items: list[Trial], title: str, *, wide: bool = False) -> Table:
    """A row per trial and a column per parameter. To fit 80 columns the trial, its state and
    value keep their width and the parameters' cells are cut short (…); with `wide` every
    column is whole, and the id, attempt and worker show too."""
    rows = [
        [
            t["name"] or "(queued)",
            t["state"],
            t["failure_reason"] or "",
            _fmt(t["value"]),
            str(t["best_epoch"] or "-"),
        ]
        + (
            [str(t["last_epoch"]), str(t["attempt"]), str(t["worker_id"] or "-"), str(t["id"])]
            if wide
            else []
        )
        for t in items
    ]
    heads = ["trial", "state", "reason", "value", "epoch"]
    heads += ["epochs", "attempt", "worker", "id"] if wide else []
    return _with_params(_table(title, wide), heads, rows, [t["params"] for t in items], wide)


PARAM_WIDTH = 10  # a parameter's column at most, but with --wide


def _with_params(
    table: Table,
    heads: list[str],
    rows: list[list[str]],
    params: list[dict[str, Any]],
    wide: bool,
) -> Table:
    """`rows` under `heads` at their full width, then a column per parameter: with `wide` all
    of them whole, else as many as fit the terminal, cut short (…), the rest named below."""
    room = console.width - 1
    for i, head in enumerate(heads):
        width = max([len(head), *(len(row[i]) for row in rows)])
        table.add_column(head, no_wrap=True, min_width=width)
        room -= width + 2  # its padding and border
    names = _param_names(params)
    cells = [[_param(values.get(n)) for n in names] for values in params]
    shown = []
    for i, name in enumerate(names):
        width = max([len(name), *(len(row[i]) for row in cells)])
        width = width if wide else min(width, PARAM_WIDTH)
        if not wide and room < width + 2:
            break
        room -= width + 2
        shown.append(i)
        table.add_column(name, no_wrap=True, max_width=None if wide else PARAM_WIDTH)
    for row, values in zip(rows, cells, strict=True):
        table.add_row(*row, *(values[i] for i in shown))
    if len(shown) < len(names):
        hidden = ", ".join(names[len(shown) :])
        table.caption = f"not shown: {hidden} (--wide shows every column)"
    return table


def _table(title: str, wide: bool) -> Table:
    return Table(title=title, collapse_padding=not wide, pad_edge=wide)


def _param_names(params: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> list[str]:
    """Every parameter name, in the order they first appear."""
    return list(dict.fromkeys(name for p in params for name in p))


def _param(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
def watch(
    experiment_id: int,
    server: ServerOpt = DEFAULT_SERVER,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """A live view of an experiment until it ends: its state and the running trials. Into a
    pipe or a file (or with --json) it prints a line each time something changes."""
    client = _client(server)
    try:
        if as_json or not console.is_terminal:
            _watch_lines(client, experiment_id, interval, as_json)
        else:
            _watch_live(client, experiment_id, interval)
    except ApiError as exc:
        raise _fail(exc) from exc


def _watch_live(client: SweepClient, experiment_id: int, interval: float) -> None:
    from rich.console import Group
    from rich.live import Live

    def view() -> tuple[Group, bool]:
        experiment = client.experiment(experiment_id)
        running = client.trials(experiment_id, state="running", limit=50)["items"]
        tables = Group(status_table(experiment), trials_table(running, "running"))
        return tables, experiment["state"] in ENDED

    shown, ended = view()
    with Live(shown, console=console, auto_refresh=False) as live:
        while not ended:
            time.sleep(interval)
            shown, ended = view()
            live.update(shown, refresh=True)


def _watch_lines(client: SweepClient, experiment_id: int, interval: float, as_json: bool) -> None:
    """A line per change (JSON lines with --json) until the experiment ends."""
    last = None
    while True:
        e = client.experiment(experiment_id)
        seen = (e["state"], e["counts"], e["best_value"], e["waiting_for"], e["stop_reason"])
        if seen != last:
            last = seen
            if as_json:
                _print_json(e)
            else:
                sys.stdout.write(_status_line(e) + "\n")
                sys.stdout.flush()
        if e["state"] in ENDED:
            return
        time.sleep(interval)


def _status_line(e: Experiment) -> str:
    counts = e["counts"]
    line = (
        f"{time.strftime('%H:%M:%S')} experiment {e['id']} {e['state']}: "
        f"{finished(e)}/{e['n_trials']} done, {counts['running']} running, "
        f"best {_fmt(e['best_value'])}"
    )
    if e["waiting_for"]:
        line += f"; waiting for {e['waiting_for']}"
    if e["stop_reason"] and e["state"] in ENDED:
        line += f"; {e['stop_reason']}"
    return line


@app.command()
def migrate() -> None:
    """Bring the schema of the database SWEEP_DATABASE_URL names up to date, and move what
    older versions kept in SQL into the artifact store (SWEEP_ARTIFACTS). The server does
    this when it starts; run it before a new version serves, as an upgrade's first step."""
    from sweep.service import legacy_blobs

    with _server_side() as (db, store):
        db.migrate()
        moved = legacy_blobs.into_store(db, store)
    console.print("the database schema is up to date")
    if moved:
        console.print(f"moved {moved} artifacts out of SQL into {store.url}")


artifacts_app = typer.Typer(help="The artifact store (run on the server host, with its settings).")
app.add_typer(artifacts_app, name="artifacts")


@artifacts_app.command("migrate")
def artifacts_migrate(
    into_sql: Annotated[
        bool,
        typer.Option(
            "--into-sql", help="move them back into SQL, before downgrading to a version without"
        ),
    ] = False,
) -> None:
    """Move weights, checkpoints, outputs and datasets that SQL still holds into the store,
    each checked by its sha256; run again after an interruption, it goes on where it
    stopped."""
    from sweep.service import legacy_blobs

    with _server_side() as (db, store):
        db.migrate()
        moved = (legacy_blobs.into_sql if into_sql else legacy_blobs.into_store)(db, store)
    where = "SQL" if into_sql else store.url
    console.print(f"moved {moved} artifacts into {where}")


@app.command()
def gc(
    grace: Annotated[
        float, typer.Option(help="leave objects younger than this many hours: uploads under way")
    ] = 2.0,
) -> None:
    """Remove from the artifact store what no trial or dataset names any more: the objects of
    deleted artifacts, and any other object older than --grace."""
    from datetime import timedelta

    from sweep.service import artifacts

    with _server_side() as (db, store):
        db.migrate()
        with db.transaction() as session:
            purged = 0
            while (batch := artifacts.purge(session, store)) == artifacts.PURGE_BATCH:
                purged += batch
            purged += batch
        with db.transaction(write=False) as session:
            collected = artifacts.collect(session, store, grace=timedelta(hours=grace))
            objects, size = artifacts.usage(session)
    console.print(
        f"removed {purged + collected} objects from {store.url}; "
        f"{objects} artifacts ({size / 2**20:.1f} MiB) remain"
    )


@contextmanager
def _server_side() -> Iterator[tuple[Any, Any]]:
    """The database and artifact store the server's settings name."""
    from sweep.service.config import Settings
    from sweep.service.db import Database

    settings = Settings()
    db = Database.connect(settings.resolved_database_url())
    try:
        yield db, settings.open_store()
    finally:
        db.dispose()


@app.command()
def status(
    experiment_id: int,
    server: ServerOpt = DEFAULT_SERVER,
    watch: Annotated[bool, typer.Option(help="follow until the experiment ends")] = False,
    as_json: JsonOpt = False,
) -> None:
    """An experiment's state, trial counts per state and best value, with a progress bar."""
    client = _client(server)
    try:
        experiment = (
            client.wait(experiment_id, progress=not as_json)
            if watch
            else client.experiment(experiment_id)
        )
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(experiment)
        return
    console.print(status_table(experiment))


def status_table(e: Experiment) -> Table:
    table = Table(title=f"experiment {e['id']}: {e['name']}", show_header=False)
    table.add_row("state", e["state"])
    table.add_row(
        "objective", f"{e['spec']['objective']['direction']} {e['spec']['objective']['metric']}"
    )
    table.add_row("trials", f"{e['trials_created']} of {e['n_trials']} started")
    done = finished(e)
    table.add_row(
        f"{done}/{e['n_trials']} done",
        ProgressBar(total=e["n_trials"], completed=done, width=30),
    )
    for state, n in e["counts"].items():
        table.add_row(f"  {state}", str(n))
    table.add_row("best value", _fmt(e["best_value"]))
    table.add_row("best trial", e["best_trial"] or "-")
    if e["waiting_for"]:
        table.add_row("waiting for", e["waiting_for"])
    if e["stop_reason"]:
        table.add_row("ended because" if e["state"] in ENDED else "note", e["stop_reason"])
    return table


@app.command()
def best(
    experiment_id: int,
    server: ServerOpt = DEFAULT_SERVER,
    k: Annotated[int, typer.Option("-k", help="how many")] = 1,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """The best trial (or the top k) with its params."""
    try:
        result = _client(server).best(experiment_id, k)
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(result)
        return
    console.print(best_table(result, wide=wide))


@app.command()
def workers(
    server: ServerOpt = DEFAULT_SERVER,
    limit: int = 100,
    as_json: JsonOpt = False,
) -> None:
    """The workers that registered, most recently seen first."""
    try:
        found = _client(server).workers(limit=limit)
    except ApiError as exc:
        raise _fail(exc) from exc
    if as_json:
        _print_json(found)
        return
    table = Table("id", "name", "host", "device", "gpus", "programs", "last seen")
    for w in found:
        table.add_row(
            str(w["id"]),
            w["name"],
            w["hostname"],
            w["device"],
            str(w["gpus"]),
            ", ".join(w["programs"]) or "-",
            str(w["last_seen_at"])[:19],
        )
    console.print(table)


def best_table(result: BestTrials, *, wide: bool = False) -> Table:
    """The best trials, a column per parameter (cut short to fit 80 columns, but with `wide`)."""
    found = result["trials"]
    rows = [
        [str(rank), t["name"] or "-", _fmt(t["value"]), str(t["best_epoch"])]
        + ([str(t["id"])] if wide else [])
        for rank, t in enumerate(found, 1)
    ]
    heads = ["rank", "trial", result["metric"], "epoch", *(["id"] if wide else [])]
    title = f"best by {result['direction']} {result['metric']}"
    return _with_params(_table(title, wide), heads, rows, [t["params"] for t in found], wide)


@app.command()
def download(
    trial: TrialArg,
    output: Path,
    server: ServerOpt = DEFAULT_SERVER,
    outputs: Annotated[
        bool, typer.Option("--outputs", help="the files its program left, as a .tar.gz")
    ] = False,
    bundle: Annotated[
        bool,
        typer.Option(
            "--bundle", help="OUTPUT is a directory: model.pt and trial.json (params, metrics)"
        ),
    ] = False,
) -> None:
    """Save a trial's model to OUTPUT: for the built-in trainer a bundle that
    sweep.load_model(OUTPUT) loads ready to predict on raw samples; for a program, what it
    saved."""
    if outputs and bundle:
        raise typer.BadParameter("--outputs and --bundle exclude each other")
    client = _client(server)
    try:
        if outputs:
            client.download_outputs(trial, output)
        elif bundle:
            client.download_bundle(trial, output)
        else:
            client.download_model(trial, output)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TRIAL") from exc
    except ApiError as exc:
        raise _fail(exc) from exc
    what = "the files of" if outputs else "the model bundle of" if bundle else "the model of"
    console.print(f"{what} trial {trial} saved to {output}")


def _control(action: str) -> None:
    def command(experiment_id: int, server: ServerOpt = DEFAULT_SERVER) -> None:
        try:
            experiment = _client(server).control(experiment_id, action)
        except ApiError as exc:
            raise _fail(exc) from exc
        console.print(f"experiment {experiment_id} is {experiment['state']}")

    command.__doc__ = f"{action.capitalize()} an experiment."
    app.command(action)(command)


for _action in ("pause", "resume", "cancel"):
    _control(_action)


@app.command("export")
def export_study(
    experiment_id: int,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="an Optuna storage URL (sqlite:///study.db), or mlflow:TRACKING_URI "
            "(mlflow:sqlite:///mlflow.db, mlflow:http://host:5000)",
        ),
    ],
    study: Annotated[str | None, typer.Option(help="study name (default: NAME-ID)")] = None,
    artifacts: Annotated[
        str | None,
        typer.Option(help="MLflow: where a new experiment keeps its artifacts (default: MLflow's)"),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
) -> None:
    """Write an experiment's finished trials as an Optuna study (for optuna.load_study and
    optuna-dashboard), or as MLflow runs: one parent run, a child per finished trial with its
    params, per-epoch metrics, state and model. Again later, it adds only what is new."""
    if to.startswith("mlflow:"):
        _export_mlflow(experiment_id, to.removeprefix("mlflow:"), artifacts, server)
        return
    import optuna

    try:
        with _quiet_optuna():
            written = _client(server).to_optuna_study(
                experiment_id, storage=to, study_name=study, finished_only=True
            )
    except (ApiError, optuna.exceptions.DuplicatedStudyError) as exc:
        raise _fail(exc) from exc
    console.print(f"{len(written.trials)} trials written to study {written.study_name!r} at {to}")


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Without Optuna's notes to its API's users (ExperimentalWarning, its INFO log lines):
    they concern this code, not the person at the terminal."""
    import warnings

    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _export_mlflow(
    experiment_id: int, tracking_uri: str, artifacts: str | None, server: str
) -> None:
    from sweep import export_mlflow

    try:
        done = export_mlflow.export(
            _client(server), experiment_id, tracking_uri, artifact_location=artifacts
        )
    except (ApiError, export_mlflow.ExportError) as exc:
        raise _fail(exc) from exc
    console.print(
        f"{done.logged} trial runs logged ({done.skipped} logged before) under run "
        f"{done.parent_run_id} of MLflow experiment {done.experiment_name!r} at {tracking_uri}"
    )


@app.command("import")
def import_study(
    spec_file: Path,
    source: Annotated[str, typer.Option("--from", help="the Optuna storage URL")],
    study: Annotated[str, typer.Option(help="the study's name")],
    server: ServerOpt = DEFAULT_SERVER,
) -> None:
    """Submit SPEC_FILE as a new experiment whose sampler starts from a finished Optuna
    study's trials (completed and pruned ones); its budget buys n_trials new ones."""
    try:
        with _quiet_optuna():
            experiment = _client(server).import_optuna(spec_file, storage=source, study_name=study)
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(
        f"experiment [bold]{experiment['id']}[/bold] ({experiment['name']}) submitted, "
        f"starting from {experiment['trials_created']} trials of study {study!r}"
    )


@app.command("import-wandb")
def import_wandb(
    config_file: Path,
    program: Annotated[
        str | None, typer.Option(help="the program workers run (default: the config's stem)")
    ] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="write the Sweep spec here instead of submitting")
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
) -> None:
    """Convert a W&B sweep configuration into a Sweep spec and submit it (or --write it),
    naming what it could not convert."""
    from sweep import wandb_config

    try:
        converted = wandb_config.load(config_file, program=program)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG_FILE") from exc
    for note in converted.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    if write is not None:
        import yaml

        write.write_text(yaml.safe_dump(converted.spec, sort_keys=False))
        console.print(f"wrote {write}")
        return
    try:
        experiment = _client(server).submit(converted.spec)
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(f"experiment [bold]{experiment['id']}[/bold] ({experiment['name']}) submitted")


@app.command()
def delete(
    experiment_id: int,
    server: ServerOpt = DEFAULT_SERVER,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete an experiment with its trials, metrics and model files, after saying what goes
    and asking (--yes: without asking)."""
    client = _client(server)
    try:
        e = client.experiment(experiment_id)
        if not yes:
            counts = cast(dict[str, int], e["counts"])
            running, total = counts["running"], sum(counts.values())
            console.print(
                f"experiment {e['id']} ({e['name']}) is {e['state']}"
                + (f" with {running} trials running" if running else "")
                + f": deleting it deletes its {total} trials, their metrics and model files, "
                "for good",
                markup=False,
            )
            if not typer.confirm("delete it?"):
                console.print("nothing deleted")
                raise typer.Exit(1)
        client.delete(experiment_id)
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(f"experiment {experiment_id} deleted")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="where the demo keeps its files")] = Path(
        "sweep-demo"
    ),
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="trials at once (a pool's processes)")] = 2,
    trials: Annotated[
        int | None, typer.Option(min=1, help="the budget (default: the spec's n_trials)")
    ] = None,
    spec_file: Annotated[Path | None, typer.Option("--spec")] = None,
) -> None:
    """Start a server on SQLite and a local pool of workers, run the digits example (or
    --spec), show the best trial and download its weights."""
    from sweep.demo import run_demo

    code = run_demo(directory, port=port, n_workers=workers, n_trials=trials, spec_file=spec_file)
    raise typer.Exit(code)


def _params(params: dict[str, Any]) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run()
