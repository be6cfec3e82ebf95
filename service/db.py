"""Engine, sessions and migrations.

SQLite runs in WAL mode with a busy timeout; writing requests open their transaction with
BEGIN IMMEDIATE so concurrent writers queue on the database lock instead of failing half way.
PostgreSQL needs nothing special: claims lock rows with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_MIGRATION_LOCK = 0x5_3E_E9  # advisory lock id: one process migrates at a time
log = logging.getLogger("sweep.service")


# An API process's connections to PostgreSQL: this many kept, and up to POOL_OVERFLOW more.
# All of them are kept: a busy process holds most of them, and connections beyond those kept
# were closed as they went back to the pool and opened again moments later (40 a second, each
# a new PostgreSQL backend, with 1,000 workers reporting).
POOL_SIZE, POOL_OVERFLOW = 30, 0
# Requests' transactions open at once (sweep.service.api.deps.get_session); the rest of the
# pool serves claims, token checks and the background rounds, which take their own.
REQUEST_TRANSACTIONS = POOL_SIZE + POOL_OVERFLOW - 10


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    _ping_when_idle(engine)
    return engine


# A pooled PostgreSQL connection is pinged before use only after it sat idle this long: a
# restarted server or a dropped connection is found then, without a round trip before every
# request of a busy process. One that breaks in steady use fails its transaction (SQLAlchemy
# then discards the pool's older connections): a read runs again, a write answers 503, which
# workers and clients retry.
PING_AFTER_IDLE_SECONDS = 2.0


def _ping_when_idle(engine: Engine) -> None:
    def idle_now(_dbapi_conn: Any, entry: Any) -> None:
        entry.info["idle_since"] = time.monotonic()

    event.listen(engine, "connect", idle_now)
    event.listen(engine, "checkin", idle_now)

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_conn: Any, entry: Any, _proxy: Any) -> None:
        idle_since = entry.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:  # the pool takes a new connection
            raise DisconnectionError(f"a pooled connection is gone: {exc}") from exc


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Changes:
    """Wakes what waits in this process (sweep.service.claims, reads waiting for an
    experiment's end) when work may have become available or an experiment ended: a commit
    here, or one in another API process heard by a Listener. `ends` counts the changes that
    ended an experiment (or may have: a reconnected Listener's)."""

    def __init__(self) -> None:
        self.generation = 0
        self.ends = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()

    def notify(self, *, end: bool = False) -> None:
        with self._lock:
            self.generation += 1
            self.ends += end
            for loop, event in self._waiters:
                loop.call_soon_threadsafe(event.set)

    async def wait(self, since: int, timeout: float) -> None:
        """Return after `timeout` seconds, or sooner once a change after `since` happens."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self.generation != since:
                return
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter[1].wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(waiter)


def probe_write(database: Database) -> None:
    """A real write that changes no value, in a transaction of its own (the schema version's
    one row rewritten with itself): it raises when the database cannot take writes
    (unreachable, read-only, the role's privileges revoked, locked, its disk full)."""
    with database.transaction() as session:
        session.execute(text("UPDATE alembic_version SET version_num = version_num"))


def notify_on_commit(session: Session, *, end: bool = False) -> None:
    """Wake waiting claims (with `end`, also reads waiting for an experiment's end) once this
    session's transaction commits: this process's at once, other API processes' through
    PostgreSQL, which delivers a NOTIFY at commit (and drops it on rollback)."""
    key = "notify_end" if end else "notify"
    if session.info.get(key):
        return
    session.info[key] = session.info["notify"] = True
    if session.get_bind().dialect.name == "postgresql":
        origin = CHANGED["origin"] + (END if end else "")
        session.execute(text("SELECT pg_notify(:channel, :origin)"), {**CHANGED, "origin": origin})


# Notifications carry the sending process's id, so that it does not wake itself twice, and
# END after it when the change ended an experiment.
CHANGED = {"channel": "sweep_changes", "origin": uuid.uuid4().hex}
END = ":end"
LISTEN_RETRY_SECONDS = 2.0


class Listener:
    """Another API process's commits that made work, heard over PostgreSQL LISTEN on a
    connection of its own and passed on to this process's Changes. While the connection is
    down, waiting claims rely on their periodic look (claim_poll_seconds); each reconnection
    counts as a change, since notifications sent meanwhile were lost."""

    def __init__(self, engine: Engine, changes: Changes) -> None:
        self.engine = engine
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.changes = changes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; a notification of its own ends the listener's wait at once."""
        self._stop.set()
        with contextlib.suppress(DBAPIError), self.engine.connect() as conn:
            conn.execute(text("SELECT pg_notify(:channel, 'stop')"), CHANGED)
            conn.commit()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg  # only PostgreSQL servers listen

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANGED['channel']}")
                    self.changes.notify(end=True)  # what was sent meanwhile is lost
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if self._stop.is_set():
                                break
                            if not note.payload.startswith(CHANGED["origin"]):
                                self.changes.notify(end=note.payload.endswith(END))
            except psycopg.Error as exc:
                log.warning("listening for other processes' changes waits: %s", exc)
                self._stop.wait(LISTEN_RETRY_SECONDS)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once this session's transaction has committed."""
    session.info.setdefault("after_commit", []).append(callback)


def on_rollback(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` if this session's transaction is rolled back."""
    session.info.setdefault("on_rollback", []).append(callback)


@dataclass
class Database:
    engine: Engine
    writer: sessionmaker[Session]
    reader: sessionmaker[Session]
    changes: Changes = field(default_factory=Changes)

    @classmethod
    def connect(cls, url: str) -> Database:
        engine = make_engine(url)
        reader_bind = engine.execution_options(sqlite_begin="DEFERRED")
        return cls(
            engine=engine,
            writer=sessionmaker(engine, expire_on_commit=False),
            reader=sessionmaker(reader_bind, expire_on_commit=False),
        )

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        factory = self.writer if write else self.reader
        session = factory()
        try:
            with session.begin():
                yield session
        except BaseException:
            for callback in session.info.get("on_rollback", []):
                callback()
            raise
        finally:
            session.close()
        for callback in session.info.get("after_commit", []):
            callback()
        if session.info.get("notify"):
            self.changes.notify(end=session.info.get("notify_end", False))

    def migrate(self) -> None:
        """Bring the schema up to date (Alembic); safe to run from several processes."""
        with self.engine.begin() as conn:
            if not is_sqlite(self.engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()


# --- faults --------------------------------------------------------------------------------

# SQLSTATEs of a database that is there but cannot do this now (PostgreSQL's codes): the
# request may succeed later, so it answers 503 rather than 500.
UNAVAILABLE_SQLSTATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: default_transaction_read_only, a hot standby
        "42501",  # insufficient_privilege: the role's grants were revoked
        "53100",  # disk_full
        "53200",  # out_of_memory
        "53300",  # too_many_connections
        "55P03",  # lock_not_available: lock_timeout
        "57014",  # query_canceled: statement_timeout
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
    }
)
# Faults that running the same request again at once usually gets past.
RACE_SQLSTATES = frozenset({"40001", "40P01"})


def sqlstate(exc: DBAPIError) -> str | None:
    code = getattr(exc.orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def unavailable(exc: DBAPIError) -> bool:
    """Whether `exc` is the database's state (unreachable, read-only, refusing, full, busy)
    rather than a bug in a statement."""
    code = sqlstate(exc) or ""
    return (
        isinstance(exc, OperationalError | InterfaceError)
        or exc.connection_invalidated
        or code in UNAVAILABLE_SQLSTATES
        or code.startswith("08")  # connection_exception and its kinds
    )


def lost_a_race(exc: DBAPIError) -> bool:
    """A serialization failure or deadlock: the request can be run again as it is."""
    return sqlstate(exc) in RACE_SQLSTATES
