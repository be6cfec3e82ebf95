"""Everything that happens to an attempt: a claim starts one, heartbeats and reports keep its
lease, checkpoints and weights are stored for it, and it ends completed, failed, released, or
expired when its worker went silent.

A claimed trial runs as an attempt with a random token and a lease. Every call about the
trial carries the token; a newer attempt makes older tokens stale (fencing): they get 409 and
change nothing. Heartbeats and reports renew the lease (`lease_until`). A lease that runs
out puts the trial back in the queue as the same trial (same id, number and params), to be
claimed again as attempt + 1, until the experiment's max_retries is spent and it fails as
"lost". A worker that is shut down releases its trial at once, which does not count as a
retry. How trials and experiments then end is sweep.service.lifecycle's.

Lock order, as everywhere: trial rows before their experiment's row; where a claim holds an
experiment and needs a trial it only takes rows no one else holds (SKIP LOCKED).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Float,
    Label,
    Select,
    String,
    Table,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from sweep.service import artifacts, lifecycle, rows, specs, trials, workers
from sweep.service.artifacts import Kind
from sweep.service.auth import Caller
from sweep.service.db import Database, after_commit
from sweep.service.errors import Conflict, InvalidSpec, NotFound
from sweep.service.schemas import (
    Assignment,
    CompleteIn,
    FailIn,
    HeartbeatOut,
    ReleaseIn,
    ReportIn,
    ReportOut,
    Score,
    TrialRead,
)
from sweep.service.search import Optimizer
from sweep.service.search.pruners import cannot_prune_yet
from sweep.service.states import ENDED_EXPERIMENT_STATES, ExperimentState, TrialState
from sweep.service.store import Stored
from sweep.service.tables import Artifact, Experiment, Trial, TrialMetric, Worker, utcnow

# Heartbeats per lease: a worker that misses a few still keeps its trial.
HEARTBEATS_PER_LEASE = 4


def lease_until(lease_seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=lease_seconds)


def extend_lease(trial: Trial, lease_seconds: float) -> None:
    """A full lease from now: a claim, a heartbeat or a report heard from the worker."""
    trial.lease_expires_at = lease_until(lease_seconds)


def attempt(session: Session, trial_id: int, token: str) -> Trial:
    """The trial, locked, if `token` is its current attempt's; Conflict when it is stale."""
    trial = rows.lock_trial(session, trial_id)
    if trial.token != token:
        raise Conflict(f"trial {trial_id}: this attempt was superseded (stale token)")
    return trial


def running_attempt(session: Session, trial_id: int, token: str) -> Trial:
    trial = attempt(session, trial_id, token)
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    return trial


# --- claims --------------------------------------------------------------------------------


def claim_possible(
    session: Session,
    *,
    worker_id: int,
    experiment_id: int | None = None,
    project: str | None = None,
) -> bool:
    """Read-only look-ahead: whether `claim` would hand this worker a trial now.

    Lets idle workers poll without taking the database's write lock (SQLite) or row locks.
    Raises what `claim` would: NotFound for an unknown worker or experiment, Conflict for a
    cancelled experiment.
    """
    worker = _check_claimant(session, worker_id, experiment_id, project)
    if session.scalars(select(Trial.id).where(_holds(worker_id)).limit(1)).first() is not None:
        return True
    claimable, params = _claimable(worker, experiment_id, project)
    return session.scalars(claimable.ids, params).first() is not None


def try_claim(
    db: Database,
    optimizer: Optimizer,
    *,
    worker_id: int,
    experiment_id: int | None,
    project: str | None,
    lease_seconds: float,
    look_first: bool,
    finishing: Sequence[int] = (),
) -> Assignment | None:
    """One claim attempt in its own transaction. With `look_first`, a read-only look comes
    first, so workers polling an idle service never take the write lock (a worker's trial
    named in `finishing` is still held until the claim's transaction)."""
    if look_first:
        with db.transaction(write=False) as session:
            if not claim_possible(
                session, worker_id=worker_id, experiment_id=experiment_id, project=project
            ):
                return None
    with db.transaction() as session:
        return claim(
            session,
            optimizer=optimizer,
            worker_id=worker_id,
            experiment_id=experiment_id,
            project=project,
            lease_seconds=lease_seconds,
            finishing=finishing,
        )


