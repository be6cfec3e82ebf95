"""Artifacts: the rows that say what each object of the store is, and the rules that keep the
store from filling up.

A trial has at most one artifact of each kind (weights, checkpoint, outputs); an uploaded
dataset has one with its arrays. Replacing an artifact points its row at a new key. Whenever a
row lets go of a key, the key goes into sweep_deleted_artifacts in the same transaction, and
`purge` removes those objects from the store once that transaction has committed: an object is
never deleted while a committed row still names it, and never forgotten. Retention:
  - a trial's checkpoint goes when the trial ends;
  - with `artifacts.keep_models: K` in the spec, only the K best finished trials (by the
    objective; with several objectives, those on the Pareto front) keep their model files;
  - deleting an experiment or a dataset deletes its objects;
  - `collect` (sweep gc, and a background pass) removes objects no row names at all.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Row, delete, insert, select
from sqlalchemy.orm import Session

from sweep.service import search, specs
from sweep.service.states import TrialState
from sweep.service.store import Store, Stored
from sweep.service.tables import Artifact, DeletedArtifact, Experiment, Trial, UserDataset, utcnow

Kind = Literal["weights", "checkpoint", "outputs", "dataset"]
if TYPE_CHECKING:
    # A finished trial with a model file: id, state, value, values.
    ModelRow = Row[int, str, float | None, list[float] | None]

TRIAL_KINDS: tuple[Kind, ...] = ("weights", "checkpoint", "outputs")
SUFFIXES = {"weights": ".pt", "checkpoint": ".ckpt", "outputs": ".tar.gz", "dataset": ".npz"}
PURGE_BATCH = 200
FINISHED = (TrialState.COMPLETED, TrialState.PRUNED, TrialState.FAILED, TrialState.CANCELLED)


def new_key(kind: Kind, *, trial: Trial | None = None, name: str = "") -> str:
    """A key no object has had: experiments/E/trials/T/weights-a2-9f3c01d2.pt"""
    unique = secrets.token_hex(4)
    if trial is None:
        return f"datasets/{name}-{unique}{SUFFIXES[kind]}"
    return f"{attempt_prefix(trial, kind)}{unique}{SUFFIXES[kind]}"


def attempt_prefix(trial: Trial, kind: Kind) -> str:
    """What the keys of the current attempt's `kind` begin with."""
    return f"experiments/{trial.experiment_id}/trials/{trial.id}/{kind}-a{trial.attempt}-"


def of_trial(session: Session, trial_id: int, kind: Kind) -> Artifact | None:
    return session.scalars(
        select(Artifact).where(Artifact.trial_id == trial_id, Artifact.kind == kind)
    ).first()


def keep(
    session: Session,
    trial: Trial,
    kind: Kind,
    key: str,
    stored: Stored,
    *,
    epoch: int | None = None,
) -> None:
    """Record an object just put under `key` as the trial's `kind`, replacing the one it had
    (whose object is deleted once this commits)."""
    existing = of_trial(session, trial.id, kind)
    if existing is not None and existing.key == key:
        return  # recorded already: a retried commit
    if existing is None:
        session.add(
            Artifact(
                key=key,
                kind=kind,
                trial_id=trial.id,
                epoch=epoch,
                size=stored.size,
                sha256=stored.sha256,
            )
        )
    else:
        _forget([existing.key], session)
        existing.key, existing.epoch = key, epoch
        existing.size, existing.sha256 = stored.size, stored.sha256
        existing.created_at = utcnow()
    if kind == "weights":
        trial.has_weights = True
    elif kind == "outputs":
        trial.has_outputs = True
    session.flush()


def add_dataset(session: Session, key: str, stored: Stored) -> Artifact:
    artifact = Artifact(key=key, kind="dataset", size=stored.size, sha256=stored.sha256)
    session.add(artifact)
    session.flush()
    return artifact


def discard(session: Session, trial_ids: Sequence[int], *kinds: Kind) -> None:
    """Delete these trials' artifacts of `kinds` (all kinds when none is given)."""
    if not trial_ids:
        return
    query = select(Artifact.id, Artifact.key).where(Artifact.trial_id.in_(trial_ids))
    if kinds:
        query = query.where(Artifact.kind.in_(kinds))
    found = session.execute(query).all()
    if not found:
        return
    _forget([key for _, key in found], session)
    session.execute(delete(Artifact).where(Artifact.id.in_([row_id for row_id, _ in found])))
    touched = set(kinds or TRIAL_KINDS)
    flags = {}
    if "weights" in touched:
        flags["has_weights"] = False
    if "outputs" in touched:
        flags["has_outputs"] = False
    if flags:
        for trial in session.scalars(select(Trial).where(Trial.id.in_(trial_ids))):
            for name, value in flags.items():
                setattr(trial, name, value)
    session.flush()


def discard_experiment(session: Session, experiment_id: int) -> None:
    """Before an experiment's rows are deleted: its objects go once that commits."""
    keys = session.scalars(
        select(Artifact.key)
        .join(Trial, Trial.id == Artifact.trial_id)
        .where(Trial.experiment_id == experiment_id)
    ).all()
    _forget(keys, session)


