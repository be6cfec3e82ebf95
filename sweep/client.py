"""The Python client of the Sweep API; the CLI is built on it.

It needs httpx and PyYAML only: neither torch nor the server's dependencies. rich (for
`wait(progress=True)`) and optuna (for `to_optuna_study`) are imported when used.

    from sweep import SweepClient
    client = SweepClient()                       # SWEEP_SERVER and SWEEP_TOKEN, or arguments
    experiment = client.submit("examples/digits-mlp.yaml")
    client.wait(experiment["id"], progress=True)
    study = client.to_optuna_study(experiment["id"])   # optuna.visualization works on it
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, cast

import httpx

from sweep.retry import RetryPolicy, retry_after

if TYPE_CHECKING:
    import optuna

    from sweep.models.bundle import Predictor

DEFAULT_SERVER = "http://127.0.0.1:8642"
TrialRef = int | str  # a trial's id, or its name EXPERIMENT/NUMBER ("1/17")
TRIAL_NAME = re.compile(r"^(?:(\d+)/)?(\d+)$")
API = "/api/v1"
ENDED = ("completed", "cancelled", "failed")
# The longest a request waiting for an experiment's end is held (the server allows 60 s).
WAIT_SECONDS = 25.0
FAULTS = frozenset({500, 502, 503, 504})  # the service's or its database's, not the call's
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
FAULT_RETRY = RetryPolicy(initial=0.5, maximum=5.0, give_up_after=30.0)


# -------------------------------------------------------------------------------------------
# What the API answers (typed dicts: plain JSON at run time, checked by type checkers; a test
# holds them to the server's schemas)


class TrialCounts(TypedDict):
    queued: int
    running: int
    completed: int
    pruned: int
    failed: int
    cancelled: int


class Experiment(TypedDict):
    id: int
    name: str
    project: str
    state: str  # running, paused, completed, cancelled, failed
    spec: dict[str, Any]
    n_trials: int
    max_concurrent: int
    trials_created: int
    counts: TrialCounts
    best_value: float | None
    best_trial_id: int | None
    best_trial: str | None  # its name, EXPERIMENT/NUMBER
    stop_reason: str | None
    waiting_for: str | None  # why a running experiment gets no trials run, e.g. no live worker
    created_at: str
    updated_at: str
    finished_at: str | None


class Trial(TypedDict):
    id: int
    experiment_id: int
    number: int | None
    name: str | None  # EXPERIMENT/NUMBER, as users name it; None until first started
    state: str  # queued, running, completed, pruned, failed, cancelled
    params: dict[str, Any]
    value: float | None
    values: list[float] | None
    best_epoch: int | None
    last_epoch: int
    attempt: int
    retries: int
    resumed_from: int
    worker_id: int | None
    failure_reason: str | None
    failure_message: str | None
    has_weights: bool
    has_outputs: bool  # a program's files: download_outputs
    created_at: str
    started_at: str | None
    finished_at: str | None
    last_metrics: dict[str, float | None] | None  # the last epoch's, in trial lists


class Metric(TypedDict):
    epoch: int
    values: dict[str, float | None]
    created_at: str


class TrialDetail(Trial):
    config: dict[str, Any]
    metrics: list[Metric]
    output: str | None  # a program's trial: the tail of its output


T = TypeVar("T")


class Page(TypedDict, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class BestTrials(TypedDict):
    metric: str
    direction: str
    objectives: list[dict[str, str]]
    pareto_front: bool
    trials: list[Trial]


class ApiError(Exception):
    """The server answered with an error: `status`, and the service's `code` and `message`
    (code None when the answer was not the service's error shape, e.g. another server's)."""

    def __init__(self, response: httpx.Response) -> None:
        code = None
        try:
            error = response.json()["error"]
            code, message = error.get("code"), error["message"]
        except (ValueError, KeyError, TypeError, AttributeError):
            message = response.text.strip()[:200] or response.reason_phrase
        super().__init__(f"HTTP {response.status_code}: {message}")
        self.status = response.status_code
        self.code: str | None = code
        self.message: str = message
        self.url = str(response.request.url)


class Unreachable(ConnectionError):
    """No answer from the server: it is not running, the address is wrong, or the network."""

    def __init__(self, server: str, exc: httpx.TransportError) -> None:
        why = str(exc) or type(exc).__name__
        super().__init__(f"cannot reach the Sweep server at {server} ({why})")
        self.server = server


def load_spec(path: str | Path) -> dict[str, Any]:
    """A spec from a YAML or JSON file (JSON is YAML too)."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"{path} must hold a mapping")
    return spec


