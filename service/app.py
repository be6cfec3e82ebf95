"""The FastAPI application: create_app() wires settings, database, optimizer and routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sweep import logs
from sweep.service import artifacts, attempts, legacy_blobs, lifecycle, web, webhooks
from sweep.service.api import ROUTERS, TAGS, contract
from sweep.service.api import metrics as metrics_api
from sweep.service.api.deps import Services, Transaction
from sweep.service.api.lane import WorkerLane
from sweep.service.auth import KnownCallers
from sweep.service.claims import ClaimWatcher
from sweep.service.config import Settings
from sweep.service.db import (
    REQUEST_TRANSACTIONS,
    Database,
    Listener,
    is_sqlite,
    lost_a_race,
    unavailable,
)
from sweep.service.errors import SweepError
from sweep.service.limits import BodyLimit, SubmissionRate
from sweep.service.metrics import Metrics
from sweep.service.observe import Observe
from sweep.service.retrying import RETRY_HEADER, RunAgainOnRace
from sweep.service.search import Optimizer
from sweep.service.search.plots import Plots
from sweep.service.store import Store

API_PREFIX = "/api/v1"
EXPIRY_BATCH = 100
RETRY_AFTER_SECONDS = 2  # what a 503 tells callers to wait
# Python's cycle collector's thresholds in a server process (see server_app).
GC_THRESHOLDS = (50_000, 20, 100)
log = logging.getLogger("sweep.service")


def server_app() -> FastAPI:
    """The app as `sweep server` runs it, in each API process: Python's cycle collector runs
    less often there. A busy API process keeps many objects for seconds (a thousand workers'
    connections, calls waiting their turn), which the default thresholds (700, 10, 10) move
    to the oldest generation and then scan over and over: with 1,000 workers reporting, 24
    full collections a minute of 160-230 ms each, every one stalling the event loop. What the
    imports made is frozen out of collection and the thresholds are raised; reference
    counting still frees everything that is not in a cycle."""
    app = create_app()
    gc.collect()  # what is garbage now would never be collected once frozen
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.connect(settings.resolved_database_url())
        db.migrate()
        store = settings.open_store()
        await run_in_threadpool(legacy_blobs.into_store, db, store)
        app.state.db, app.state.store = db, store
        # Requests' transactions open at once, and the threads that end them
        # (sweep.service.api.deps.get_session).
        app.state.transactions = anyio.CapacityLimiter(REQUEST_TRANSACTIONS)
        app.state.endings = anyio.CapacityLimiter(REQUEST_TRANSACTIONS)
        transaction_threads = ThreadPoolExecutor(
            REQUEST_TRANSACTIONS, thread_name_prefix="sweep-transaction"
        )
        app.state.optimizer = Optimizer(
            max_studies=settings.max_cached_studies,
            on_ask=metrics.ask_seconds.observe,
            ask_ahead_after=settings.ask_ahead_after,
        )
        app.state.plots = Plots(app.state.optimizer, ttl=settings.plot_refresh_seconds)
        app.state.watcher = ClaimWatcher(
            db,
            app.state.optimizer,
            lease_seconds=settings.lease_seconds,
            poll_seconds=settings.claim_poll_seconds,
            check_seconds=settings.claim_check_seconds,
        )
        metrics.claims_waiting.set_function(app.state.watcher.waiting)
        app.state.services = Services(
            db=db,
            settings=settings,
            optimizer=app.state.optimizer,
            metrics=metrics,
            watcher=app.state.watcher,
            transaction=Transaction(db, app.state.transactions, transaction_threads),
        )
        listener = None if is_sqlite(db.engine) else Listener(db.engine, db.changes)
        if listener is not None:
            listener.start()
        log.info("sweep service on %s", db.engine.url.render_as_string(hide_password=True))
        if not settings.auth:
            log.warning("!" * 72)
            log.warning("AUTHENTICATION IS OFF (SWEEP_AUTH=false): anyone who can reach this")
            log.warning("server can read, change and delete every experiment.")
            log.warning("!" * 72)
        stopping = asyncio.Event()
        expiry = asyncio.create_task(_expire_leases_until(stopping, db, settings, metrics))
        cleaning = asyncio.create_task(_clean_store_until(stopping, db, store, settings))
        delivering = asyncio.create_task(_deliver_webhooks_until(stopping, db, settings))
        watching = asyncio.create_task(app.state.watcher.run(stopping))
        yield
        stopping.set()
        db.changes.notify()  # the watcher's wait ends now
        await watching
        if listener is not None:
            listener.stop()
        await expiry  # lets a round in progress finish its transaction
        await cleaning
        await delivering
        await run_in_threadpool(app.state.optimizer.close)
        transaction_threads.shutdown()
        db.dispose()

    app = FastAPI(
        title="Sweep",
        summary="Hyperparameter sweeps: experiments over HTTP, trials run by PyTorch workers.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_tags=[{"name": tag} for tag in TAGS],
        # Operation ids are the routes' names (create_experiment): what generated clients call.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.submissions = SubmissionRate(settings.max_submissions_per_minute)
    app.state.known_callers = KnownCallers(settings.token_cache_seconds)
    app.state.metrics = metrics
    app.add_middleware(WorkerLane, prefix=API_PREFIX, handlers=app.exception_handlers)
    app.add_middleware(RunAgainOnRace)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(Observe, metrics=metrics)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(metrics_api.router)
    app.include_router(web.router)
    _install_error_handlers(app)
    routers = [(API_PREFIX, router) for router in ROUTERS] + [("", metrics_api.router)]
    app.openapi = lambda: contract.openapi(app, routers)  # type: ignore[method-assign]
    return app


async def _expire_leases_until(
    stopping: asyncio.Event, db: Database, settings: Settings, metrics: Metrics
) -> None:
    """Hand out again the trials whose workers stopped talking, and stop experiments past
    their timeout (in every API process; row locks keep them from doing it twice).

    Workers could not reach a server that was down (or whose database was): the first round
    after that grants every running trial a fresh lease instead of expiring it.
    """

    def expire() -> None:
        with db.transaction() as session:
            expired = EXPIRY_BATCH
            while expired == EXPIRY_BATCH:
                expired = attempts.expire_leases(session)
                metrics.lease_expiries.inc(expired)
            lifecycle.end_overdue(session)

    def grant_grace() -> None:
        with db.transaction() as session:
            attempts.renew_all_leases(session, lease_seconds=settings.lease_seconds)

    after_outage = True  # this process just started: it may have been down
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.lease_check_seconds)
            return
        try:
            await run_in_threadpool(grant_grace if after_outage else expire)
            after_outage = False
        except Exception as exc:  # a busy or unreachable database: try again next round
            _round_failed("lease expiry", exc)
            after_outage = True


async def _clean_store_until(
    stopping: asyncio.Event, db: Database, store: Store, settings: Settings
) -> None:
    """Remove deleted artifacts' objects from the store as they are deleted, and now and then
    the objects no row names (left by a process that died between putting and recording)."""

    def purge() -> None:
        with db.transaction() as session:
            while artifacts.purge(session, store) == artifacts.PURGE_BATCH:
                pass

    def collect() -> None:
        grace = timedelta(seconds=settings.artifact_gc_grace_seconds)
        with db.transaction(write=False) as session:
            removed = artifacts.collect(session, store, grace=grace)
        if removed:
            log.info("removed %d objects no artifact names from %s", removed, store.url)

    last_collect = time.monotonic()
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.artifact_purge_seconds)
            return
        try:
            await run_in_threadpool(purge)
            if time.monotonic() - last_collect >= settings.artifact_gc_seconds:
                last_collect = time.monotonic()
                await run_in_threadpool(collect)
        except Exception as exc:  # an unreachable database or store: next round
            _round_failed("cleaning the artifact store", exc)


async def _deliver_webhooks_until(
    stopping: asyncio.Event, db: Database, settings: Settings
) -> None:
    """POST the webhook deliveries that are due, each round, until the server stops."""
    with httpx.Client(timeout=webhooks.SEND_TIMEOUT_SECONDS, follow_redirects=False) as http:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), settings.webhook_poll_seconds)
                return
            try:
                while (
                    await run_in_threadpool(
                        webhooks.deliver_due, db, http, settings.webhook_retry_seconds
                    )
                    == webhooks.BATCH
                ):
                    pass
            except Exception as exc:  # an unreachable database: next round
                _round_failed("delivering webhooks", exc)


def _round_failed(what: str, exc: Exception) -> None:
    """A background round that failed: one line when the database is unavailable (the next
    round tries again), the traceback when it is something else."""
    if isinstance(exc, DBAPIError) and unavailable(exc):
        log.warning("%s waits: the database is unavailable (%s)", what, _first_line(exc.orig))
    else:
        log.exception("%s failed", what)


def _first_line(error: BaseException | None) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _error(
    status: int, code: str, message: str, field: str | None = None, details: list[Any] | None = None
) -> JSONResponse:
    """Every error the API returns has this one shape."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status)


