"""Workers: the processes that claim and run trials, and which experiments each can run."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from sweep.service.schemas import WorkerRead, WorkerRegister
from sweep.service.states import ExperimentState, TrialState
from sweep.service.tables import Experiment, Trial, Worker, utcnow

# A worker is live while it runs a trial, or claimed within this long (an idle worker's claim
# comes back every few seconds).
LIVE_WITHIN = timedelta(minutes=2)


def register(session: Session, *, body: WorkerRegister, project: str | None) -> WorkerRead:
    worker = Worker(
        name=body.name,
        hostname=body.hostname,
        device=body.device,
        device_memory_gb=body.device_memory_gb,
        models=body.models,
        datasets=body.datasets,
        programs=body.programs,
        gpus=body.gpus,
        pid=body.pid,
        project=project,
    )
    session.add(worker)
    session.flush()
    return WorkerRead.model_validate(worker, from_attributes=True)


def recent(session: Session, *, limit: int) -> list[WorkerRead]:
    """Workers, most recently seen first."""
    rows = session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit))
    return [WorkerRead.model_validate(w, from_attributes=True) for w in rows]


def live(session: Session, project: str | None = None) -> list[Worker]:
    """Live workers; with `project`, those that may run its trials (theirs, or any)."""
    busy = select(Trial.worker_id).where(Trial.state == TrialState.RUNNING)
    query = select(Worker).where(
        (Worker.last_seen_at >= utcnow() - LIVE_WITHIN) | Worker.id.in_(busy)
    )
    if project is not None:
        query = query.where(Worker.project.is_(None) | (Worker.project == project))
    return list(session.scalars(query))


def device_kind(worker: Worker) -> str:
    return worker.device.split(":")[0]


def cannot_run(worker: Worker, experiment: Experiment) -> str | None:
    """Why `worker` may not be handed this experiment's trials, or None. A claim asks the same
    in SQL (sweep.service.attempts)."""
    if worker.project is not None and worker.project != experiment.project:
        return f"it runs project {worker.project!r}"
    if experiment.needs_device is not None and device_kind(worker) != experiment.needs_device:
        return f"its device is {worker.device}"
    memory = worker.device_memory_gb or 0
    if experiment.needs_memory_gb is not None and memory < experiment.needs_memory_gb:
        return f"its device has {memory:g} GB"
    if experiment.needs_model is not None and experiment.needs_model not in worker.models:
        return f"it lacks the plugin model {experiment.needs_model!r}"
    if experiment.needs_dataset is not None and experiment.needs_dataset not in worker.datasets:
        return f"it lacks the plugin dataset {experiment.needs_dataset!r}"
    if experiment.needs_program is not None and experiment.needs_program not in worker.programs:
        return f"it does not run the program {experiment.needs_program!r}"
    if experiment.needs_gpus is not None and worker.gpus < experiment.needs_gpus:
        return f"it has {worker.gpus} GPU(s)"
    return None


def waiting_for(experiment: Experiment, workers: list[Worker]) -> str | None:
    """For a running experiment that live workers cannot run: what it needs, and what they
    have, instead of waiting silently."""
    if experiment.state != ExperimentState.RUNNING:
        return None
    # Workers of other projects are none of this project's business.
    workers = [w for w in workers if w.project in (None, experiment.project)]
    if not workers:
        return "no worker is live"
    if any(cannot_run(w, experiment) is None for w in workers):
        return None
    needs = [f"device {experiment.needs_device}"] if experiment.needs_device else []
    if experiment.needs_memory_gb is not None:
        needs.append(f"{experiment.needs_memory_gb:g} GB of device memory")
    if experiment.needs_model is not None:
        needs.append(f"the plugin model {experiment.needs_model!r}")
    if experiment.needs_dataset is not None:
        needs.append(f"the plugin dataset {experiment.needs_dataset!r}")
    if experiment.needs_program is not None:
        needs.append(f"the program {experiment.needs_program!r} (sweep worker --program)")
    if experiment.needs_gpus is not None:
        needs.append(f"{experiment.needs_gpus} GPUs on one worker (sweep worker --gpus)")
    reasons = Counter(str(cannot_run(w, experiment)) for w in workers)
    have = "; ".join(f"{n} because {why}" for why, n in reasons.most_common())
    return f"no live worker can run it: it needs {' and '.join(needs) or 'its project'}; {have}"
