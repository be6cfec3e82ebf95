"""Optuna behind a few verbs: ask, should_prune, and keeping each study in step with SQL.

The only module of the service that imports optuna. Each experiment has an in-memory study
built from its SQL rows on first use and brought up to date incrementally: trials created
since it last looked (by number) and trials finished since it last looked (by finish_seq).
Both counters only move under the experiment's row lock, so they commit in order and a
watermark never skips a row. SQL stays the truth: a study can be dropped at any time and is
rebuilt from the tables, which is what happens after a restart or a failed transaction.

The sampler is reseeded before every ask with seed = spec seed + trial number, so a trial's
suggestion depends only on the history before it, never on which process asks or whether the
server restarted in between.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState as OptunaState
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.catalog import Hyperparameter
from service.db import on_rollback
from service.errors import InvalidSpec
from service.states import TrialState
from service.tables import Experiment, Trial, TrialMetric

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
}


def _count(low: int) -> Hyperparameter:
    return Hyperparameter("int", 0, low=low, high=1_000_000)


_SWITCH = Hyperparameter("bool", False)
# The options a spec may pass to each sampler and pruner, typed and bounded.
SAMPLER_OPTIONS: dict[str, dict[str, Hyperparameter]] = {
    "tpe": {
        "n_startup_trials": _count(0),
        "n_ei_candidates": _count(1),
        "multivariate": _SWITCH,
        "group": _SWITCH,
        "constant_liar": _SWITCH,
        "consider_endpoints": _SWITCH,
        "prior_weight": Hyperparameter("float", 1.0, low=0.0, high=1e6, low_open=True),
    },
    "random": {},
}
PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
}
_PRUNER_STEPS = {
    "n_startup_trials": _count(0),
    "n_warmup_steps": _count(0),
    "interval_steps": _count(1),
    "n_min_trials": _count(1),
}
PRUNER_OPTIONS: dict[str, dict[str, Hyperparameter]] = {
    "none": {},
    "median": _PRUNER_STEPS,
    "percentile": {
        **_PRUNER_STEPS,
        "percentile": Hyperparameter("float", 50.0, low=0.0, high=100.0),
    },
}
# A violated constraint marks params that ran out of memory as infeasible: the system attr
# Trial.set_constraint("memory", ...) writes, which constraint-aware samplers (TPE) read.
OUT_OF_MEMORY = "constraints:memory"
FINAL_STATES = {
    TrialState.COMPLETED: OptunaState.COMPLETE,
    TrialState.PRUNED: OptunaState.PRUNED,
    TrialState.FAILED: OptunaState.FAIL,
    TrialState.CANCELLED: OptunaState.FAIL,
}


def distributions(search_space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """Optuna distributions for a spec's search space, in spec order."""
    result: dict[str, BaseDistribution] = {}
    for name, p in search_space.items():
        if p["type"] == "float":
            result[name] = FloatDistribution(p["low"], p["high"], log=p["log"], step=p["step"])
        elif p["type"] == "int":
            result[name] = IntDistribution(p["low"], p["high"], log=p["log"], step=p["step"])
        else:
            result[name] = CategoricalDistribution(p["choices"])
    return result


def make_sampler(spec: dict[str, Any]) -> optuna.samplers.BaseSampler:
    sampler = spec["sampler"]
    return SAMPLERS[sampler["name"]](seed=sampler["seed"], **sampler["options"])


def reseed(sampler: optuna.samplers.BaseSampler, seed: int) -> None:
    """Seed every random state the sampler (and the samplers inside it) draws from.

    Done before each ask, so the suggestion for trial n depends on the history and on
    seed + n only. Keeping the sampler itself (rather than building a new one per ask)
    keeps its caches, such as TPE's incrementally computed search space.
    """
    for value in vars(sampler).values():
        if isinstance(value, optuna.samplers.BaseSampler):
            reseed(value, seed)
        elif isinstance(getattr(value, "rng", None), np.random.RandomState):
            value.rng.seed(seed)


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    return PRUNERS[spec["pruner"]["name"]](**spec["pruner"]["options"])