UNION_TAGS = ("bool", "int", "float", "str", "categorical")


def _field(loc: tuple[int | str, ...]) -> str:
    """`('body', 'search_space', 'lr', 'float', 'high')` -> `search_space.lr.high`.

    Drops the request part and the names pydantic gives union members.
    """
    parts = [
        str(p)
        for p in loc[1:]
        if p not in UNION_TAGS and not str(p).startswith(("constrained-", "function-"))
    ]
    return ".".join(parts) or str(loc[0])


def _details(errors: Sequence[Any]) -> list[dict[str, str]]:
    """One entry per field. Where a union tried several types, the errors that say what is
    wrong with the value (too large, not finite) beat the ones that only name another type."""
    by_field: dict[str, list[Any]] = {}
    for error in errors:
        by_field.setdefault(_field(tuple(error["loc"])), []).append(error)
    details = []
    for field, found in by_field.items():
        specific = [e for e in found if not e["type"].endswith("_type")] or found
        message = "; ".join(dict.fromkeys(e["msg"] for e in specific))
        details.append({"field": field, "message": message})
    return details


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SweepError)
    async def sweep_error(_: Request, exc: SweepError) -> JSONResponse:
        return _error(exc.status_code, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0]
        if first.get("type") == "json_invalid":
            return _error(400, "malformed_json", f"malformed JSON body: {first.get('msg')}")
        details = _details(errors)
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return _error(422, "invalid", message, details[0]["field"], details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(IntegrityError)
    async def conflicting_write(_: Request, exc: IntegrityError) -> JSONResponse:
        # Two requests raced to create the same thing (an upload of the same dataset).
        log.warning("conflicting write: %s", exc.orig)
        return _error(409, "conflict", "a concurrent change conflicts with this one; retry")

    @app.exception_handler(DBAPIError)
    async def database_fault(request: Request, exc: DBAPIError) -> JSONResponse:
        # Unreachable, read-only, refusing the role, full, timed out, a lost race: the
        # database's state, not a bug, so the caller retries (workers do, after Retry-After).
        if not unavailable(exc):
            return await unexpected(request, exc)
        log.warning("database unavailable: %s", _first_line(exc.orig))
        response = _error(503, "unavailable", "the database is unavailable for now; retry")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        # A read whose pooled connection turned out to be gone (one in steady use is not
        # pinged first) runs again, on a new one. A write's commit may have been what broke:
        # its caller, who knows whether it may repeat it, retries.
        gone = exc.connection_invalidated and request.method in ("GET", "HEAD")
        if lost_a_race(exc) or gone:
            response.headers[RETRY_HEADER.decode()] = "1"
        return response

    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        # Every connection of this process's pool stayed busy for the pool's timeout: the
        # process is overloaded, and the caller retries later, as for an unavailable database.
        log.warning("no database connection free: %s", _first_line(exc))
        response = _error(503, "unavailable", "the server is overloaded for now; retry")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # This handler runs outside the middleware that set the request's id: set it again.
        rid = request.scope.get("state", {}).get("request_id")
        token = logs.request_id.set(rid)
        try:
            log.exception("unhandled error", exc_info=exc)
        finally:
            logs.request_id.reset(token)
        message = f"internal server error (request id {rid})" if rid else "internal server error"
        return _error(500, "internal", message)