def claim(
    session: Session,
    *,
    optimizer: Optimizer,
    worker_id: int,
    lease_seconds: float,
    experiment_id: int | None = None,
    project: str | None = None,
    finishing: Sequence[int] = (),
) -> Assignment | None:
    """Start the next trial for a worker, or None when nothing may start now.

    The worker's running trials named in `finishing` have ended their training: the worker
    sends their models and results while it runs the next one, and they hold no slot from
    now on (Trial.trained_at). A worker that holds another running trial (its last claim's
    answer was lost) gets that attempt back. Otherwise the oldest running experiment with work
    and a free slot is locked; a queued trial of it is served first, else its sampler is asked
    for a new one. All in this one transaction: exactly n_trials trials are ever created and
    never more than max_concurrent train at once.
    """
    worker = _check_claimant(session, worker_id, experiment_id, project)
    if finishing:
        session.execute(
            _TRAINED, {"b_worker_id": worker_id, "b_ids": list(finishing), "b_now": utcnow()}
        )
    held_id = session.execute(_SEEN, {"b_worker_id": worker_id, "b_now": utcnow()}).scalar_one()
    if held_id is not None:
        held = rows.trial(session, held_id)
        owner = rows.experiment(session, held.experiment_id)
        resume = _checkpoint_epoch(session, held)
        bar = artifacts.model_bar(session, owner)
        early = optimizer.suggests_ahead(owner.trial_count)
        return _assignment(session, owner, held, lease_seconds, resume, bar, early)
    experiment = _lock_claimable(session, worker, experiment_id, project)
    if experiment is None:
        return None
    started = _start(session, optimizer, experiment, [worker_id], lease_seconds)
    return started[0][1] if started else None


def claim_waiting(
    session: Session,
    *,
    optimizer: Optimizer,
    experiment_id: int,
    worker_ids: list[int],
    lease_seconds: float,
) -> dict[int, Assignment]:
    """Start trials of one experiment for workers waiting on claims (sweep.service.claims
    chose them: they may run it), in the order given, as far as its free slots and work go.

    One transaction for them all: the experiment's row is locked once and the sampler asked
    for the new trials together. A worker found already holding a running trial is left out
    (a claim of its own, answered meanwhile, gave it one).
    """
    # Workers' rows before the experiment's: the order every claim takes its locks in.
    session.execute(update(Worker).where(Worker.id.in_(worker_ids)).values(last_seen_at=utcnow()))
    experiment = rows.lock_experiment(session, experiment_id)
    if experiment.state != ExperimentState.RUNNING:
        return {}
    holding = set(
        session.scalars(
            select(Trial.worker_id).where(Trial.worker_id.in_(worker_ids), rows.TRAINING)
        )
    )
    free = experiment.max_concurrent - rows.count_training(session, experiment.id)
    takers = [w for w in worker_ids if w not in holding][: max(free, 0)]
    if not takers:
        return {}
    return dict(_start(session, optimizer, experiment, takers, lease_seconds))


def _start(
    session: Session,
    optimizer: Optimizer,
    experiment: Experiment,
    worker_ids: list[int],
    lease_seconds: float,
) -> list[tuple[int, Assignment]]:
    """Start the next trials of a locked experiment, one for each of `worker_ids` (each has
    a free slot): queued trials are served first, then the sampler is asked for new ones
    together. As many as there is work for, in the order of `worker_ids`; exactly n_trials
    trials are ever created. A search space that runs out shrinks the budget to the trials
    there are (the experiment completes when they finish)."""
    starting: list[tuple[Trial, int]] = []  # with the epoch each resumes after
    while len(starting) < len(worker_ids):
        queued = _next_queued(session, experiment.id)
        if queued is None:
            break  # none left, or only ones someone holds for a moment
        if queued.number is None:
            _start_enqueued(session, optimizer, experiment, queued)
            starting.append((queued, 0))
        else:
            starting.append((queued, _restart(session, optimizer, queued)))
    wanted = min(len(worker_ids) - len(starting), experiment.n_trials - experiment.trial_count)
    if wanted > 0:
        suggestions, exhausted = optimizer.ask_many(
            session, experiment, experiment.trial_count, wanted
        )
        starting += [(trials.create(session, experiment, s), 0) for s in suggestions]
        if exhausted:
            lifecycle.exhaust(session, experiment)
    for worker_id, (trial, _) in zip(worker_ids, starting, strict=False):
        trial.worker_id = worker_id
        trial.token = secrets.token_hex(16)
        trial.started_at = utcnow()
        extend_lease(trial, lease_seconds)
    session.flush()
    bar = artifacts.model_bar(session, experiment)  # the same for every trial started here
    early = optimizer.suggests_ahead(experiment.trial_count)
    return [
        (worker_id, _assignment(session, experiment, trial, lease_seconds, resume, bar, early))
        for worker_id, (trial, resume) in zip(worker_ids, starting, strict=False)
    ]


