"""Claims that wait: one watcher per API process, rather than a database poll per claim.

A claim that finds nothing to start waits here. The watcher runs one round at a time:

1. one read transaction learns which running experiments have work and free slots
   (whoever waits), the waiting workers it has not seen yet, and whether the experiments
   that waiting claims name still exist and are not cancelled;
2. the waiting workers are matched to those experiments in memory, oldest claim first, as
   sweep.service.workers.cannot_run says;
3. each matched group's trials start together (attempts.claim_waiting: one transaction,
   one row lock and one batch of sampler asks per CLAIM_BATCH workers), and their claims
   are answered.

Rounds run while claims wait, whenever something that may make work happened: a commit in
this process (Database.changes), a commit in another API process (PostgreSQL NOTIFY, see
db.Listener), and every claim_poll_seconds in case a notification was missed. A round
that finds no open experiment costs one query, whatever the number of claims waiting.
Waiting workers are marked seen in one statement every TOUCH_SECONDS, so that idle
workers stay live (sweep.service.workers.LIVE_WITHIN).

A new claim joins the waiters unchecked, instead of trying on its own, while the last round
found no open experiment and nothing changed since (`quiet`), while other claims wait, or
while ALONE others are trying on their own.
A round checks all such claims together: its read already refuses an unknown worker or a
cancelled experiment, and one more query finds which of them still hold a running trial (a
claim whose answer was lost), which they are given back. So idle workers polling cost a
round every claim_check_seconds however many of them arrive, and claims arriving while
a submission wakes the waiting ones start in the same batches rather than one by one.

A claim whose trial a round is starting as its wait runs out waits for that batch: its
answer would otherwise be lost, and its worker hold a trial it does not know of until it
claims again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from sweep.service import attempts, workers
from sweep.service.db import Database, unavailable
from sweep.service.errors import Conflict, NotFound, SweepError
from sweep.service.rows import TRAINING
from sweep.service.schemas import Assignment
from sweep.service.search import Optimizer
from sweep.service.states import ExperimentState, TrialState
from sweep.service.tables import Experiment, Trial, Worker, utcnow

CLAIM_BATCH = 100  # workers whose trials start in one transaction
# A claim joins unchecked only when it waits this many check_seconds or more: a shorter one
# looks first, since its check could come too late.
UNCHECKED_WAITS = 5
# Claims that may look for work on their own at once; more join the waiting ones, so that a
# burst of claims (a thousand polls running out together) starts in the watcher's batches.
ALONE = 4
TOUCH_SECONDS = 30.0  # how often a waiting worker's last_seen_at is written
MAX_KNOWN_WORKERS = 10_000  # registrations kept in memory (they never change)
log = logging.getLogger("sweep.service.claims")


@dataclass(eq=False)
class Waiter:
    """One claim waiting: the worker, what it asked for, and where its answer goes."""

    worker_id: int
    experiment_id: int | None
    project: str | None  # the caller's project; None: every project
    answer: asyncio.Future[Assignment | None] = field(repr=False)
    arrived: int = 0  # arrival order: the oldest claim is served first
    checked: bool = True  # False: joined without a look; a round checks what it holds
    starting: bool = False  # a round is starting its trial: the claim waits for that
    overdue: bool = False  # its wait ran out while its trial was starting


@dataclass
class _Plan:
    """What a round's read found: which waiters get which experiment's trials, which
    claims end with an error, and whether no experiment had work for anyone."""

    groups: list[tuple[int, list[Waiter]]]
    refused: list[tuple[Waiter, SweepError]]
    holding: list[Waiter]  # unchecked claims of workers that hold a running trial
    nothing_open: bool


class ClaimWatcher:
    def __init__(
        self,
        db: Database,
        optimizer: Optimizer,
        *,
        lease_seconds: float,
        poll_seconds: float,
        check_seconds: float = 0.2,
        on_claims: Callable[[int], None] | None = None,
    ) -> None:
        self.db = db
        self.optimizer = optimizer
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.on_claims = on_claims  # told how many claims each round answered with a trial
        self._waiting: dict[int, Waiter] = {}  # by worker: a newer claim replaces an older
        self._known: dict[int, Worker] = {}
        self._touched: dict[int, float] = {}
        self._order = itertools.count()
        self._quiet_at: int | None = None  # the change generation a round found no work at
        self.check_seconds = check_seconds
        self._check_due = asyncio.Event()  # set check_seconds after an unchecked claim joins
        self._check_timer: asyncio.TimerHandle | None = None
        self._alone = 0  # claims looking for work on their own now

    def quiet(self, generation: int) -> bool:
        """Whether the last round found no open experiment and nothing changed since: a new
        claim then looks before it takes a lock."""
        return self._quiet_at == generation

    def waiting(self) -> int:
        return len(self._waiting)

    def may_join_unchecked(self, wait: float, generation: int) -> bool:
        """Whether a claim that waits `wait` seconds joins the waiting ones without looking
        for work itself: the service is quiet, others wait already, or ALONE others look."""
        long_enough = wait >= UNCHECKED_WAITS * self.check_seconds
        crowded = bool(self._waiting) or self._alone >= ALONE
        return long_enough and (self.quiet(generation) or crowded)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Around a claim looking for work on its own (may_join_unchecked counts them)."""
        self._alone += 1
        try:
            yield
        finally:
            self._alone -= 1

    async def wait(
        self,
        worker_id: int,
        *,
        experiment_id: int | None,
        project: str | None,
        timeout: float,
        gone: asyncio.Future[None],
        checked: bool = True,
    ) -> Assignment | None:
        """The trial a round starts for this worker within `timeout`, else None; None too
        when `gone` (its connection closed) or a newer claim of the same worker arrives.
        Raises what a claim would (NotFound, Conflict) when its experiment goes meanwhile.
        A claim not `checked` (it did not look at the database first) is answered as a
        claim would be by the next round, within check_seconds: refused, or given back the
        trial its worker holds."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Assignment | None] = loop.create_future()
        waiter = Waiter(worker_id, experiment_id, project, answer, next(self._order), checked)
        replaced = self._waiting.pop(worker_id, None)
        if replaced is not None and not replaced.answer.done():
            replaced.answer.set_result(None)
        self._waiting[worker_id] = waiter
        if not checked:
            if not self.quiet(self.db.changes.generation):
                self._check_due.set()  # there may be work for it: a round now
            elif self._check_timer is None:
                self._check_timer = loop.call_later(self.check_seconds, self._check_due.set)
        try:
            either: set[asyncio.Future[Assignment | None] | asyncio.Future[None]] = {answer, gone}
            await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if waiter.starting and not answer.done() and not gone.done():
                # Its trial is being started as its wait ran out: leaving now would strand
                # that trial until the worker's next claim. The round answers it either way.
                waiter.overdue = True
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            return answer.result() if answer.done() else None
        finally:
            if self._waiting.get(worker_id) is waiter:
                del self._waiting[worker_id]
            if not answer.done():
                answer.cancel()

    async def run(self, stopping: asyncio.Event) -> None:
        """Rounds until `stopping` is set."""
        changes = self.db.changes
        while not stopping.is_set():
            generation = changes.generation
            # Claims that join from here on wait for the next round's check (and a check
            # that fell due after its claims left has nothing to do).
            self._check_due.clear()
            if self._check_timer is not None:
                self._check_timer.cancel()
                self._check_timer = None
            if self._waiting:
                try:
                    await self._round(generation)
                except Exception as exc:  # a busy or unreachable database: next round
                    if not (isinstance(exc, DBAPIError) and unavailable(exc)):
                        log.exception("answering waiting claims failed")
            await self._pause(generation)

    async def _pause(self, generation: int) -> None:
        """Until a change after `generation`, a check falls due, or claim_poll_seconds."""
        changed = asyncio.ensure_future(self.db.changes.wait(generation, self.poll_seconds))
        due = asyncio.ensure_future(self._check_due.wait())
        try:
            await asyncio.wait({changed, due}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            due.cancel()

    async def _round(self, generation: int) -> None:
        waiters = sorted(self._waiting.values(), key=lambda w: w.arrived)
        plan = await run_in_threadpool(self._plan, waiters)
        self._quiet_at = generation if plan.nothing_open else None
        for waiter in waiters:
            waiter.checked = True
        for waiter, error in plan.refused:
            if not waiter.answer.done():
                waiter.answer.set_exception(error)
        for waiter in plan.holding:
            await self._give_back(waiter)
        for experiment_id, group in plan.groups:
            for start in range(0, len(group), CLAIM_BATCH):
                batch = [w for w in group[start : start + CLAIM_BATCH] if not w.answer.done()]
                if not batch:
                    continue
                for waiter in batch:
                    waiter.starting = True
                started: dict[int, Assignment] = {}
                try:
                    started = await run_in_threadpool(self._start, experiment_id, batch)
                finally:
                    _answer(batch, started)
                if self.on_claims is not None:
                    self.on_claims(len(started))
                if len(started) < len(batch):
                    break  # the experiment has no more work or slots now
        await run_in_threadpool(self._touch, [w.worker_id for w in waiters])

    def _plan(self, waiters: Sequence[Waiter]) -> _Plan:
        unchecked = {w.worker_id for w in waiters if not w.checked}
        with self.db.transaction(write=False) as session:
            self._learn(session, {w.worker_id for w in waiters})
            targets = _targets(session, {w.experiment_id for w in waiters} - {None})
            open_experiments = _open(session)
            holders = _holding(session, unchecked)
        refused: list[tuple[Waiter, SweepError]] = []
        holding: list[Waiter] = []
        candidates: list[Waiter] = []
        for waiter in waiters:
            error = self._refusal(waiter, targets)
            if error is not None:
                refused.append((waiter, error))
            elif waiter.worker_id in holders:
                holding.append(waiter)
            else:
                candidates.append(waiter)
        groups: list[tuple[int, list[Waiter]]] = []
        for experiment, slots in open_experiments:
            group = [w for w in candidates if self._may_run(w, experiment)][:slots]
            if group:
                groups.append((experiment.id, group))
                matched = set(map(id, group))
                candidates = [w for w in candidates if id(w) not in matched]
        return _Plan(groups, refused, holding, nothing_open=not open_experiments)

    async def _give_back(self, waiter: Waiter) -> None:
        """Answer an unchecked claim whose worker holds a running trial as a claim does:
        with that attempt, its lease renewed."""
        claim = partial(
            attempts.try_claim,
            self.db,
            self.optimizer,
            worker_id=waiter.worker_id,
            experiment_id=waiter.experiment_id,
            project=waiter.project,
            lease_seconds=self.lease_seconds,
            look_first=False,
        )
        try:
            assignment = await run_in_threadpool(claim)
        except SweepError as error:
            if not waiter.answer.done():
                waiter.answer.set_exception(error)
            return
        if assignment is not None and not waiter.answer.done():
            waiter.answer.set_result(assignment)

    def _learn(self, session: Session, worker_ids: set[int]) -> None:
        """Load the registrations of workers not seen yet (a registration never changes)."""
        unknown = worker_ids - self._known.keys()
        if not unknown:
            return
        if len(self._known) + len(unknown) > MAX_KNOWN_WORKERS:
            self._known.clear()
            unknown = worker_ids
        for worker in session.scalars(select(Worker).where(Worker.id.in_(unknown))):
            self._known[worker.id] = worker

    def _refusal(self, waiter: Waiter, targets: dict[int, Experiment]) -> SweepError | None:
        worker = self._known.get(waiter.worker_id)
        if worker is None or (waiter.project is not None and worker.project != waiter.project):
            return NotFound(f"worker {waiter.worker_id} not found")
        if waiter.experiment_id is None:
            return None
        target = targets.get(waiter.experiment_id)
        if target is None or (waiter.project is not None and target.project != waiter.project):
            return NotFound(f"experiment {waiter.experiment_id} not found")
        if target.state == ExperimentState.CANCELLED:
            return Conflict(f"experiment {waiter.experiment_id} is cancelled")
        return None

    def _may_run(self, waiter: Waiter, experiment: Experiment) -> bool:
        if waiter.experiment_id not in (None, experiment.id):
            return False
        if waiter.project not in (None, experiment.project):
            return False
        return workers.cannot_run(self._known[waiter.worker_id], experiment) is None

    def _start(self, experiment_id: int, batch: list[Waiter]) -> dict[int, Assignment]:
        with self.db.transaction() as session:
            return attempts.claim_waiting(
                session,
                optimizer=self.optimizer,
                experiment_id=experiment_id,
                worker_ids=[w.worker_id for w in batch],
                lease_seconds=self.lease_seconds,
            )

    def _touch(self, worker_ids: list[int]) -> None:
        """Mark waiting workers seen, each at most every TOUCH_SECONDS."""
        now = time.monotonic()
        due = [w for w in worker_ids if now - self._touched.get(w, -TOUCH_SECONDS) >= TOUCH_SECONDS]
        if not due:
            return
        with self.db.transaction() as session:
            session.execute(update(Worker).where(Worker.id.in_(due)).values(last_seen_at=utcnow()))
        for worker_id in due:
            self._touched[worker_id] = now
        if len(self._touched) > MAX_KNOWN_WORKERS:
            waiting = set(worker_ids)
            self._touched = {w: t for w, t in self._touched.items() if w in waiting}


def _answer(batch: list[Waiter], started: dict[int, Assignment]) -> None:
    """Answer a batch's claims with the trials started for them. Those that got none wait
    on, unless their wait ran out while the batch was starting: they are answered with none."""
    for waiter in batch:
        waiter.starting = False
        if waiter.answer.done():
            continue
        assignment = started.get(waiter.worker_id)
        if assignment is not None:
            waiter.answer.set_result(assignment)
        elif waiter.overdue:
            waiter.answer.set_result(None)


def _targets(session: Session, experiment_ids: set[int | None]) -> dict[int, Experiment]:
    if not experiment_ids:
        return {}
    found = session.scalars(select(Experiment).where(Experiment.id.in_(experiment_ids)))
    return {e.id: e for e in found}


def _holding(session: Session, worker_ids: set[int]) -> set[int]:
    """Those of these workers that hold a running trial still training."""
    if not worker_ids:
        return set()
    held = select(Trial.worker_id).where(Trial.worker_id.in_(worker_ids), TRAINING)
    return {w for w in session.scalars(held) if w is not None}


def _open(session: Session) -> list[tuple[Experiment, int]]:
    """Running experiments with work left and free slots, oldest first, each with how many
    trials could start in it now."""
    training = (
        select(func.count()).where(Trial.experiment_id == Experiment.id, TRAINING).scalar_subquery()
    )
    queued = (
        select(func.count())
        .where(Trial.experiment_id == Experiment.id, Trial.state == TrialState.QUEUED)
        .scalar_subquery()
    )
    has_queued = exists().where(
        Trial.experiment_id == Experiment.id, Trial.state == TrialState.QUEUED
    )
    rows = session.execute(
        select(Experiment, training, queued)
        .where(
            Experiment.state == ExperimentState.RUNNING,
            (Experiment.trial_count < Experiment.n_trials) | has_queued,
            training < Experiment.max_concurrent,
        )
        .order_by(Experiment.id)
    )
    return [
        (e, min(e.max_concurrent - n_running, max(e.n_trials - e.trial_count, 0) + n_queued))
        for e, n_running, n_queued in rows
    ]


async def until_gone(receive: Receive) -> None:
    """Return once the client of the request whose `receive` this is has disconnected (its
    body has been read: what comes next is the disconnect)."""
    while (await receive()).get("type") != "http.disconnect":
        pass
