"""Typed dependencies: the transaction of a request, and "does it exist" written once."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Header, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from sweep.service import attempts, auth, rows
from sweep.service.auth import (
    ADMINS,
    CONTROLLERS,
    EVERYONE,
    READERS,
    RUNNERS,
    Caller,
    KnownCallers,
    Role,
)
from sweep.service.claims import ClaimWatcher
from sweep.service.config import Settings
from sweep.service.db import Database, unavailable
from sweep.service.errors import TooLarge
from sweep.service.limits import SubmissionRate
from sweep.service.metrics import Metrics
from sweep.service.schemas import MAX_INT
from sweep.service.search import Optimizer
from sweep.service.search.plots import Plots
from sweep.service.store import Store
from sweep.service.tables import Experiment, Trial

log = logging.getLogger("sweep.service.auth")


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_optimizer(request: Request) -> Optimizer:
    optimizer: Optimizer = request.app.state.optimizer
    return optimizer


async def get_plots(request: Request) -> Plots:
    plots: Plots = request.app.state.plots
    return plots


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_submissions(request: Request) -> SubmissionRate:
    submissions: SubmissionRate = request.app.state.submissions
    return submissions


DatabaseDep = Annotated[Database, Depends(get_db)]
SubmissionsDep = Annotated[SubmissionRate, Depends(get_submissions)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
OptimizerDep = Annotated[Optimizer, Depends(get_optimizer)]
PlotsDep = Annotated[Plots, Depends(get_plots)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]


async def get_session(request: Request, db: DatabaseDep) -> AsyncIterator[Session]:
    """The request's one transaction: read-only for GET, committed before the response.

    At most REQUEST_TRANSACTIONS are open at once, fewer than the pool's connections, and
    a request waits for its turn on the event loop, holding no thread. Otherwise routes
    waiting for a connection could hold every thread of the pool that finished requests
    need to answer and commit, while those requests hold the connections (1,000 workers
    did that: every checkout timed out, in waves of 30 s). The transaction begins on the
    event loop (its connection is taken at its first statement, in the route's thread) and
    ends in a thread of its own limiter.
    """
    turn = object()
    state = request.app.state
    await state.transactions.acquire_on_behalf_of(turn)
    try:
        transaction = db.transaction(write=request.method != "GET")
        session = transaction.__enter__()
        try:
            yield session
        except BaseException as exc:
            await _end(state.endings, transaction, exc)
            raise
        await _end(state.endings, transaction, None)
    finally:
        state.transactions.release_on_behalf_of(turn)


async def _end(
    endings: anyio.CapacityLimiter,
    transaction: AbstractContextManager[Session],
    exc: BaseException | None,
) -> None:
    """Commit (or, after `exc`, roll back) in a thread, even when the request is cancelled:
    a transaction left open would keep its connection."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(
            transaction.__exit__,
            None if exc is None else type(exc),
            exc,
            None if exc is None else exc.__traceback__,
            limiter=endings,
        )


# scope="function": the transaction commits before the response is sent, so a client never
# sees a success that was not stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

T = TypeVar("T")


class Transaction:
    """A request's one transaction, begun, used and committed in one worker thread: for the
    calls workers make most (reports, heartbeats, completions), one thread hop where
    SessionDep takes two. It takes its turn among REQUEST_TRANSACTIONS as SessionDep does,
    and runs in `threads`, one for each turn, so it never waits for a thread: not on the
    others, and not on the threads that sync routes share. (Handing work to an executor
    costs the event loop less than to anyio's threads: 54 Python function calls, not 120.)"""

    def __init__(
        self, db: Database, turns: anyio.CapacityLimiter, threads: ThreadPoolExecutor
    ) -> None:
        self.db = db
        self.turns = turns
        self.threads = threads

    async def run(self, work: Callable[[Session], T]) -> T:
        """`work`'s result, committed (rolled back if it raises) before this returns. A
        cancelled request still waits for the thread, so the transaction always ends before
        its turn is given back. The thread runs in the request's context (its request id)."""
        turn = object()
        await self.turns.acquire_on_behalf_of(turn)
        try:
            call = partial(contextvars.copy_context().run, self._in_thread, work)
            done = asyncio.get_running_loop().run_in_executor(self.threads, call)
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([done])  # ended, whatever its outcome
                raise
        finally:
            self.turns.release_on_behalf_of(turn)

    def _in_thread(self, work: Callable[[Session], T]) -> T:
        with self.db.transaction() as session:
            return work(session)


@dataclass(frozen=True)
class Services:
    """What the worker protocol's calls use of the app, as one dependency. They are the calls
    made most, and FastAPI solves each dependency of each call: one for every part cost a
    report about 80 Python function calls apiece on the event loop."""

    db: Database
    settings: Settings
    optimizer: Optimizer
    metrics: Metrics
    watcher: ClaimWatcher
    transaction: Transaction


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


