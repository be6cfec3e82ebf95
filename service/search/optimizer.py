"""Optuna behind a few verbs: ask, should_prune, importance, history, and keeping each study in
step with SQL.

Each experiment has an in-memory study
built from its SQL rows on first use and brought up to date incrementally: trials created
since it last looked (by number) and trials finished since it last looked (by finish_seq).
Both counters only move under the experiment's row lock, so they commit in order and a
watermark never skips a row. SQL stays the truth: a study can be dropped at any time and is
rebuilt from the tables, which is what happens after a restart or a failed transaction.

The sampler is reseeded before every ask with seed = spec seed + trial number, so a trial's
suggestion depends only on the history before it, never on which process asks or whether the
server restarted in between.

Asking ahead: past `ask_ahead_after` trials (where TPE's ask, which re-fits on the whole
history, starts to cost more than the rest of a claim), each claim leaves the next trial's
suggestion to be asked on the study exactly as that claim left it, in the background after it
commits, and the next claim takes it without asking. The history behind trial n is then what
was known when trial n - 1 was claimed, with n - 1 running: one trial less, which the
sampler's treatment of running trials (constant liar, when set) covers as it covers parallel
workers. It stays a function of the history only: whoever touches the study first asks the
pending suggestion before reading anything newer from SQL. Two cases ask on the whole history
instead: the first claim after the study was rebuilt (a restart, an evicted study), and a
claim whose number another process took meanwhile; a process that sees the latter stops
asking ahead for that experiment.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from sweep.service.db import after_commit, on_rollback
from sweep.service.errors import Conflict
from sweep.service.schemas import Importance
from sweep.service.search.pruners import make_pruner
from sweep.service.search.samplers import SAMPLERS, make_sampler
from sweep.service.search.space import (
    config_key,
    distributions,
    is_active,
    run_once_size,
    unseen_configuration,
)
from sweep.service.states import TrialState
from sweep.service.tables import Experiment, Trial, TrialMetric

log = logging.getLogger("sweep.service.search")
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

IMPORTANCE_EVALUATORS: dict[str, Callable[[], optuna.importance.BaseImportanceEvaluator]] = {
    "fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
    "mean_decrease_impurity": lambda: optuna.importance.MeanDecreaseImpurityImportanceEvaluator(
        seed=0
    ),
    "ped_anova": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
}  # built on demand: optuna.importance loads scikit-learn
# A violated constraint marks params that ran out of memory as infeasible: the system attr
# Trial.set_constraint("memory", ...) writes, which constraint-aware samplers (TPE) read.
OUT_OF_MEMORY = "constraints:memory"
# An ask ahead waits this long after its claim commits, so that the claim's answer leaves
# first: an ask holding the interpreter lock slows the answer's way out (at 10,000 trials,
# claims took 39 ms p50 without the wait, 16 ms with it). A claim that comes sooner asks the
# pending suggestion itself.
AHEAD_DELAY_SECONDS = 0.02
# The longest an asking transaction waits for the end of the one whose asks the study holds,
# which the database has seen already, to reach this process; past it, the study is rebuilt.
SETTLE_SECONDS = 1.0
FINAL_STATES = {
    TrialState.COMPLETED: OptunaState.COMPLETE,
    TrialState.PRUNED: OptunaState.PRUNED,
    TrialState.FAILED: OptunaState.FAIL,
    TrialState.CANCELLED: OptunaState.FAIL,
}


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


@dataclass(frozen=True)
class Suggestion:
    """A new trial's params and what the sampler noted about it (Optuna's system attrs)."""

    params: dict[str, Any]
    system_attrs: dict[str, Any]


@dataclass(frozen=True)
class _Ahead:
    """Trial `number`'s suggestion, asked before its claim, and the study's system attrs as
    that ask left them."""

    number: int
    suggestion: Suggestion
    study_attrs: dict[str, Any]


class _Storage(optuna.storages.InMemoryStorage):
    """Optuna's in-memory storage, able to take back the trial it created last: an ask made
    ahead of its claim leaves the study as it found it."""

    def take_back(self, study_id: int, trial_id: int, study_attrs: dict[str, Any]) -> None:
        with self._lock:
            info = self._studies[study_id]
            if not info.trials or info.trials[-1]._trial_id != trial_id:
                raise RuntimeError(f"trial {trial_id} is not the study's last")
            info.trials.pop()
            del self._trial_id_to_study_id_and_number[trial_id]
            waiting = self._prev_waiting_trial_number
            waiting[study_id] = min(waiting[study_id], len(info.trials))
            info.system_attrs = study_attrs


@dataclass
class _Study:
    """One experiment's in-memory study and how far it has read the experiment's rows."""

    study: optuna.Study
    storage: _Storage
    study_id: int
    spec: dict[str, Any]
    dists: dict[str, BaseDistribution]
    # Distinct configurations in the space when each is to run once at most; None: no limit.
    size: int | None
    trial_count: int = 0  # trials (by number) already in the study
    finish_seq: int = 0  # finishes already applied
    trial_ids: dict[int, int] = field(default_factory=dict)  # trial number -> optuna trial id
    # The transaction whose asks this study holds and that has not been seen to commit yet,
    # and set once it is (or rolled back).
    asked_in: Session | None = None
    settled: threading.Event = field(default_factory=threading.Event)
    asks_ahead: bool = False  # its sampler's suggestions may be asked before their claims
    pending: int | None = None  # the trial whose suggestion is to be asked on the study as is
    ahead: _Ahead | None = None


class Optimizer:
    """The per-process cache of studies, bounded: the least recently used beyond `max_studies`
    are dropped (SQL has everything to rebuild them). Thread-safe: one lock per experiment."""

    def __init__(
        self,
        max_studies: int = 100,
        on_ask: Callable[[float], None] | None = None,
        ask_ahead_after: int | None = None,
    ) -> None:
        self.max_studies = max_studies
        self.on_ask = on_ask  # told the seconds each suggestion took
        # Trials an experiment must have before its suggestions are asked ahead; None: never.
        self.ask_ahead_after = ask_ahead_after
        # Studies built from SQL: on first use, after a rollback, or once dropped.
        self.builds = 0
        self._studies: OrderedDict[int, _Study] = OrderedDict()
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._background: ThreadPoolExecutor | None = None  # asks ahead, started on first use
        self._closed = False

    def suggests_ahead(self, trial_count: int) -> bool:
        """Whether an experiment with this many trials has its suggestions made before the
        results of the trials just trained are in (`ask_ahead_after`): at small budgets that
        costs search quality, past it none that was measurable."""
        return self.ask_ahead_after is not None and trial_count >= self.ask_ahead_after

    def close(self) -> None:
        """Wait for the ask ahead under way; no more start (claims ask for themselves)."""
        with self._guard:
            self._closed = True
            background, self._background = self._background, None
        if background is not None:
            background.shutdown(cancel_futures=True)

    @contextmanager
    def _study(
        self, session: Session, experiment: Experiment, asking: bool = False
    ) -> Iterator[_Study]:
        """The experiment's study, in step with everything committed, under its lock.

        A transaction that fails after touching the study leaves it ahead of SQL, so the
        study is dropped on rollback and rebuilt on next use. `asking`: the caller holds the
        experiment's row lock and will ask. Then any other transaction that asked has ended
        in the database, but its commit or rollback may not have reached this process yet
        (the database releases locks first): a study holding such asks is rebuilt at once.
        """
        with self._guard:
            lock = self._locks.setdefault(experiment.id, threading.Lock())
        with lock:
            study = self._cached(experiment)
            if asking and study.asked_in not in (None, session):
                # Its end reaches this process a moment after the database's: wait for it
                # rather than rebuild (claims taking the row lock one after another rebuilt
                # the study each time).
                study.settled.wait(SETTLE_SECONDS)
                study = self._cached(experiment)  # another one if that transaction rolled back
            if asking and study.asked_in not in (None, session):
                self.forget(experiment.id)
                study = self._cached(experiment)
            if study.pending is not None and not self._ask_ahead(experiment.id, study):
                study = self._cached(experiment)  # before the study reads anything newer
            on_rollback(session, lambda: self._abandon(experiment.id, study))
            if asking and study.asked_in is not session:
                study.asked_in, study.settled = session, threading.Event()
                after_commit(session, lambda: _settle(study, session))
            try:
                _catch_up(session, study, experiment)
            except _Stale:  # a trial was rewound by another process: start from SQL again
                self.forget(experiment.id)
                study = self._cached(experiment)
                _catch_up(session, study, experiment)
            for key, value in experiment.study_attrs.items():  # as the last ask left them
                study.storage.set_study_system_attr(study.study_id, key, value)
            yield study

    def _cached(self, experiment: Experiment) -> _Study:
        """The experiment's study, built if need be, as the most recently used; the least
        recently used beyond the bound are dropped."""
        with self._guard:
            study = self._studies.get(experiment.id)
            if study is not None:
                self._studies.move_to_end(experiment.id)
                return study
        study = _new_study(experiment)  # outside the guard: other experiments go on meanwhile
        with self._guard:
            self.builds += 1
            self._studies[experiment.id] = study
            while len(self._studies) > self.max_studies:
                self._studies.popitem(last=False)
        return study

    def cached(self) -> int:
        """How many studies this process holds."""
        return len(self._studies)

    def forget(self, experiment_id: int) -> None:
        with self._guard:
            self._studies.pop(experiment_id, None)

    def _abandon(self, experiment_id: int, study: _Study) -> None:
        """A transaction that used the study rolled back: it may be ahead of SQL."""
        self.forget(experiment_id)
        study.settled.set()

    def ask(
        self,
        session: Session,
        experiment: Experiment,
        number: int,
        fixed: dict[str, Any] | None = None,
    ) -> Suggestion | None:
        """Suggest the params of trial `number` from every trial before it; `fixed` params
        (an enqueued trial's) are taken as given and the sampler picks the rest.

        In a finite space without repeats, a configuration some trial already has is swapped
        for one no trial has, and None means every configuration has been handed out.
        """
        with self._study(session, experiment, asking=True) as s:
            suggestion, rebuild = self._ask_one(s, experiment, number, fixed)
            if suggestion is not None and not rebuild:
                self._plan_ahead(session, s, experiment)
            return suggestion

    def ask_many(
        self, session: Session, experiment: Experiment, number: int, count: int
    ) -> tuple[list[Suggestion], bool]:
        """The params of trials `number`, `number` + 1, ... up to `count` of them, each
        suggested as `ask` would with the ones before it running (one catch-up with SQL for
        them all). Also says whether the space ran out: fewer suggestions than asked for
        without running out means the rest must be asked again later."""
        suggestions: list[Suggestion] = []
        with self._study(session, experiment, asking=True) as s:
            for n in range(number, number + count):
                suggestion, rebuild = self._ask_one(s, experiment, n, None)
                if suggestion is None:
                    return suggestions, True
                suggestions.append(suggestion)
                if rebuild:  # the study no longer matches what SQL will hold: ask again later
                    return suggestions, False
            self._plan_ahead(session, s, experiment)
        return suggestions, False

    def _ask_one(
        self, s: _Study, experiment: Experiment, number: int, fixed: dict[str, Any] | None
    ) -> tuple[Suggestion | None, bool]:
        """Trial `number`'s suggestion, and whether the study must be rebuilt before the next."""
        if s.trial_count != number:
            raise RuntimeError(f"study holds {s.trial_count} trials, asked for #{number}")
        unique = s.size is not None and fixed is None
        seen = _seen(s) if unique else set()
        if unique and len(seen) >= (s.size or 0):
            return None, False
        ahead, s.ahead = s.ahead, None
        if ahead is not None and ahead.number != number:  # another process took its number
            s.asks_ahead = False
        if ahead is not None and ahead.number == number and fixed is None:
            trial_id = _add_trial(s, ahead.suggestion.params, ahead.suggestion.system_attrs, {})
            for key, value in ahead.study_attrs.items():
                s.storage.set_study_system_attr(s.study_id, key, value)
            suggestion = ahead.suggestion
        else:
            trial_id, suggestion = self._sample(s, number, fixed)
        s.trial_ids[number] = trial_id
        s.trial_count += 1
        study_attrs = s.storage.get_study_system_attrs(s.study_id)
        if study_attrs != experiment.study_attrs:  # the caller holds the experiment's lock
            experiment.study_attrs = copy.deepcopy(study_attrs)
        if unique and config_key(suggestion.params) in seen:
            seed = s.spec["sampler"]["seed"]
            rng = random.Random(number if seed is None else seed + number)
            unseen = unseen_configuration(s.spec["search_space"], seen, s.size or 0, rng)
            assert unseen is not None  # fewer seen than the space holds
            # The study holds the sampler's own params for this trial: rebuild it from
            # SQL, where the trial will have these.
            self.forget(experiment.id)
            return Suggestion(unseen, suggestion.system_attrs), True
        return suggestion, False

    def _sample(
        self, s: _Study, number: int, fixed: dict[str, Any] | None
    ) -> tuple[int, Suggestion]:
        """Ask the sampler for trial `number` on the study as it stands; the new trial stays in
        the study (its Optuna id is returned with the suggestion)."""
        seed = s.spec["sampler"]["seed"]
        if seed is not None:
            reseed(s.study.sampler, seed + number)
        if fixed is not None:  # a waiting trial the next ask takes up
            s.study.enqueue_trial(fixed)
        started = time.perf_counter()
        trial = s.study.ask()
        params = suggest_all(trial, s.dists, s.spec)
        if self.on_ask is not None:
            self.on_ask(time.perf_counter() - started)
        attrs = copy.deepcopy(s.storage.get_trial_system_attrs(trial._trial_id))
        return trial._trial_id, Suggestion(params, attrs)

    def _plan_ahead(self, session: Session, s: _Study, experiment: Experiment) -> None:
        """After a claim's asks: the next trial's suggestion is to be asked on the study as
        they left it, in the background once the claim commits (or by whoever touches the
        study first)."""
        if (
            not s.asks_ahead
            or self.ask_ahead_after is None
            or not self.ask_ahead_after <= s.trial_count < experiment.n_trials
        ):
            return
        s.pending = s.trial_count
        experiment_id = experiment.id
        after_commit(session, lambda: self._in_background(experiment_id, s))

    def _in_background(self, experiment_id: int, s: _Study) -> None:
        with self._guard:
            if self._closed:
                return
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="sweep-ask-ahead")
            self._background.submit(self._ask_pending, experiment_id, s)

    def _ask_pending(self, experiment_id: int, s: _Study) -> None:
        time.sleep(AHEAD_DELAY_SECONDS)
        with self._guard:
            lock = self._locks.setdefault(experiment_id, threading.Lock())
        with lock:
            if s.pending is not None and self._studies.get(experiment_id) is s:
                self._ask_ahead(experiment_id, s)

    def _ask_ahead(self, experiment_id: int, s: _Study) -> bool:
        """Ask the pending suggestion on the study as it stands (its lock held), and take
        the new trial back out: the study stays in step with SQL. False: the ask failed and
        the study is dropped (the claim asks again, and fails there if it must)."""
        number, s.pending = s.pending, None
        assert number == s.trial_count  # nothing was read from SQL since it was planned
        study_attrs = copy.deepcopy(s.storage.get_study_system_attrs(s.study_id))
        try:
            trial_id, suggestion = self._sample(s, number, None)
            asked_attrs = copy.deepcopy(s.storage.get_study_system_attrs(s.study_id))
            s.storage.take_back(s.study_id, trial_id, study_attrs)
        except Exception:
            log.exception("asking ahead failed: trial #%d, experiment %d", number, experiment_id)
            self.forget(experiment_id)
            return False
        s.ahead = _Ahead(number, suggestion, asked_attrs)
        return True

    def should_prune(
        self,
        session: Session,
        experiment: Experiment,
        number: int | None,
        system_attrs: dict[str, Any],
        curve: dict[int, float],
    ) -> tuple[bool, dict[str, Any] | None]:
        """Whether the pruner stops trial `number`, given its objective per epoch so far and
        its system_attrs; and its new system_attrs when the pruner noted something on it (such
        as the rungs it passed), else None."""
        assert number is not None  # only trials that started are in a study
        try:
            return self._prune(session, experiment, number, system_attrs, curve)
        except _Stale:  # the study still holds an earlier attempt's later epochs
            self.forget(experiment.id)
            return self._prune(session, experiment, number, system_attrs, curve)

    def _prune(
        self,
        session: Session,
        experiment: Experiment,
        number: int,
        system_attrs: dict[str, Any],
        curve: dict[int, float],
    ) -> tuple[bool, dict[str, Any] | None]:
        with self._study(session, experiment) as s:
            trial_id = s.trial_ids[number]
            _set_curve(s, trial_id, curve)
            _set_system_attrs(s, trial_id, system_attrs)
            prune = s.study.pruner.prune(s.study, s.storage.get_trial(trial_id))
            attrs = s.storage.get_trial_system_attrs(trial_id)
            return prune, copy.deepcopy(attrs) if attrs != system_attrs else None

    def importance(self, session: Session, experiment: Experiment, evaluator: str) -> Importance:
        """Each parameter's share of the objective's variance over the completed trials."""
        with self._study(session, experiment) as s:
            completed = s.study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE,))
            if len(completed) < 2:
                raise Conflict(
                    f"importance needs 2 completed trials; experiment {experiment.id} has "
                    f"{len(completed)}"
                )
            try:
                importances = optuna.importance.get_param_importances(
                    s.study,
                    evaluator=IMPORTANCE_EVALUATORS[evaluator](),
                    target=(lambda t: t.values[0]) if len(s.study.directions) > 1 else None,
                )
            except (ValueError, RuntimeError) as exc:  # e.g. no parameter common to all
                raise Conflict(f"importance cannot be computed: {exc}") from exc
        return Importance(
            metric=experiment.metric,
            evaluator=evaluator,
            trials=len(completed),
            importances={name: float(v) for name, v in importances.items()},
        )

    def history(self, session: Session, experiment: Experiment) -> list[optuna.trial.FrozenTrial]:
        """Every trial of the experiment as Optuna sees it, running ones with every epoch
        reported so far (reports the pruner could not act on leave the study alone)."""
        try:
            return self._history(session, experiment)
        except _Stale:  # the study still holds an earlier attempt's later epochs
            self.forget(experiment.id)
            return self._history(session, experiment)

    def _history(self, session: Session, experiment: Experiment) -> list[optuna.trial.FrozenTrial]:
        with self._study(session, experiment) as s:
            running = session.execute(
                select(Trial.id, Trial.number).where(
                    Trial.experiment_id == experiment.id, Trial.state == TrialState.RUNNING
                )
            ).all()
            curves = _curves(session, [trial_id for trial_id, _ in running])
            for trial_id, number in running:
                if number in s.trial_ids:  # not one created since the study caught up
                    _set_curve(s, s.trial_ids[number], curves.get(trial_id, {}))
            return s.study.get_trials(deepcopy=True)