def discard_dataset(session: Session, artifact_id: int | None) -> None:
    """A dataset row is gone: its arrays go unless another dataset holds the same ones."""
    if artifact_id is None:
        return
    if session.scalars(
        select(UserDataset.id).where(UserDataset.artifact_id == artifact_id)
    ).first():
        return
    artifact = session.get(Artifact, artifact_id)
    if artifact is not None:
        _forget([artifact.key], session)
        session.delete(artifact)
        session.flush()


def forget_key(session: Session, key: str) -> None:
    """An object that was put but will not be recorded: delete it with the others."""
    _forget([key], session)


def _forget(keys: Iterable[str], session: Session) -> None:
    rows = [{"key": key, "deleted_at": utcnow()} for key in dict.fromkeys(keys)]
    if not rows:
        return
    present = set(
        session.scalars(
            select(DeletedArtifact.key).where(DeletedArtifact.key.in_([r["key"] for r in rows]))
        )
    )
    rows = [r for r in rows if r["key"] not in present]
    if rows:
        session.execute(insert(DeletedArtifact), rows)


# --- retention ------------------------------------------------------------------------------


def retain_models(session: Session, experiment: Experiment) -> None:
    """With `artifacts.keep_models: K`, delete the model files of finished trials that are not
    among the K best (with several objectives: not on the Pareto front). Runs as each trial
    finishes, under its experiment's lock."""
    keep_models = _keep_models(experiment)
    if keep_models is None:
        return
    finished = _with_models(session, experiment)
    wanted = specs.objectives(experiment.spec)
    if len(wanted) > 1:
        completed = _completed(finished)
        points = [list(row.values or []) for row in completed]
        front = search.pareto_front(points, [o["direction"] for o in wanted])
        kept = {completed[i].id for i in front}
    else:
        kept = {row.id for row in _best_first(finished, experiment)[:keep_models]}
    dropped = [row.id for row in finished if row.id not in kept]
    discard(session, dropped, "weights")


def model_bar(session: Session, experiment: Experiment) -> tuple[bool, float | None]:
    """For a trial starting now under `artifacts.keep_models: K` with one objective: whether
    any model is kept (not when K is 0), and the value its model must beat to be, the K-th
    best kept model's (None while fewer than K are kept). The kept models only get better,
    so a trial that ends without beating it is not among the K, nor ever will be. Ties rank
    the model kept first. Without the policy or with several objectives: (True, None)."""
    keep_models = _keep_models(experiment)
    if keep_models is None or len(specs.objectives(experiment.spec)) > 1:
        return True, None
    if keep_models == 0:
        return False, None
    ranked = _best_first(_with_models(session, experiment), experiment)
    return True, ranked[keep_models - 1].value if len(ranked) >= keep_models else None


def _keep_models(experiment: Experiment) -> int | None:
    keep_models: int | None = (experiment.spec.get("artifacts") or {}).get("keep_models")
    return keep_models


def _with_models(session: Session, experiment: Experiment) -> Sequence[ModelRow]:
    """The experiment's finished trials that have a model file: under the policy, about K of
    them (read whole and ranked here: sorting all the experiment's trials in SQL to find them
    costs more)."""
    return session.execute(
        select(Trial.id, Trial.state, Trial.value, Trial.values)
        .join(Artifact, (Artifact.trial_id == Trial.id) & (Artifact.kind == "weights"))
        .where(Trial.experiment_id == experiment.id, Trial.state.in_(FINISHED))
    ).all()


def _completed(rows: Sequence[ModelRow]) -> list[ModelRow]:
    return [row for row in rows if row.state == TrialState.COMPLETED and row.value is not None]


def _best_first(rows: Sequence[ModelRow], experiment: Experiment) -> list[ModelRow]:
    """The completed ones by the objective, best first; ties: the earlier trial first."""
    sign = -1.0 if experiment.direction == "maximize" else 1.0
    return sorted(_completed(rows), key=lambda row: (sign * row.value, row.id))


# --- the store's side -----------------------------------------------------------------------


def purge(session: Session, store: Store) -> int:
    """Remove the objects of deleted artifacts from the store; returns how many (at most
    PURGE_BATCH)."""
    keys = session.scalars(
        select(DeletedArtifact.key)
        .order_by(DeletedArtifact.deleted_at)
        .limit(PURGE_BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    for key in keys:
        store.delete(key)
    if keys:
        session.execute(delete(DeletedArtifact).where(DeletedArtifact.key.in_(keys)))
    return len(keys)


def collect(
    session: Session, store: Store, *, grace: timedelta, now: datetime | None = None
) -> int:
    """Delete store objects no artifact row names and older than `grace` (younger ones may
    belong to an upload under way). Returns how many went."""
    now = now or utcnow()
    named = set(session.scalars(select(Artifact.key)))
    removed = 0
    for listed in store.listing():
        if listed.key in named or now - listed.modified < grace:
            continue
        store.delete(listed.key)
        removed += 1
    for path in store.staging().glob("incoming-*"):  # uploads cut short by a crash
        if now - datetime.fromtimestamp(path.stat().st_mtime, UTC) >= grace:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def usage(session: Session) -> tuple[int, int]:
    """Objects and bytes the rows name."""
    sizes = session.scalars(select(Artifact.size)).all()
    return len(sizes), sum(sizes)
