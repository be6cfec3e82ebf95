"""A Sweep experiment exported to MLflow (`sweep export EXP --to mlflow:TRACKING_URI`).

What it writes: one MLflow experiment per Sweep experiment, named NAME-ID as the Optuna export
names its study. In it, one parent run for the Sweep experiment (run name NAME: its state,
objectives, model, sampler and pruner as tags, its fixed values as params, its spec as
spec.json, its best value as the metric best_value), and nested under it (`mlflow.parentRunId`)
one run per ended trial (run name trial-NUMBER): the trial's resolved config as params (and
whole, as config.json), every metric it reported with step = epoch, its value as sweep.value,
its id, number, state and failure as tags, its model file (and a program's outputs) as
artifacts, and its state as the run's status: completed FINISHED, pruned KILLED, failed FAILED.
Cancelled trials that had started are exported too, KILLED; trials that never ran are not.

Exporting again adds what is new and duplicates nothing: the parent is found by its tag
sweep.experiment_id, a trial whose run (tag sweep.trial_id) has ended is skipped, and a run left
RUNNING by an export that was cut off is deleted and logged again. The parent's tags and best
value are brought up to date, and it ends (FINISHED, KILLED or FAILED) once the experiment has;
until then it stays RUNNING. So a running experiment can be exported now, and again later for
the trials that have finished since.

MLflow params are strings, of at most 500 characters on older tracking servers: a longer value
is cut (ending in "..."), the names of those cut are in the tag sweep.truncated_params, and
config.json keeps every value whole.

mlflow (or mlflow-skinny) is an optional extra, imported when an export starts. It is spoken to
through an MlflowClient of the export's own: no global tracking URI, no active run, no
autologging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from sweep.client import ApiError, Experiment, SweepClient, Trial, TrialDetail

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param, Run, RunTag
    from mlflow.tracking import MlflowClient

INSTALL_HINT = "pip install 'sweep[mlflow]'"
EXPERIMENT_TAG = "sweep.experiment_id"  # the parent run's
TRIAL_TAG = "sweep.trial_id"  # a trial's run
PARENT_TAG = "mlflow.parentRunId"  # what MLflow nests runs by

# The lowest limits of the MLflow versions a tracking server may run (newer ones allow more).
PARAM_LENGTH = 500
TAG_LENGTH = 5000
# What one log_batch call may carry.
METRICS_PER_CALL = 1000
PARAMS_PER_CALL = 100  # and tags

RUN_STATUS = {
    "completed": "FINISHED",
    "pruned": "KILLED",
    "cancelled": "KILLED",
    "failed": "FAILED",
}
# A running or paused experiment's parent run stays RUNNING.
EXPERIMENT_STATUS = {"completed": "FINISHED", "cancelled": "KILLED", "failed": "FAILED"}


class ExportError(RuntimeError):
    """The export could not be done: mlflow is missing, or the tracking store refused."""


@dataclass(frozen=True)
class Exported:
    tracking_uri: str
    experiment_name: str  # MLflow's experiment: NAME-ID
    experiment_id: str  # MLflow's id of it
    parent_run_id: str
    logged: int  # trial runs logged by this export
    skipped: int  # trials whose runs an earlier export had logged


def export(
    client: SweepClient,
    experiment_id: int,
    tracking_uri: str,
    *,
    artifact_location: str | None = None,
) -> Exported:
    """Log the experiment's ended trials to MLflow at `tracking_uri` (sqlite:///mlflow.db,
    http://host:5000, ...); `artifact_location` is where a new MLflow experiment keeps its
    artifacts (MLflow's default otherwise: ./mlruns beside a local database).

    Raises:
        ExportError: mlflow is not installed, or the tracking store refused a call.
        ApiError: the Sweep server refused (no such experiment, say).
    """
    with _quiet_warnings():
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ExportError(f"exporting to MLflow needs mlflow ({exc}): {INSTALL_HINT}") from exc
        with _quiet_logging():
            try:
                tracking = MlflowClient(tracking_uri=tracking_uri)
                return _export(client, tracking, experiment_id, tracking_uri, artifact_location)
            except MlflowException as exc:
                raise ExportError(f"MLflow at {tracking_uri}: {exc.message}") from exc


def _export(
    client: SweepClient,
    tracking: MlflowClient,
    experiment_id: int,
    tracking_uri: str,
    artifact_location: str | None,
) -> Exported:
    experiment = client.experiment(experiment_id)
    name = f"{experiment['name']}-{experiment['id']}"
    mlflow_id = _mlflow_experiment(tracking, name, artifact_location)
    parent = _parent_run(tracking, mlflow_id, experiment)
    done = _logged_trials(tracking, mlflow_id, parent)
    ended = [t for t in client.all_trials(experiment_id) if _exportable(t)]
    new = [t for t in ended if t["id"] not in done]
    for trial in new:
        _log_trial(client, tracking, mlflow_id, parent, client.trial(trial["id"]))
    _update_parent(tracking, parent, experiment, len(ended))
    return Exported(tracking_uri, name, mlflow_id, parent, len(new), len(ended) - len(new))


def _exportable(trial: Trial) -> bool:
    """Ended, and not a cancelled trial that never ran (it has nothing to show)."""
    if trial["state"] == "cancelled":
        return trial["started_at"] is not None
    return trial["state"] in RUN_STATUS


# -------------------------------------------------------------------------------------------
# The experiment and its parent run


def _mlflow_experiment(tracking: MlflowClient, name: str, artifact_location: str | None) -> str:
    found = tracking.get_experiment_by_name(name)
    if found is None:
        return tracking.create_experiment(name, artifact_location=artifact_location)
    if found.lifecycle_stage == "deleted":
        raise ExportError(
            f"the MLflow experiment {name} is deleted: restore it, or purge it "
            "(mlflow gc), to export into it again"
        )
    return str(found.experiment_id)


def _parent_run(tracking: MlflowClient, mlflow_id: str, experiment: Experiment) -> str:
    """The parent run of an earlier export, else a new one."""
    query = f"tags.`{EXPERIMENT_TAG}` = '{experiment['id']}'"
    earlier = next(_runs(tracking, mlflow_id, query), None)
    if earlier is not None:
        return str(earlier.info.run_id)
    run = tracking.create_run(
        mlflow_id,
        start_time=_ms(experiment["created_at"]),
        tags={EXPERIMENT_TAG: str(experiment["id"])},
        run_name=experiment["name"],
    )
    return str(run.info.run_id)


def _update_parent(
    tracking: MlflowClient, run_id: str, experiment: Experiment, n_ended: int
) -> None:
    """Brought up to date with the experiment (params again: logging the same value twice is
    allowed, and the spec's fixed values never change)."""
    from mlflow.entities import Metric, RunTag

    params, cut = _params(experiment["spec"].get("fixed", {}))
    metrics = []
    if experiment["best_value"] is not None:
        # One point per export, at the number of ended trials: the best value's progress.
        metrics.append(Metric("best_value", experiment["best_value"], _now(), n_ended))
    tags = [RunTag(key, value) for key, value in _experiment_tags(experiment, cut).items()]
    _log_batch(tracking, run_id, params=params, metrics=metrics, tags=tags)
    tracking.log_dict(run_id, dict(experiment["spec"]), "spec.json")
    status = EXPERIMENT_STATUS.get(experiment["state"])
    if status is not None:
        tracking.set_terminated(run_id, status, end_time=_ms(experiment["finished_at"]))


def _experiment_tags(experiment: Experiment, cut: list[str]) -> dict[str, str]:
    spec = experiment["spec"]
    objectives = spec.get("objectives") or [spec.get("objective")]
    tags = {
        "sweep.state": experiment["state"],
        "sweep.project": experiment["project"],
        "sweep.objectives": ", ".join(
            f"{o['metric']} {o['direction']}" for o in objectives if o is not None
        ),
        "sweep.program": spec.get("program") or "",
        "sweep.model": spec.get("model") or "",
        "sweep.dataset": _named(spec.get("dataset")),
        "sweep.sampler": _named(spec.get("sampler")),
        "sweep.pruner": _named(spec.get("pruner")),
        "sweep.n_trials": str(experiment["n_trials"]),
        "sweep.best_trial_id": str(experiment["best_trial_id"]),
        "sweep.stop_reason": experiment["stop_reason"] or "",
        "sweep.truncated_params": ",".join(cut),
    }
    return {key: _cut(value, TAG_LENGTH) for key, value in tags.items() if value}


def _named(part: Any) -> str:
    """A spec part's name: `part` itself, or its "name" key; "" for none."""
    name = part.get("name") if isinstance(part, dict) else part
    return "" if name is None else str(name)


# -------------------------------------------------------------------------------------------
# Trials


def _logged_trials(tracking: MlflowClient, mlflow_id: str, parent: str) -> set[int]:
    """The trials an earlier export logged whole; a run it left RUNNING was cut off midway,
    and is deleted to be logged again."""
    done = set()
    for run in _runs(tracking, mlflow_id, f"tags.`{PARENT_TAG}` = '{parent}'"):
        trial_id = run.data.tags.get(TRIAL_TAG)
        if trial_id is None:  # nested under the parent by someone else
            continue
        if run.info.status == "RUNNING":
            tracking.delete_run(run.info.run_id)
        else:
            done.add(int(trial_id))
    return done


def _log_trial(
    client: SweepClient,
    tracking: MlflowClient,
    mlflow_id: str,
    parent: str,
    trial: TrialDetail,
) -> None:
    """One child run, ended only once all of it is logged (so an export cut off midway leaves a
    RUNNING run, which the next one redoes)."""
    params, cut = _params(trial["config"])
    tags = {
        PARENT_TAG: parent,
        TRIAL_TAG: str(trial["id"]),
        "sweep.trial_number": str(trial["number"]),
        "sweep.state": trial["state"],
        "sweep.attempt": str(trial["attempt"]),
        "sweep.failure_reason": trial["failure_reason"] or "",
        "sweep.failure_message": trial["failure_message"] or "",
        "sweep.truncated_params": ",".join(cut),
    }
    run = tracking.create_run(
        mlflow_id,
        start_time=_ms(trial["started_at"] or trial["created_at"]),
        tags={key: _cut(value, TAG_LENGTH) for key, value in tags.items() if value},
        run_name=f"trial-{trial['number']}",
    )
    run_id = run.info.run_id
    _log_batch(tracking, run_id, params=params, metrics=_metrics(trial))
    tracking.log_dict(run_id, dict(trial["config"]), "config.json")
    _log_files(client, tracking, run_id, trial)
    tracking.set_terminated(run_id, RUN_STATUS[trial["state"]], end_time=_ms(trial["finished_at"]))


def _metrics(trial: TrialDetail) -> list[Metric]:
    """Each reported value at step = its epoch, and the trial's value (the first objective's,
    at the epoch it comes from)."""
    from mlflow.entities import Metric

    metrics = [
        Metric(_key(name), float(value), _ms(report["created_at"]), report["epoch"])
        for report in trial["metrics"]
        for name, value in report["values"].items()
        if value is not None
    ]
    if trial["value"] is not None:
        step = trial["best_epoch"] or trial["last_epoch"]
        ended = _ms(trial["finished_at"]) or _now()
        metrics.append(Metric("sweep.value", trial["value"], ended, step))
    return metrics


def _log_files(
    client: SweepClient, tracking: MlflowClient, run_id: str, trial: TrialDetail
) -> None:
    """The trial's model file and a program's outputs, those the server has."""
    files = [
        ("model.pt", trial["has_weights"], client.download_model),
        ("outputs.tar.gz", trial["has_outputs"], client.download_outputs),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for name, present, download in files:
            if not present:
                continue
            try:
                path = download(trial["id"], Path(scratch) / name)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue  # deleted since (the experiment keeps only its best models, say)
            tracking.log_artifact(run_id, str(path))


# -------------------------------------------------------------------------------------------
# MLflow's rules


def _params(values: dict[str, Any]) -> tuple[list[Param], list[str]]:
    """Params as MLflow takes them, strings of at most PARAM_LENGTH; and the names of those
    cut to fit."""
    from mlflow.entities import Param

    params, cut = [], []
    for name, value in values.items():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        if len(text) > PARAM_LENGTH:
            cut.append(name)
        params.append(Param(_key(name), _cut(text, PARAM_LENGTH)))
    return params, cut


def _key(name: str) -> str:
    """A name as MLflow accepts keys: word characters, / . - : and spaces."""
    return re.sub(r"[^\w/.\- :]", "_", name)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _log_batch(
    tracking: MlflowClient,
    run_id: str,
    *,
    params: Sequence[Param] = (),
    metrics: Sequence[Metric] = (),
    tags: Sequence[RunTag] = (),
) -> None:
    """In calls within MLflow's limits on one batch."""
    for start in range(0, len(params), PARAMS_PER_CALL):
        tracking.log_batch(run_id, params=params[start : start + PARAMS_PER_CALL])
    for start in range(0, len(tags), PARAMS_PER_CALL):
        tracking.log_batch(run_id, tags=tags[start : start + PARAMS_PER_CALL])
    for start in range(0, len(metrics), METRICS_PER_CALL):
        tracking.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_CALL])


def _runs(tracking: MlflowClient, mlflow_id: str, query: str) -> Iterator[Run]:
    """The experiment's active runs that match `query`, oldest first, a page at a time."""
    token = None
    while True:
        page = tracking.search_runs(
            [mlflow_id],
            query,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


@overload
def _ms(text: str) -> int: ...
@overload
def _ms(text: str | None) -> int | None: ...
def _ms(text: str | None) -> int | None:
    """A time the server sent (ISO 8601, UTC) in milliseconds since the epoch, as MLflow's."""
    return None if text is None else int(datetime.fromisoformat(text).timestamp() * 1000)


def _now() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """Without the warnings MLflow's own code raises that concern none of the export (the
    deprecations of the SQLAlchemy it is run with, say); errors pass as they are."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"mlflow(\.|$)")
        yield


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """MLflow's INFO lines (creating its database tables, say) held back while the export
    runs, unless the user chose a level (MLFLOW_LOGGING_LEVEL)."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