def _new_study(experiment: Experiment) -> _Study:
    storage = _Storage()
    study = optuna.create_study(
        storage=storage,
        # A fixed name: pruners such as Hyperband derive a trial's bracket from it.
        study_name=f"experiment-{experiment.id}",
        sampler=make_sampler(experiment.spec),
        pruner=make_pruner(experiment.spec["pruner"]),
        directions=directions(experiment.spec),
    )
    return _Study(
        study=study,
        storage=storage,
        study_id=storage.get_study_id_from_name(study.study_name),
        spec=experiment.spec,
        dists=distributions(experiment.spec["search_space"]),
        size=run_once_size(experiment.spec),
        asks_ahead=SAMPLERS[experiment.spec["sampler"]["name"]].asks_ahead,
    )


def _settle(s: _Study, session: Session) -> None:
    """The transaction that asked has committed: the study is in step with SQL again."""
    if s.asked_in is session:
        s.asked_in = None
        s.settled.set()


# The columns a study needs of the trials created and finished since it last read: the
# catch-up reads these, not whole rows (statements built once).
_CREATED = (
    select(Trial.id, Trial.number, Trial.params, Trial.system_attrs)
    .where(Trial.experiment_id == bindparam("experiment_id"), Trial.number >= bindparam("since"))
    .order_by(Trial.number)
)
_FINISHED = (
    select(
        Trial.id,
        Trial.number,
        Trial.state,
        Trial.value,
        Trial.values,
        Trial.last_objective,
        Trial.system_attrs,
        Trial.failure_reason,
        Trial.finish_seq,
    )
    .where(
        Trial.experiment_id == bindparam("experiment_id"),
        Trial.finish_seq > bindparam("since"),
        Trial.number.is_not(None),  # an enqueued trial cancelled before it ever started
    )
    .order_by(Trial.finish_seq)
)