def check_spec(spec: dict[str, Any]) -> None:
    """Raise InvalidSpec unless the spec's sampler, pruner and search space are usable."""
    _check_choice_and_options("sampler", spec["sampler"], SAMPLERS, SAMPLER_OPTIONS)
    _check_choice_and_options("pruner", spec["pruner"], PRUNERS, PRUNER_OPTIONS)
    dists: dict[str, BaseDistribution] = {}
    for name, p in spec["search_space"].items():
        try:
            dists.update(distributions({name: p}))
        except Exception as exc:  # optuna raises ValueError, decimal errors, ...
            raise InvalidSpec(str(exc), field=f"search_space.{name}") from exc
    try:  # one real ask on a scratch study: what fails here would fail every claim
        study = optuna.create_study(sampler=make_sampler(spec), pruner=make_pruner(spec))
        trial = study.ask()
        for name, dist in dists.items():
            _suggest(trial, name, dist)
    except Exception as exc:
        raise InvalidSpec(
            f"the sampler cannot work with this spec: {exc}", field="sampler"
        ) from exc


def _check_choice_and_options(
    kind: str,
    chosen: dict[str, Any],
    known: dict[str, Any],
    options: dict[str, dict[str, Hyperparameter]],
) -> None:
    if chosen["name"] not in known:
        raise InvalidSpec(
            f"unknown {kind} {chosen['name']!r}; known: {sorted(known)}", field=f"{kind}.name"
        )
    allowed = options[chosen["name"]]
    for option, value in chosen["options"].items():
        field = f"{kind}.options.{option}"
        if option not in allowed:
            raise InvalidSpec(
                f"unknown {kind} option {option!r} for {chosen['name']!r}; "
                f"known: {sorted(allowed)}",
                field=field,
            )
        problem = allowed[option].check(value)
        if problem:
            raise InvalidSpec(f"{option} {problem} (got {value!r})", field=field)


@dataclass
class _Study:
    """One experiment's in-memory study and how far it has read the experiment's rows."""

    study: optuna.Study
    storage: optuna.storages.InMemoryStorage
    study_id: int
    spec: dict[str, Any]
    dists: dict[str, BaseDistribution]
    trial_count: int = 0  # trials (by number) already in the study
    finish_seq: int = 0  # finishes already applied
    trial_ids: dict[int, int] = field(default_factory=dict)  # trial number -> optuna trial id


class Optimizer:
    """The per-process cache of studies. Thread-safe: one lock per experiment."""

    def __init__(self) -> None:
        self._studies: dict[int, _Study] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def _study(self, session: Session, experiment: Experiment) -> Iterator[_Study]:
        """The experiment's study, in step with everything committed, under its lock.

        A transaction that fails after touching the study leaves it ahead of SQL, so the
        study is dropped on rollback and rebuilt on next use.
        """
        with self._guard:
            lock = self._locks.setdefault(experiment.id, threading.Lock())
        with lock:
            study = self._studies.get(experiment.id)
            if study is None:
                study = self._studies[experiment.id] = _new_study(experiment)
            on_rollback(session, lambda: self.forget(experiment.id))
            try:
                _catch_up(session, study, experiment.id)
            except _Stale:  # a trial was rewound by another process: start from SQL again
                study = self._studies[experiment.id] = _new_study(experiment)
                _catch_up(session, study, experiment.id)
            yield study

    def forget(self, experiment_id: int) -> None:
        with self._guard:
            self._studies.pop(experiment_id, None)

    def ask(self, session: Session, experiment: Experiment, number: int) -> dict[str, Any]:
        """Suggest the params of trial `number` from every trial before it."""
        with self._study(session, experiment) as s:
            if s.trial_count != number:
                raise RuntimeError(f"study holds {s.trial_count} trials, asked for #{number}")
            seed = s.spec["sampler"]["seed"]
            if seed is not None:
                reseed(s.study.sampler, seed + number)
            trial = s.study.ask()
            params = {name: _suggest(trial, name, dist) for name, dist in s.dists.items()}
            s.trial_ids[number] = trial._trial_id
            s.trial_count += 1
            return params

    def should_prune(
        self, session: Session, experiment: Experiment, trial: Trial, curve: dict[int, float]
    ) -> bool:
        """Whether the pruner stops `trial`, given its objective per epoch so far."""
        try:
            return self._prune(session, experiment, trial, curve)
        except _Stale:  # the study still holds an earlier attempt's later epochs
            self.forget(experiment.id)
            return self._prune(session, experiment, trial, curve)

    def _prune(
        self, session: Session, experiment: Experiment, trial: Trial, curve: dict[int, float]
    ) -> bool:
        with self._study(session, experiment) as s:
            trial_id = s.trial_ids[trial.number]
            _set_curve(s, trial_id, curve)
            return s.study.pruner.prune(s.study, s.storage.get_trial(trial_id))

    def history(self, session: Session, experiment: Experiment) -> list[optuna.trial.FrozenTrial]:
        """Every trial of the experiment as Optuna sees it."""
        with self._study(session, experiment) as s:
            return s.study.get_trials(deepcopy=True)