# Ids past the columns' range are refused as invalid input rather than looked up.
ExperimentId = Annotated[int, Path(ge=1, le=MAX_INT)]
TrialId = Annotated[int, Path(ge=1, le=MAX_INT)]
WorkerId = Annotated[int, Path(ge=1, le=MAX_INT)]
TokenId = Annotated[int, Path(ge=1, le=MAX_INT)]


async def dataset_body(request: Request, settings: SettingsDep) -> bytes:
    """A dataset upload's body, refused once it passes the datasets' cap (a dataset is parsed
    in memory; artifacts are streamed, see sweep.service.uploads)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > settings.max_dataset_bytes:
            raise TooLarge(f"upload exceeds {settings.max_dataset_bytes} bytes")
    return bytes(data)


DatasetBody = Annotated[bytes, Depends(dataset_body)]

# The sha256 of an upload's bytes, as its sender computed it (hex).
ContentSha256 = Annotated[
    str, Header(alias="X-Content-SHA256", pattern=r"^[0-9a-fA-F]{64}$", description="hex")
]


# The attempt a worker's call is about (from its claim); a stale one is refused with 409.
MAX_ATTEMPT_TOKEN = 64
AttemptToken = Annotated[
    str, Header(alias="X-Attempt-Token", min_length=1, max_length=MAX_ATTEMPT_TOKEN)
]


bearer = HTTPBearer(auto_error=False, description="a token from `sweep token create`")


async def get_known_callers(request: Request) -> KnownCallers:
    known: KnownCallers = request.app.state.known_callers
    return known


KnownCallersDep = Annotated[KnownCallers, Depends(get_known_callers)]


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller behind the bearer token (401 without a valid one). (Every call needs it: it
    reads the app's state itself rather than through dependencies.)"""
    header = f"Bearer {credentials.credentials}" if credentials else None
    return await caller_for(request.app.state, header)


async def caller_for(state: State, header: str | None) -> Caller:
    """The caller behind an `Authorization: Bearer ...` header: from this process's recent
    checks when it has one, without leaving the event loop, else from SQL."""
    db: Database = state.db
    known: KnownCallers = state.known_callers
    if not state.settings.auth:
        return auth.NOBODY_CHECKED
    caller = known.get(header)
    if caller is None:
        caller = await known.checked(
            header, lambda: run_in_threadpool(_identify, db, known, header)
        )
    return caller


def _identify(db: Database, known: KnownCallers, header: str | None) -> Caller:
    with db.transaction(write=False) as session:
        caller, stale = auth.identify(session, header)
    if stale and caller.token_id is not None:
        try:
            with db.transaction() as session:
                auth.touch(session, caller.token_id)
        except DBAPIError as exc:  # bookkeeping: a read-only database still serves reads
            if not unavailable(exc):
                raise
            log.warning("token %s: last use not recorded: %s", caller.token_id, exc.orig)
    known.put(header, caller)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


class Allow:
    """A route's decision: which roles may call it (403 for the others). It finds the caller
    itself rather than through CallerDep: one dependency fewer for FastAPI to solve."""

    def __init__(self, roles: frozenset[Role]) -> None:
        self.roles = roles

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        caller = await get_caller(request, credentials)
        caller.require(self.roles)
        return caller


# As route dependencies (the decision, when the route needs no caller) and as parameters.
READ, CONTROL, RUN, ADMIN = (Depends(Allow(r)) for r in (READERS, CONTROLLERS, RUNNERS, ADMINS))
ANY_TOKEN = Depends(Allow(EVERYONE))
Reader = Annotated[Caller, Depends(Allow(READERS))]
Controller = Annotated[Caller, Depends(Allow(CONTROLLERS))]
Runner = Annotated[Caller, Depends(Allow(RUNNERS))]
Admin = Annotated[Caller, Depends(Allow(ADMINS))]


def experiment_or_404(
    experiment_id: ExperimentId, session: SessionDep, caller: CallerDep
) -> Experiment:
    experiment = rows.experiment(session, experiment_id)
    caller.check_sees(experiment)
    return experiment


def trial_or_404(trial_id: TrialId, session: SessionDep, caller: CallerDep) -> Trial:
    trial = rows.trial(session, trial_id)
    caller.check_sees(rows.experiment(session, trial.experiment_id))
    return trial


async def visible_trial_id(trial_id: TrialId, session: SessionDep, caller: CallerDep) -> int:
    """A worker-protocol trial id, 404 when the trial belongs to another project. A caller of
    every project is not looked up here: the call itself locks the trial, 404 if it is not."""
    if caller.project is not None:
        await run_in_threadpool(attempts.check_visible, session, trial_id, caller.project)
    return trial_id


ExperimentDep = Annotated[Experiment, Depends(experiment_or_404)]
TrialDep = Annotated[Trial, Depends(trial_or_404)]
VisibleTrialId = Annotated[int, Depends(visible_trial_id)]