def _catch_up(session: Session, s: _Study, experiment: Experiment) -> None:
    if (s.trial_count, s.finish_seq) == (experiment.trial_count, experiment.finish_seq):
        # Nothing created or finished since the study last read: the queries below would
        # find nothing (every trial's finish_seq is at most its experiment's).
        return
    experiment_id = experiment.id
    # Finishes are read first: a trial's creation commits before its finish, so every trial
    # seen finished here is also seen by the (later) query for created trials, even when
    # another process claims and finishes trials between the two statements. Either query is
    # left out when the experiment's row says it has nothing for the study: whatever committed
    # since that row was read is read next time.
    finished: Sequence[Row[Any]] = ()
    if experiment.finish_seq > s.finish_seq:
        finished = session.execute(
            _FINISHED, {"experiment_id": experiment_id, "since": s.finish_seq}
        ).all()
    created: Sequence[Row[Any]] = ()
    if experiment.trial_count > s.trial_count or any(t.number >= s.trial_count for t in finished):
        created = session.execute(
            _CREATED, {"experiment_id": experiment_id, "since": s.trial_count}
        ).all()
    curves = _curves(session, [t.id for t in (*created, *finished)])
    for trial in created:
        _add_running(s, trial, curves.get(trial.id, {}))
    for trial in finished:
        _apply_finish(s, trial, curves.get(trial.id, {}))
    # Finishes commit in finish_seq order, so the queries saw every one up to the experiment's
    # (some are of no numbered trial: an enqueued one cancelled before it started).
    s.finish_seq = max(s.finish_seq, experiment.finish_seq)