def _new_study(experiment: Experiment) -> _Study:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage,
        sampler=make_sampler(experiment.spec),
        pruner=make_pruner(experiment.spec),
        direction=StudyDirection[experiment.direction.upper()],
    )
    return _Study(
        study=study,
        storage=storage,
        study_id=storage.get_study_id_from_name(study.study_name),
        spec=experiment.spec,
        dists=distributions(experiment.spec["search_space"]),
    )


def _catch_up(session: Session, s: _Study, experiment_id: int) -> None:
    # Finishes are read first: a trial's creation commits before its finish, so every trial
    # seen finished here is also seen by the (later) query for created trials, even when
    # another process claims and finishes trials between the two statements.
    finished = session.scalars(
        select(Trial)
        .where(Trial.experiment_id == experiment_id, Trial.finish_seq > s.finish_seq)
        .order_by(Trial.finish_seq)
    ).all()
    created = session.scalars(
        select(Trial)
        .where(Trial.experiment_id == experiment_id, Trial.number >= s.trial_count)
        .order_by(Trial.number)
    ).all()
    curves = _curves(session, [t.id for t in (*created, *finished)])
    for trial in created:
        _add_running(s, trial, curves.get(trial.id, {}))
    for trial in finished:
        _apply_finish(s, trial, curves.get(trial.id, {}))


def _curves(session: Session, trial_ids: list[int]) -> dict[int, dict[int, float]]:
    if not trial_ids:
        return {}
    rows = session.execute(
        select(TrialMetric.trial_id, TrialMetric.epoch, TrialMetric.objective).where(
            TrialMetric.trial_id.in_(set(trial_ids))
        )
    )
    curves: dict[int, dict[int, float]] = {}
    for trial_id, epoch, objective in rows:
        if objective is not None and math.isfinite(objective):
            curves.setdefault(trial_id, {})[epoch] = objective
    return curves


def _add_running(s: _Study, trial: Trial, curve: dict[int, float]) -> None:
    if trial.number != s.trial_count:
        raise RuntimeError(f"trial #{trial.number} arrived before #{s.trial_count}")
    template = optuna.trial.create_trial(
        state=OptunaState.RUNNING,
        params=trial.params,
        distributions={name: s.dists[name] for name in trial.params},
        intermediate_values=curve,
    )
    s.trial_ids[trial.number] = s.storage.create_new_trial(s.study_id, template_trial=template)
    s.trial_count += 1


class _Stale(Exception):
    """The study holds epochs of a trial that SQL no longer has (a new attempt resumed from
    an earlier checkpoint in another process): it must be rebuilt."""


def _set_curve(s: _Study, trial_id: int, curve: dict[int, float]) -> None:
    if set(s.storage.get_trial(trial_id).intermediate_values) - set(curve):
        raise _Stale()
    for epoch, value in curve.items():
        s.storage.set_trial_intermediate_value(trial_id, epoch, value)


def _apply_finish(s: _Study, trial: Trial, curve: dict[int, float]) -> None:
    trial_id = s.trial_ids[trial.number]
    out_of_memory = trial.failure_reason == "oom"
    if not out_of_memory:  # an OOM trial's curve is no pruning statistic
        _set_curve(s, trial_id, curve)
    state = FINAL_STATES[TrialState(trial.state)]
    values: list[float] | None = None
    if out_of_memory:  # an infeasible point to move away from, not ignored
        s.storage.set_trial_system_attr(trial_id, OUT_OF_MEMORY, 1.0)
        state, values = OptunaState.COMPLETE, [trial.last_objective or 0.0]
    elif state == OptunaState.COMPLETE and trial.value is not None:
        values = [trial.value]
    elif state == OptunaState.PRUNED and curve:
        values = [curve[max(curve)]]
    s.storage.set_trial_state_values(trial_id, state, values)
    s.finish_seq = max(s.finish_seq, trial.finish_seq or 0)


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, CategoricalDistribution)
    return trial.suggest_categorical(name, dist.choices)