def _start_enqueued(
    session: Session, optimizer: Optimizer, experiment: Experiment, trial: Trial
) -> None:
    """First start of an enqueued trial: it takes the next number, and the sampler fills in
    the params it was not given."""
    suggestion = optimizer.ask(session, experiment, experiment.trial_count, fixed=trial.params)
    assert suggestion is not None  # given params are never "exhausted"
    lifecycle.move(trial, TrialState.RUNNING)
    trial.number = experiment.trial_count
    trial.params = suggestion.params
    trial.system_attrs = suggestion.system_attrs
    trial.attempt = 1
    experiment.trial_count += 1


def _next_queued(session: Session, experiment_id: int) -> Trial | None:
    """Trials to retry first (oldest number first), then enqueued ones in the order given."""
    return session.scalars(_NEXT_QUEUED, {"b_experiment_id": experiment_id}).first()


_NEXT_QUEUED = (
    select(Trial)
    .where(Trial.experiment_id == bindparam("b_experiment_id"), Trial.state == TrialState.QUEUED)
    .order_by(Trial.number.nulls_last(), Trial.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)


def _restart(session: Session, optimizer: Optimizer, trial: Trial) -> int:
    """Start a queued trial's next attempt where its last checkpoint left it (or from the
    first epoch): the curve past that epoch goes, and so does the in-memory study that saw
    it. Returns the epoch to resume after."""
    lifecycle.move(trial, TrialState.RUNNING)
    resume = _checkpoint_epoch(session, trial)
    trial.attempt += 1
    trial.trained_at = None
    trial.failure_reason = trial.failure_message = None
    trial.last_epoch = trial.resumed_from = resume
    trial.last_objective = session.scalar(
        select(TrialMetric.objective).where(
            TrialMetric.trial_id == trial.id, TrialMetric.epoch == resume
        )
    )
    session.execute(
        delete(TrialMetric).where(TrialMetric.trial_id == trial.id, TrialMetric.epoch > resume)
    )
    artifacts.discard(session, [trial.id], "weights", "outputs")
    experiment_id = trial.experiment_id
    after_commit(session, lambda: optimizer.forget(experiment_id))
    return resume


def _checkpoint_epoch(session: Session, trial: Trial) -> int:
    checkpoint = artifacts.of_trial(session, trial.id, "checkpoint")
    return (checkpoint.epoch or 0) if checkpoint is not None else 0


_WORKER = select(Worker).where(Worker.id == bindparam("b_id"))
_TARGET = select(Experiment.project, Experiment.state).where(Experiment.id == bindparam("b_id"))


def _check_claimant(
    session: Session, worker_id: int, experiment_id: int | None, project: str | None
) -> Worker:
    worker = session.scalars(_WORKER, {"b_id": worker_id}).first()
    if worker is None or (project is not None and worker.project != project):
        raise NotFound(f"worker {worker_id} not found")
    if experiment_id is not None:
        # Only its project and state: the claim locks the experiment next, if it may start.
        target = session.execute(_TARGET, {"b_id": experiment_id}).first()
        if target is None or (project is not None and target.project != project):
            raise NotFound(f"experiment {experiment_id} not found")
        if target.state == ExperimentState.CANCELLED:
            raise Conflict(f"experiment {experiment_id} is cancelled")
    return worker


def _holds(worker_id: int) -> ColumnElement[bool]:
    """A running trial of this worker's, still training."""
    return and_(Trial.worker_id == worker_id, rows.TRAINING)


class _Claimable(NamedTuple):
    """The statements that find a claimable experiment, for one set of filters."""

    any: Select[Experiment]
    ids: Select[int]  # the read-only look
    free: Select[Experiment]  # its row locked, skipping rows other claims hold
    queued: Select[Experiment]  # its row locked, waiting for it


@functools.cache
def _claimable_statements(
    by_experiment: bool, by_project: bool, by_worker_project: bool
) -> _Claimable:
    """Running experiments with work left (budget or a queued trial) and a free slot, whose
    requirements the worker meets (as service.workers.cannot_run says); built once for each
    set of filters, the worker's properties bound (see `_claimable`)."""
    training = (
        select(func.count())
        .where(Trial.experiment_id == Experiment.id, rows.TRAINING)
        .scalar_subquery()
    )
    queued = exists().where(Trial.experiment_id == Experiment.id, Trial.state == TrialState.QUEUED)

    def within(column: InstrumentedAttribute[str | None], name: str) -> ColumnElement[bool]:
        return column.is_(None) | column.in_(bindparam(name, expanding=True))

    query = (
        select(Experiment)
        .where(
            Experiment.state == ExperimentState.RUNNING,
            (Experiment.trial_count < Experiment.n_trials) | queued,
            training < Experiment.max_concurrent,
            Experiment.needs_device.is_(None) | (Experiment.needs_device == bindparam("b_device")),
            Experiment.needs_memory_gb.is_(None)
            | (Experiment.needs_memory_gb <= bindparam("b_memory")),
            within(Experiment.needs_model, "b_models"),
            within(Experiment.needs_dataset, "b_datasets"),
            within(Experiment.needs_program, "b_programs"),
            Experiment.needs_gpus.is_(None) | (Experiment.needs_gpus <= bindparam("b_gpus")),
        )
        .order_by(Experiment.id)
        .limit(1)
    )
    if by_experiment:
        query = query.where(Experiment.id == bindparam("b_experiment_id"))
    if by_project:
        query = query.where(Experiment.project == bindparam("b_project"))
    if by_worker_project:  # registered for one project: only its trials
        query = query.where(Experiment.project == bindparam("b_worker_project"))
    loaded = query.execution_options(populate_existing=True)
    return _Claimable(
        any=query,
        ids=query.with_only_columns(Experiment.id),
        free=loaded.with_for_update(skip_locked=True, key_share=True, of=Experiment),
        queued=loaded.with_for_update(key_share=True, of=Experiment),
    )


def _claimable(
    worker: Worker, experiment_id: int | None, project: str | None
) -> tuple[_Claimable, dict[str, Any]]:
    """The statements finding an experiment this worker may claim now (of `experiment_id`,
    of `project`, when given), and their parameters."""
    statements = _claimable_statements(
        experiment_id is not None, project is not None, worker.project is not None
    )
    return statements, {
        "b_device": workers.device_kind(worker),
        "b_memory": worker.device_memory_gb or 0,
        "b_models": list(worker.models),
        "b_datasets": list(worker.datasets),
        "b_programs": list(worker.programs),
        "b_gpus": worker.gpus,
        "b_experiment_id": experiment_id,
        "b_project": project,
        "b_worker_project": worker.project,
    }


def _lock_claimable(
    session: Session, worker: Worker, experiment_id: int | None, project: str | None
) -> Experiment | None:
    """The claimable experiment, its row locked. One no other claim holds is taken at once;
    when every one with work is held (claims racing for the same experiment), the claim
    queues for the first rather than going away empty-handed."""
    claimable, params = _claimable(worker, experiment_id, project)
    experiment = session.scalars(claimable.free, params).one_or_none()
    if experiment is None and session.scalars(claimable.any, params).first():
        experiment = session.scalars(claimable.queued, params).one_or_none()
    # Counted again now that the row is ours: the subquery above may have read an older snapshot.
    if (
        experiment is None
        or rows.count_training(session, experiment.id) >= experiment.max_concurrent
    ):
        return None
    return experiment


def _assignment(
    session: Session,
    experiment: Experiment,
    trial: Trial,
    lease_seconds: float,
    resume_epoch: int,
    bar: tuple[bool, float | None],
    claim_before_end: bool,
) -> Assignment:
    """`bar`: artifacts.model_bar of the experiment (read once for all the trials a
    transaction starts)."""
    spec = experiment.spec
    assert trial.token is not None and trial.number is not None
    send_model, model_bar = bar
    return Assignment(
        trial_id=trial.id,
        experiment_id=experiment.id,
        number=trial.number,
        attempt=trial.attempt,
        token=trial.token,
        lease_seconds=lease_seconds,
        heartbeat_seconds=lease_seconds / HEARTBEATS_PER_LEASE,
        resume_epoch=resume_epoch,
        program=spec.get("program"),
        model=spec.get("model"),
        dataset=spec.get("dataset"),
        objective=spec["objective"],
        objectives=specs.objectives(spec),
        params=trial.params,
        config=trials.config(spec, trial),
        processes=_processes(spec),
        trial_timeout_s=spec["budget"].get("trial_timeout_s"),
        resumed_scores=_resumed_scores(session, experiment, trial, resume_epoch),
        send_model=send_model,
        model_bar=model_bar,
        claim_before_end=claim_before_end,
    )


def _processes(spec: dict[str, Any]) -> int:
    """A program's processes per trial: as the spec says, else one per GPU it needs."""
    resources = spec["requirements"].get("resources") or {}
    return int(resources.get("processes") or resources.get("gpus") or 1)


def _resumed_scores(
    session: Session, experiment: Experiment, trial: Trial, resume_epoch: int
) -> list[Score]:
    """For a program's resumed attempt: the objectives at each epoch kept from earlier
    attempts (the built-in trainer keeps its own in its checkpoint)."""
    if resume_epoch == 0 or experiment.needs_program is None:
        return []
    names = [o["metric"] for o in specs.objectives(experiment.spec)]
    kept = session.execute(
        select(TrialMetric.epoch, TrialMetric.values)
        .where(TrialMetric.trial_id == trial.id, TrialMetric.epoch <= resume_epoch)
        .order_by(TrialMetric.epoch)
    )
    return [
        Score(epoch=epoch, values=[float(values[name]) for name in names])
        for epoch, values in kept
        if all(values.get(name) is not None for name in names)
    ]


# --- what the worker tells about its attempt ---------------------------------------------


def report(
    session: Session,
    *,
    optimizer: Optimizer,
    trial_id: int,
    token: str,
    body: ReportIn,
    lease_seconds: float,
    project: str | None = None,
) -> ReportOut:
    """Record one epoch's metrics, extend the lease, and answer whether the trial goes on.

    A repeated report of an epoch already recorded changes nothing and gets the same answer,
    even when that answer ended the trial. The trial stops when the pruner says so or when
    its experiment has ended.

    The usual report (the running attempt's next epoch) is recorded by one UPDATE that also
    checks the attempt, takes the trial's row lock and reads what the report needs of the
    experiment, and one INSERT; the experiment is loaded whole only for the pruner, and the
    trial only when it ends here. A caller of one `project` gets NotFound for another's trial.
    """
    check_visible(session, trial_id, project)
    metrics = list(body.metrics.items())
    recorded = session.execute(
        _report_update(len(metrics)),
        {
            "b_trial_id": trial_id,
            "b_token": token,
            "b_epoch": body.epoch,
            "b_lease": lease_until(lease_seconds),
            **{f"b_metric_{i}": name for i, (name, _) in enumerate(metrics)},
            **{f"b_value_{i}": value for i, (_, value) in enumerate(metrics)},
        },
    ).one_or_none()
    if recorded is None:
        return _not_recorded(session, trial_id, token, body.epoch)
    spec, state = recorded.experiment_spec, recorded.experiment_state
    program = recorded.experiment_needs_program is not None
    for wanted in specs.objectives(spec):
        # The built-in trainer reports every metric each epoch; a program reports what it has.
        if wanted["metric"] not in body.metrics and not program:
            raise InvalidSpec(
                f"the report lacks the objective metric {wanted['metric']!r}",
                field=f"metrics.{wanted['metric']}",
            )
    objective = body.metrics.get(recorded.experiment_metric)
    session.execute(
        _RECORD_METRICS,
        {"trial_id": trial_id, "epoch": body.epoch, "objective": objective, "values": body.metrics},
    )
    if state in ENDED_EXPERIMENT_STATES:
        why = f"experiment {state}"
        trial = rows.trial(session, trial_id)
        lifecycle.finish(session, trial, TrialState.CANCELLED, reason="cancelled", message=why)
        return ReportOut(action="stop", reason=why)
    if _overdue(spec, recorded.started_at) is not None:
        experiment = rows.experiment(session, recorded.experiment_id)
        overdue = _timed_out(session, rows.trial(session, trial_id), experiment)
        return ReportOut(action="stop", reason=overdue)
    if objective is None or cannot_prune_yet(
        spec["pruner"], body.epoch, recorded.experiment_finish_seq
    ):
        return ReportOut(action="continue")
    experiment = rows.experiment(session, recorded.experiment_id)
    prune, attrs = optimizer.should_prune(
        session, experiment, recorded.number, recorded.system_attrs, _curve(session, trial_id)
    )
    if attrs is not None:
        session.execute(update(Trial).where(Trial.id == trial_id).values(system_attrs=attrs))
    if prune:
        trial = rows.trial(session, trial_id)
        lifecycle.finish(session, trial, TrialState.PRUNED, value=objective)
        return ReportOut(action="prune", reason=f"pruned at epoch {body.epoch}")
    return ReportOut(action="continue")


def check_visible(session: Session, trial_id: int, project: str | None) -> None:
    """NotFound when a caller of one `project` names another's trial. A caller of every
    project is not looked up: the call itself finds the trial, NotFound if it is not."""
    if project is not None and rows.project_of_trial(session, trial_id) != project:
        raise NotFound(f"trial {trial_id} not found")


def _not_recorded(session: Session, trial_id: int, token: str, epoch: int) -> ReportOut:
    """The answer to a report that is not the running attempt's next epoch: the answer it
    got the first time when it repeats one, else NotFound or Conflict saying why."""
    trial = attempt(session, trial_id, token)
    again = _answer_again(trial, epoch)
    if again is not None:
        return again
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    raise Conflict(f"trial {trial_id} expects epoch {trial.last_epoch + 1}, got {epoch}")


def _answer_again(trial: Trial, epoch: int) -> ReportOut | None:
    """The answer an already recorded epoch got the first time, or None for a new epoch."""
    if epoch > trial.last_epoch:
        return None
    if epoch == trial.last_epoch and trial.state == TrialState.PRUNED:
        return ReportOut(action="prune", reason=f"pruned at epoch {epoch}")
    if epoch == trial.last_epoch and trial.state == TrialState.CANCELLED:
        return ReportOut(action="stop", reason=trial.failure_message)
    if trial.state != TrialState.RUNNING:
        return None  # the trial ended later, some other way: a conflict, as for any report
    return ReportOut(action="continue")


def _curve(session: Session, trial_id: int) -> dict[int, float]:
    rows = session.execute(
        select(TrialMetric.epoch, TrialMetric.objective).where(TrialMetric.trial_id == trial_id)
    )
    return {epoch: value for epoch, value in rows if value is not None}


def uploading(
    session: Session, caller: Caller, trial_id: int, token: str, kind: Kind, epoch: int | None
) -> Trial:
    """Before an upload's bytes are read: the caller sees the trial, the attempt still runs,
    and a checkpoint's epoch has been reported. A caller of every project is not looked up:
    the attempt's check reads the trial, 404 if it is not."""
    if caller.project is not None and rows.project_of_trial(session, trial_id) != caller.project:
        raise NotFound(f"trial {trial_id} not found")
    trial = running_attempt(session, trial_id, token)
    if kind == "checkpoint":
        _check_checkpoint_epoch(trial, epoch or 0)
    return trial


def store_artifact(
    session: Session,
    *,
    trial_id: int,
    token: str,
    kind: Kind,
    key: str,
    stored: Stored,
    epoch: int | None = None,
) -> None:
    """Keep a running attempt's weights, outputs or checkpoint (taken after `epoch`), just
    put in the store under `key`; uploading again replaces them."""
    trial = running_attempt(session, trial_id, token)
    if kind == "checkpoint":
        _check_checkpoint_epoch(trial, epoch or 0)
    artifacts.keep(session, trial, kind, key, stored, epoch=epoch)


def _check_checkpoint_epoch(trial: Trial, epoch: int) -> None:
    """A checkpoint's epoch must have been reported first, so a resumed attempt's curve has
    no gap."""
    if epoch > trial.last_epoch:
        raise Conflict(
            f"trial {trial.id}: checkpoint after epoch {epoch} arrived before that "
            f"epoch's report (last reported: {trial.last_epoch})"
        )


def complete(
    session: Session,
    *,
    trial_id: int,
    token: str,
    body: CompleteIn,
    project: str | None = None,
) -> TrialRead:
    """Finish a trial with its objective value. Completing it again the same way is a no-op.
    A caller of one `project` gets NotFound for another's trial."""
    check_visible(session, trial_id, project)
    trial = attempt(session, trial_id, token)
    if trial.state == TrialState.COMPLETED and trial.value == body.value:
        return trials.read(trial)
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    if body.epoch is not None and body.epoch > trial.last_epoch:
        raise Conflict(
            f"trial {trial_id}: epoch {body.epoch} was never reported "
            f"(last reported: {trial.last_epoch})"
        )
    trial.output = body.output
    experiment = rows.lock_experiment(session, trial.experiment_id)  # finish locks it anyway
    wanted = specs.objectives(experiment.spec)
    if len(wanted) == 1:
        lifecycle.finish(
            session,
            trial,
            TrialState.COMPLETED,
            value=body.value,
            best_epoch=body.epoch,
            experiment=experiment,
        )
        return trials.read(trial)
    # Several objectives: each one's value at the epoch the first objective chose.
    epoch = body.epoch or trial.last_epoch
    metrics = session.get(TrialMetric, (trial.id, epoch))
    if metrics is None:
        raise Conflict(f"trial {trial_id} reported no epoch; its objectives have no values")
    missing = [o["metric"] for o in wanted if metrics.values.get(o["metric"]) is None]
    if missing:
        raise Conflict(f"trial {trial_id}: epoch {epoch} reported no {', '.join(missing)}")
    values = [float(metrics.values[o["metric"]]) for o in wanted]
    lifecycle.finish(
        session,
        trial,
        TrialState.COMPLETED,
        value=values[0],
        values=values,
        best_epoch=epoch,
        experiment=experiment,
    )
    return trials.read(trial)


def fail(session: Session, *, trial_id: int, token: str, body: FailIn) -> TrialRead:
    """End a trial as failed with the worker's reason. Failing it again is a no-op."""
    trial = attempt(session, trial_id, token)
    if trial.state == TrialState.FAILED:
        return trials.read(trial)
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    trial.output = body.output
    lifecycle.finish(session, trial, TrialState.FAILED, reason=body.reason, message=body.message)
    return trials.read(trial)


# --- leases --------------------------------------------------------------------------------


def heartbeat(
    session: Session,
    *,
    trial_id: int,
    token: str,
    lease_seconds: float,
    project: str | None = None,
) -> HeartbeatOut:
    """Keep an attempt's lease alive; the answer says whether the trial should go on. One
    UPDATE checks the attempt and renews its lease; the trial is loaded whole only when it
    ends here. A caller of one `project` gets NotFound for another's trial."""
    check_visible(session, trial_id, project)
    renewed = session.execute(
        _HEARTBEAT,
        {"b_trial_id": trial_id, "b_token": token, "b_lease": lease_until(lease_seconds)},
    ).one_or_none()
    if renewed is None:
        running_attempt(session, trial_id, token)  # raises NotFound or Conflict, saying why
        raise Conflict(f"trial {trial_id}: this attempt is not running")
    if renewed.experiment_state in ENDED_EXPERIMENT_STATES:
        return HeartbeatOut(action="stop", reason=f"experiment {renewed.experiment_state}")
    if _overdue(renewed.experiment_spec, renewed.started_at) is not None:
        experiment = rows.experiment(session, renewed.experiment_id)
        overdue = _timed_out(session, rows.trial(session, trial_id), experiment)
        return HeartbeatOut(action="stop", reason=overdue)
    return HeartbeatOut(action="continue")


# The hot path's statements, built once in SQLAlchemy Core over the tables (a statement built
# per call cost a report more than its SQL; the ORM's bulk UPDATE machinery added as much).
TRIALS = cast(Table, Trial.__table__)
EXPERIMENTS = cast(Table, Experiment.__table__)
TRIAL_METRICS = cast(Table, TrialMetric.__table__)


def _of_owner(column: str) -> Label[Any]:
    """A column of the trial's experiment, for an UPDATE of the trial to return: the call
    reads its experiment in the same statement."""
    owner = EXPERIMENTS.c
    found = select(owner[column]).where(owner.id == TRIALS.c.experiment_id).scalar_subquery()
    return found.label(f"experiment_{column}")


def _running_attempt_update(*conditions: ColumnElement[bool]) -> Update:
    """An UPDATE of attempt :b_token of trial :b_trial_id while it runs, renewing its lease
    to :b_lease; no row when it is not that attempt, or no longer running."""
    trial = TRIALS.c
    return (
        update(TRIALS)
        .where(
            trial.id == bindparam("b_trial_id"),
            trial.token == bindparam("b_token"),
            trial.state == TrialState.RUNNING,
            *conditions,
        )
        .values(lease_expires_at=bindparam("b_lease", type_=TRIALS.c.lease_expires_at.type))
    )


_HEARTBEAT = _running_attempt_update().returning(
    TRIALS.c.experiment_id, TRIALS.c.started_at, _of_owner("state"), _of_owner("spec")
)


@functools.cache
def _report_update(metrics: int) -> Update:
    """A report's UPDATE, for a report of `metrics` metrics (:b_metric_i named :b_value_i):
    the attempt's next epoch (:b_epoch) recorded, its lease renewed, and its last objective
    set to the value its experiment's objective metric has among them (else kept)."""
    trial = TRIALS.c
    objective: ColumnElement[Any] = trial.last_objective
    if metrics:
        whens = [
            (bindparam(f"b_metric_{i}", type_=String), bindparam(f"b_value_{i}", type_=Float))
            for i in range(metrics)
        ]
        objective = case(*whens, value=_of_owner("metric"), else_=trial.last_objective)
    return (
        _running_attempt_update(trial.last_epoch == bindparam("b_epoch") - 1)
        .values(last_epoch=bindparam("b_epoch"), last_objective=objective)
        .returning(
            trial.experiment_id,
            trial.number,
            trial.system_attrs,
            trial.started_at,
            *(_of_owner(c) for c in ("state", "spec", "metric", "needs_program", "finish_seq")),
        )
    )


_RECORD_METRICS = insert(TRIAL_METRICS)

# A claim's first write: the worker (:b_worker_id) seen at :b_now, and the running trial it
# holds, if any (its last claim's answer was lost).
WORKERS = cast(Table, Worker.__table__)
_SEEN = (
    update(WORKERS)
    .where(WORKERS.c.id == bindparam("b_worker_id"))
    .values(last_seen_at=bindparam("b_now", type_=WORKERS.c.last_seen_at.type))
    .returning(
        # Not correlated: SQLite's RETURNING names columns unqualified.
        select(TRIALS.c.id)
        .where(TRIALS.c.worker_id == bindparam("b_worker_id"), rows.TRAINING)
        .limit(1)
        .scalar_subquery()
    )
)
# The claimant's trials whose training ended (see `claim`).
_TRAINED = (
    update(TRIALS)
    .where(
        TRIALS.c.id.in_(bindparam("b_ids", expanding=True)),
        TRIALS.c.worker_id == bindparam("b_worker_id"),
        rows.TRAINING,
    )
    .values(trained_at=bindparam("b_now", type_=TRIALS.c.trained_at.type))
)


def _timed_out(session: Session, trial: Trial, experiment: Experiment) -> str | None:
    """Fail an attempt that ran past the budget's trial_timeout_s; the answer to its worker
    says why, and the worker kills what it runs."""
    limit = _overdue(experiment.spec, trial.started_at)
    if limit is None:
        return None
    message = f"timed out: attempt {trial.attempt} ran past budget.trial_timeout_s ({limit:g} s)"
    lifecycle.finish(session, trial, TrialState.FAILED, reason="error", message=message)
    return message


def _overdue(spec: dict[str, Any], started_at: datetime | None) -> float | None:
    """The budget's trial_timeout_s when an attempt started then has run past it."""
    limit = spec["budget"].get("trial_timeout_s")
    if limit is None or started_at is None:
        return None
    if utcnow() - started_at < timedelta(seconds=limit):
        return None
    return float(limit)


def load_checkpoint(session: Session, *, trial_id: int, token: str) -> Artifact:
    """The checkpoint a new attempt resumes from."""
    running_attempt(session, trial_id, token)
    checkpoint = artifacts.of_trial(session, trial_id, "checkpoint")
    if checkpoint is None:
        raise NotFound(f"trial {trial_id} has no checkpoint")
    return checkpoint


def release(session: Session, *, trial_id: int, token: str, body: ReleaseIn) -> TrialRead:
    """The worker lets go of its attempt: back to the queue at once. When it is shutting
    down, that is not counted against max_retries; when the trial's program was killed from
    outside (an out-of-memory killer, an operator), it is, and fails once they are spent."""
    trial = running_attempt(session, trial_id, token)
    if body.reason == "killed":
        if trial.retries >= rows.experiment(session, trial.experiment_id).max_retries:
            message = f"{body.message or 'killed'}, {trial.retries + 1} times"
            lifecycle.finish(session, trial, TrialState.FAILED, reason="error", message=message)
            return trials.read(trial)
        trial.retries += 1
    lifecycle.requeue(session, trial, body.reason)
    return trials.read(trial)


def renew_all_leases(session: Session, *, lease_seconds: float) -> None:
    """Give every running trial a full lease from now (after an outage nobody could renew)."""
    renewed = lease_until(lease_seconds)
    session.execute(
        update(Trial)
        .where(Trial.state == TrialState.RUNNING, Trial.lease_expires_at < renewed)
        .values(lease_expires_at=renewed)
    )


def expire_leases(session: Session, *, now: datetime | None = None, limit: int = 100) -> int:
    """Requeue running trials whose lease ran out, or fail them as "lost" once their
    experiment's max_retries is spent. Returns how many it handled."""
    expired = session.scalars(
        select(Trial)
        .where(Trial.state == TrialState.RUNNING, Trial.lease_expires_at < (now or utcnow()))
        .order_by(Trial.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    # Their experiments in id order, as every batch does: two rounds never wait on each other.
    owners = {e.id: e for e in rows.lock_experiments(session, {t.experiment_id for t in expired})}
    for trial in expired:
        experiment = owners[trial.experiment_id]
        if trial.retries >= experiment.max_retries:
            message = f"no word from its worker for a lease, {trial.retries + 1} times"
            lifecycle.finish(session, trial, TrialState.FAILED, reason="lost", message=message)
        else:
            trial.retries += 1
            lifecycle.requeue(session, trial, "lost")
    return len(expired)