def _curves(session: Session, trial_ids: list[int]) -> dict[int, dict[int, float]]:
    if not trial_ids:
        return {}
    rows = session.execute(_CURVES, {"trial_ids": sorted(set(trial_ids))})
    curves: dict[int, dict[int, float]] = {}
    for trial_id, epoch, objective in rows:
        if objective is not None and math.isfinite(objective):
            curves.setdefault(trial_id, {})[epoch] = objective
    return curves


_CURVES = select(TrialMetric.trial_id, TrialMetric.epoch, TrialMetric.objective).where(
    TrialMetric.trial_id.in_(bindparam("trial_ids", expanding=True))
)


def _add_running(s: _Study, trial: Row[Any], curve: dict[int, float]) -> None:
    if trial.number != s.trial_count:
        raise RuntimeError(f"trial #{trial.number} arrived before #{s.trial_count}")
    s.trial_ids[trial.number] = _add_trial(s, trial.params, trial.system_attrs, curve)
    s.trial_count += 1


def _add_trial(
    s: _Study, params: dict[str, Any], system_attrs: dict[str, Any], curve: dict[int, float]
) -> int:
    """A running trial with these params, added to the study; its Optuna id."""
    template = optuna.trial.create_trial(
        state=OptunaState.RUNNING,
        params=params,
        distributions={name: s.dists[name] for name in params},
        intermediate_values=curve,
        system_attrs=system_attrs,
    )
    return s.storage.create_new_trial(s.study_id, template_trial=template)