# -------------------------------------------------------------------------------------------
# The client


class SweepClient:
    def __init__(
        self,
        server: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`server` defaults to SWEEP_SERVER (else 127.0.0.1:8642), `token` to SWEEP_TOKEN;
        `http` replaces the HTTP client (its base URL is the server's)."""
        server = server or os.environ.get("SWEEP_SERVER") or DEFAULT_SERVER
        token = token or os.environ.get("SWEEP_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.Client(
            base_url=server.rstrip("/"), timeout=timeout, headers=headers
        )

    def __enter__(self) -> SweepClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; a fault of the service or its database (500, 502, 503, 504) is retried
        with backoff for up to half a minute (FAULT_RETRY), honouring Retry-After: any call on a 503
        (the service says nothing was done), only reads and idempotent writes on the others.
        A server that cannot be reached at all is said at once (Unreachable)."""
        delays = FAULT_RETRY.delays()
        while True:
            try:
                response = self.http.request(method, API + path, **kwargs)
            except httpx.TransportError as exc:
                raise Unreachable(str(self.http.base_url), exc) from exc
            if response.status_code < 400:
                return response
            status = response.status_code
            safe = status == 503 or (status in FAULTS and method in IDEMPOTENT)
            delay = next(delays, None) if safe else None
            if delay is None:
                raise ApiError(response)
            time.sleep(max(delay, retry_after(response.headers)))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def health(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", "/healthz"))

    # Experiments

    def submit(
        self, spec: dict[str, Any] | str | Path, *, idempotency_key: str | None = None
    ) -> Experiment:
        """Create an experiment from a spec: a dict, or a YAML or JSON file. With an
        `idempotency_key`, submitting again (a retry, a rerun of the script) answers the
        experiment the first submission made instead of starting another."""
        body = spec if isinstance(spec, dict) else load_spec(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return cast(Experiment, self._json("POST", "/experiments", json=body, headers=headers))

    def submit_wandb(
        self, config: dict[str, Any] | str | Path, *, program: str | None = None
    ) -> tuple[Experiment, list[str]]:
        """Submit a W&B sweep configuration (a dict or its YAML file) as an experiment of the
        program `program` (default: its `program`'s stem); and what did not convert."""
        from sweep import wandb_config

        if isinstance(config, dict):
            converted = wandb_config.convert(config, program=program)
        else:
            converted = wandb_config.load(config, program=program)
        return self.submit(converted.spec), converted.notes

    def experiments(
        self, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[Experiment]:
        """Newest first."""
        params = _query(state=state, limit=limit, offset=offset)
        return cast(Page[Experiment], self._json("GET", "/experiments", params=params))

    def experiment(self, experiment_id: int) -> Experiment:
        return cast(Experiment, self._json("GET", f"/experiments/{experiment_id}"))

    def wait(
        self,
        experiment_id: int,
        *,
        progress: bool = False,
        poll: float = 1.0,
        timeout: float | None = None,
    ) -> Experiment:
        """Until the experiment has ended (completed, cancelled or failed): the server holds
        each request up to WAIT_SECONDS and answers the moment it ends. With `progress`, a
        progress bar of finished trials, redrawn every `poll` seconds. TimeoutError after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _ProgressBar() if progress else None
        try:
            while True:
                hold = poll if bar is not None else WAIT_SECONDS
                if deadline is not None:
                    hold = max(0.0, min(hold, deadline - time.monotonic()))
                asked = time.monotonic()
                experiment = cast(
                    Experiment,
                    self._json(
                        "GET",
                        f"/experiments/{experiment_id}",
                        params={"wait": hold},
                        timeout=hold + 30,
                    ),
                )
                if bar is not None:
                    bar.show(experiment)
                if experiment["state"] in ENDED:
                    return experiment
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"experiment {experiment_id} is still {experiment['state']}")
                # A server that does not hold requests (before `wait`) answers at once.
                time.sleep(max(0.0, min(poll, hold) - (time.monotonic() - asked)))
        finally:
            if bar is not None:
                bar.close()

    def pause(self, experiment_id: int) -> Experiment:
        return self.control(experiment_id, "pause")

    def resume(self, experiment_id: int) -> Experiment:
        return self.control(experiment_id, "resume")

    def cancel(self, experiment_id: int) -> Experiment:
        """Running trials stop at their next report."""
        return self.control(experiment_id, "cancel")

    def control(self, experiment_id: int, action: str) -> Experiment:
        """pause, resume or cancel."""
        return cast(Experiment, self._json("POST", f"/experiments/{experiment_id}/{action}"))

    def delete(self, experiment_id: int) -> None:
        self._request("DELETE", f"/experiments/{experiment_id}")

    def change_budget(self, experiment_id: int, **budget: int) -> Experiment:
        """n_trials and/or max_concurrent, effective at the next claim."""
        body = {"budget": budget}
        return cast(Experiment, self._json("PATCH", f"/experiments/{experiment_id}", json=body))

    def enqueue(self, experiment_id: int, params: dict[str, Any]) -> Trial:
        """Queue a trial with these params (all searched ones, or some)."""
        path = f"/experiments/{experiment_id}/trials"
        return cast(Trial, self._json("POST", path, json={"params": params}))

    def importance(self, experiment_id: int, evaluator: str = "fanova") -> dict[str, Any]:
        path = f"/experiments/{experiment_id}/importance"
        return cast(dict[str, Any], self._json("GET", path, params={"evaluator": evaluator}))

    # Trials

    def trials(
        self,
        experiment_id: int,
        *,
        state: str | None = None,
        sort: str | None = None,  # number, objective (best first), param:NAME, metric:NAME
        order: str | None = None,  # asc or desc
        where: list[str] | None = None,  # ["lr>=0.001", "optimizer=adam"]: all must hold
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Trial]:
        """One page of an experiment's trials; sort="objective" puts the best first."""
        params = _query(
            state=state, sort=sort, order=order, where=where, limit=limit, offset=offset
        )
        path = f"/experiments/{experiment_id}/trials"
        return cast(Page[Trial], self._json("GET", path, params=params))

    def all_trials(
        self,
        experiment_id: int,
        *,
        state: str | None = None,
        sort: str | None = None,  # number, or objective (best first)
    ) -> Iterator[Trial]:
        """Every trial, a page at a time."""
        offset = 0
        while True:
            page = self.trials(experiment_id, state=state, sort=sort, limit=500, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def best(self, experiment_id: int, k: int = 1) -> BestTrials:
        """The k best completed trials; with several objectives, the Pareto front."""
        path = f"/experiments/{experiment_id}/best"
        return cast(BestTrials, self._json("GET", path, params={"k": k}))

    # A trial is named to users EXPERIMENT/NUMBER ("1/17"), as every table shows it; the
    # methods below take that name or the API's id (17 here is an id).

    def trial(self, trial: TrialRef) -> TrialDetail:
        experiment, number = _trial_name(trial)
        if experiment is None:
            return cast(TrialDetail, self._json("GET", f"/trials/{number}"))
        return cast(TrialDetail, self._json("GET", f"/experiments/{experiment}/trials/{number}"))

    def trial_id(self, trial: TrialRef) -> int:
        """The API's id of a trial named EXPERIMENT/NUMBER (or an id, as it is)."""
        experiment, number = _trial_name(trial)
        return number if experiment is None else self.trial(trial)["id"]

    def download_outputs(self, trial: TrialRef, path: str | Path) -> Path:
        """The files the trial's program left in SWEEP_OUTPUT_DIR, as a .tar.gz at `path`."""
        return self._download(f"/trials/{self.trial_id(trial)}/outputs", Path(path))

    def download_model(self, trial: TrialRef, path: str | Path) -> Path:
        """The trial's model file saved to `path`: for the built-in trainer a model bundle
        (`sweep.load_model(path)` loads it), for a program what it saved."""
        return self._download(f"/trials/{self.trial_id(trial)}/model", Path(path))

    def download_bundle(self, trial: TrialRef, directory: str | Path) -> Path:
        """The trial's model file (`model.pt`) and its record (`trial.json`: params, config,
        metrics, and the experiment's spec) in `directory`: all it takes to use the model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        detail = self.trial(trial)
        experiment = self.experiment(detail["experiment_id"])
        self.download_model(detail["id"], directory / "model.pt")
        record = {
            "trial": detail,
            "experiment": {key: experiment[key] for key in ("id", "name", "project", "spec")},
        }
        (directory / "trial.json").write_text(json.dumps(record, indent=2) + "\n")
        return directory

    def load_model(self, trial: TrialRef) -> Predictor:
        """The trial's trained model, ready to use: an nn.Module in eval mode that takes raw
        samples and predicts in the dataset's own units and labels (needs torch).

        Raises:
            ValueError: the trial ran a program, whose model file is its own (download_model).
            ApiError: no such trial, or it has no model (pruned or failed trials may not).
        """
        from sweep.models import arrays, bundle, datasets

        detail = self.trial(trial)
        spec = self.experiment(detail["experiment_id"])["spec"]
        if spec.get("program") is not None:
            raise ValueError(
                f"trial {detail['name']} ran a program: its model file is the program's own; "
                "save it with download_model (or sweep download)"
            )
        with tempfile.TemporaryDirectory() as scratch:
            content = bundle.read(self.download_model(detail["id"], Path(scratch) / "model.pt"))
            if bundle.is_bundle(content):
                return bundle.from_content(content)
            # A bare state_dict, stored before models were bundled: rebuilt from the spec.
            uploaded = None
            if "sha256" in spec["dataset"]:
                route = f"/datasets/content/{spec['dataset']['sha256']}"
                npz = self._download(route, Path(scratch) / "dataset.npz")
                uploaded = arrays.from_npz(npz.read_bytes())
        data = datasets.for_spec(spec["dataset"], uploaded)
        return bundle.rebuild(
            spec["model"], detail["config"], spec["dataset"], data.preprocessing(), content
        )

    def _download(self, route: str, path: Path) -> Path:
        """Streamed to `path` (through a temporary file beside it, so an interrupted download
        never leaves a partial file under the name), refused unless its sha256 is right."""
        partial = path.with_name(f".{path.name}.partial")
        digest = hashlib.sha256()
        # Where the store has pre-signed URLs the service redirects there (307), and the
        # bytes come straight from the store, without this client's token.
        with contextlib.ExitStack() as streams:
            try:
                response = streams.enter_context(
                    self.http.stream(
                        "GET", API + route, params={"direct": "true"}, follow_redirects=False
                    )
                )
                expected = response.headers.get("X-Content-SHA256")
                if response.status_code == 307:
                    location = response.headers["Location"]
                    response = streams.enter_context(httpx.stream("GET", location, timeout=300))
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response)
                with open(partial, "wb") as file:
                    for chunk in response.iter_bytes(1 << 20):
                        file.write(chunk)
                        digest.update(chunk)
            except httpx.TransportError as exc:
                partial.unlink(missing_ok=True)
                raise Unreachable(str(self.http.base_url), exc) from exc
        if expected is not None and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise ValueError(f"{route}: the download does not match its sha256 {expected}")
        partial.replace(path)
        return path

    def workers(self, limit: int = 100) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", "/workers", params={"limit": limit}))

    # Datasets

    def upload_dataset(
        self,
        path: str | Path,
        name: str,
        *,
        target: str | None = None,
        task: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """Upload a CSV (`target`: the column to predict) or an NPZ (arrays X and y), by the
        file's suffix; specs of the project then name it as their dataset."""
        path = Path(path)
        file_format = path.suffix.lower().lstrip(".")
        if file_format not in ("csv", "npz"):
            raise ValueError(f"{path}: a .csv or .npz file is needed")
        params = _query(format=file_format, target=target, task=task, project=project)
        response = self._request(
            "PUT", f"/datasets/{name}", params=params, content=path.read_bytes()
        )
        return cast(dict[str, Any], response.json())

    def delete_dataset(self, name: str) -> None:
        """409 while a running or paused experiment uses it."""
        self._request("DELETE", f"/datasets/{name}")

    def datasets(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", "/datasets"))

    # Optuna

    def to_optuna_study(
        self,
        experiment_id: int,
        *,
        storage: str | None = None,
        study_name: str | None = None,
        finished_only: bool = False,
    ) -> optuna.Study:
        """The experiment as an Optuna study, in memory or written to `storage` (any Optuna
        storage URL): every trial with its params and their distributions, values, the
        objective per epoch as intermediate values, and state; Sweep's ids in user_attrs.
        `finished_only` leaves out running trials (a written study should not keep trials
        that never end)."""
        import optuna
        from optuna.distributions import json_to_distribution
        from optuna.trial import FrozenTrial, TrialState

        exported = self._json("GET", f"/experiments/{experiment_id}/study")
        study = optuna.create_study(
            storage=storage,
            study_name=study_name or exported["study_name"],
            directions=exported["directions"],
        )
        study.set_metric_names(exported["metric_names"])
        trials = []
        for t in exported["trials"]:
            state = TrialState[t["state"]]
            finished = state.is_finished()
            if finished_only and not finished:
                continue
            values = t["values"]
            trials.append(
                FrozenTrial(
                    number=t["number"],
                    trial_id=t["number"],
                    state=state,
                    value=None,
                    values=values,
                    datetime_start=_datetime(t["datetime_start"]),
                    datetime_complete=_datetime(t["datetime_complete"]) if finished else None,
                    params=t["params"],
                    distributions={
                        name: json_to_distribution(d) for name, d in t["distributions"].items()
                    },
                    user_attrs=t["user_attrs"],
                    system_attrs={},
                    intermediate_values={int(k): v for k, v in t["intermediate_values"].items()},
                )
            )
        study.add_trials(trials)
        return study

    def import_optuna(
        self, spec: dict[str, Any] | str | Path, *, storage: str, study_name: str
    ) -> Experiment:
        """A new experiment (from `spec`) whose sampler starts from a finished Optuna study:
        its completed and pruned trials become the experiment's first trials, and n_trials
        new ones follow. The study's directions must be the spec's objectives'; a spec
        without a search_space searches the study's parameters over their distributions."""
        import optuna
        from optuna.trial import TrialState

        body = dict(spec if isinstance(spec, dict) else load_spec(spec))
        source = optuna.load_study(study_name=study_name, storage=storage)
        if not body.get("search_space"):
            body["search_space"] = _search_space(source)
        objectives = body.get("objectives") or [body.get("objective") or {}]
        wanted = [str(o.get("direction", "maximize")) for o in objectives]
        found = [d.name.lower() for d in source.directions]
        if found != wanted:
            raise ValueError(f"study {study_name!r} optimizes {found}; the spec {wanted}")
        warm = []
        for trial in source.get_trials(deepcopy=False):
            values = trial.values
            if trial.state == TrialState.PRUNED and values is None and trial.intermediate_values:
                values = [trial.intermediate_values[max(trial.intermediate_values)]]
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and values:
                state = "completed" if trial.state == TrialState.COMPLETE else "pruned"
                warm.append({"params": trial.params, "values": list(values), "state": state})
        return self.submit({**body, "warm_start": warm})


def load_model(source: int | str | Path, client: SweepClient | None = None) -> Predictor:
    """A trained model ready to use (see SweepClient.load_model): by trial id or name ("1/17"),
    from the service (`client`, or one made of SWEEP_SERVER and SWEEP_TOKEN); or offline, from
    a model bundle file `sweep download` saved, or the directory `sweep download --bundle`
    wrote (a path: a Path, or a string that is no trial's name)."""
    if isinstance(source, int) or (isinstance(source, str) and TRIAL_NAME.match(source)):
        if client is not None:
            return client.load_model(source)
        with SweepClient() as own:
            return own.load_model(source)
    from sweep.models import bundle

    path = Path(source)
    return bundle.load(path / "model.pt" if path.is_dir() else path)


def _trial_name(trial: TrialRef) -> tuple[int | None, int]:
    """(experiment, number) of a name EXPERIMENT/NUMBER, or (None, id) of an id."""
    if isinstance(trial, int):
        return None, trial
    if (match := TRIAL_NAME.match(trial.strip())) is None:
        raise ValueError(f"a trial is named EXPERIMENT/NUMBER (1/17) or by its id, not {trial!r}")
    experiment, number = match.groups()
    return (None if experiment is None else int(experiment)), int(number)


def _search_space(study: optuna.Study) -> dict[str, Any]:
    """A spec's search space from the distributions an Optuna study's trials used."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    space: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, d in trial.distributions.items():
            if isinstance(d, CategoricalDistribution):
                space[name] = {"type": "categorical", "choices": list(d.choices)}
            elif isinstance(d, FloatDistribution | IntDistribution):
                kind = "float" if isinstance(d, FloatDistribution) else "int"
                space[name] = {"type": kind, "low": d.low, "high": d.high, "log": d.log}
                if d.step is not None and not (kind == "int" and d.step == 1):
                    space[name]["step"] = d.step
    return space


def finished(experiment: Experiment) -> int:
    """Its trials that have ended, however they ended."""
    c = experiment["counts"]
    return c["completed"] + c["pruned"] + c["failed"] + c["cancelled"]


def _query(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _datetime(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class _ProgressBar:
    """Finished trials of n_trials, with running, pruned and failed counts and the best."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} trials"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        self.progress.start()
        self.task: Any = None

    def show(self, experiment: Experiment) -> None:
        counts = experiment["counts"]
        done = finished(experiment)
        best = experiment["best_value"]
        info = (
            f"running {counts['running']}  pruned {counts['pruned']}  failed {counts['failed']}"
            f"  best {'-' if best is None else f'{best:.4f}'}"
        )
        total = experiment["n_trials"]
        if self.task is None:
            self.task = self.progress.add_task(experiment["name"], total=total, info="")
        self.progress.update(self.task, total=total, completed=done, info=info)

    def close(self) -> None:
        self.progress.stop()