class _Stale(Exception):
    """The study holds epochs of a trial that SQL no longer has (a new attempt resumed from
    an earlier checkpoint in another process): it must be rebuilt."""


def _set_curve(s: _Study, trial_id: int, curve: dict[int, float]) -> None:
    if set(s.storage.get_trial(trial_id).intermediate_values) - set(curve):
        raise _Stale()
    for epoch, value in curve.items():
        s.storage.set_trial_intermediate_value(trial_id, epoch, value)


def _apply_finish(s: _Study, trial: Row[Any], curve: dict[int, float]) -> None:
    trial_id = s.trial_ids[trial.number]  # only trials that started are read (_FINISHED)
    _set_system_attrs(s, trial_id, trial.system_attrs)
    out_of_memory = trial.failure_reason == "oom"
    if not out_of_memory:  # an OOM trial's curve is no pruning statistic
        _set_curve(s, trial_id, curve)
    state = FINAL_STATES[TrialState(trial.state)]
    values: list[float] | None = None
    several = len(s.study.directions) > 1
    if out_of_memory and not several:  # an infeasible point to move away from, not ignored
        s.storage.set_trial_system_attr(trial_id, OUT_OF_MEMORY, 1.0)
        state, values = OptunaState.COMPLETE, [trial.last_objective or 0.0]
    elif out_of_memory:
        state = OptunaState.FAIL
    elif state == OptunaState.COMPLETE and several and trial.values is not None:
        values = list(trial.values)
    elif state == OptunaState.COMPLETE and trial.value is not None:
        values = [trial.value]
    elif state == OptunaState.PRUNED and curve:
        values = [curve[max(curve)]]
    s.storage.set_trial_state_values(trial_id, state, values)
    s.finish_seq = max(s.finish_seq, trial.finish_seq or 0)


def directions(spec: dict[str, Any]) -> list[StudyDirection]:
    objectives = spec.get("objectives") or [spec["objective"]]
    return [StudyDirection[o["direction"].upper()] for o in objectives]


def _seen(s: _Study) -> set[Any]:
    trials = s.storage.get_all_trials(s.study_id, deepcopy=False)
    return {config_key(t.params) for t in trials}


def _set_system_attrs(s: _Study, trial_id: int, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        s.storage.set_trial_system_attr(trial_id, key, value)


def suggest_all(
    trial: optuna.Trial, dists: dict[str, BaseDistribution], spec: dict[str, Any]
) -> dict[str, Any]:
    """Define-by-run in spec order: a parameter is suggested only when its condition holds."""
    params: dict[str, Any] = {}
    for name, dist in dists.items():
        if is_active(spec["search_space"][name], params):
            params[name] = _suggest(trial, name, dist)
    return params


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, CategoricalDistribution)
    return trial.suggest_categorical(name, dist.choices)
