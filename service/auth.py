"""Who is calling: bearer tokens with a role and, but for admins, a project.

Tokens are 256 random bits, shown once when made and kept only as a SHA-256 hash (a slow hash
buys nothing for random secrets). Roles:

- admin: everything, tokens, every project;
- user: submit, read and control experiments of their project;
- viewer: read experiments of their project;
- worker: claim and run trials (of their project, or of all when the token has none).

A project token asking about another project's experiment is told it does not exist (404).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from sweep.service.errors import Forbidden, NotFound, Unauthorized
from sweep.service.schemas import TokenCreate, TokenRead
from sweep.service.tables import ApiToken, Experiment, utcnow

TOKEN_PREFIX = "swp_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often


class Role(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"
    VIEWER = "viewer"
    WORKER = "worker"


READERS = frozenset({Role.ADMIN, Role.USER, Role.VIEWER})
CONTROLLERS = frozenset({Role.ADMIN, Role.USER})
RUNNERS = frozenset({Role.ADMIN, Role.WORKER})
ADMINS = frozenset({Role.ADMIN})
EVERYONE = frozenset(Role)  # any valid token


@dataclass(frozen=True)
class Caller:
    role: Role
    project: str | None  # None: every project
    token_id: int | None = None

    def require(self, allowed: frozenset[Role]) -> None:
        if self.role not in allowed:
            raise Forbidden(f"a {self.role} token may not do this")

    def project_for(self, asked: str | None) -> str:
        """The project a new experiment goes to: the caller's own, or any for an admin."""
        if self.project is None:
            return asked or "default"
        if asked not in (None, self.project):
            raise Forbidden(f"this token may only submit to project {self.project!r}")
        return self.project

    def sees(self, experiment: Experiment) -> bool:
        return self.project is None or experiment.project == self.project

    def check_sees(self, experiment: Experiment) -> None:
        """NotFound, not Forbidden, for another project's experiment: ids do not leak."""
        if not self.sees(experiment):
            raise NotFound(f"experiment {experiment.id} not found")


# Used when the operator turned authentication off: every caller may do everything.
NOBODY_CHECKED = Caller(role=Role.ADMIN, project=None)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _secret(authorization: str | None) -> str:
    """The token in an `Authorization: Bearer ...` header; Unauthorized without one."""
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    return secret.strip()


class KnownCallers:
    """The callers behind tokens this API process checked within the last `ttl` seconds, so
    that most calls read no SQL to authenticate. A token revoked through this process is
    forgotten at once; through another process or in SQL, within `ttl`. A role and a project
    never change, so nothing else goes stale."""

    def __init__(self, ttl: float, max_tokens: int = 10_000) -> None:
        self.ttl = ttl
        self.max_tokens = max_tokens
        self._known: dict[str, tuple[Caller, float]] = {}  # by token hash: when SQL said so
        self._lock = threading.Lock()
        self._checking: dict[str, asyncio.Future[Caller]] = {}  # by token hash: under way

    async def checked(
        self, authorization: str | None, check: Callable[[], Awaitable[Caller]]
    ) -> Caller:
        """The caller, as `check` finds it in SQL; calls that miss the cache while a check of
        the same token is under way share that check rather than start their own (a
        thousand workers sharing a token would otherwise queue on its row together)."""
        if self.ttl <= 0:
            return await check()
        try:
            digest = _hash(_secret(authorization))
        except Unauthorized:
            return await check()
        under_way = self._checking.get(digest)
        if under_way is None:
            under_way = self._checking[digest] = asyncio.ensure_future(check())
            under_way.add_done_callback(lambda _: self._checking.pop(digest, None))
        return await asyncio.shield(under_way)  # a caller that leaves ends no one else's check

    def get(self, authorization: str | None) -> Caller | None:
        """The caller, if its token was found valid within the last `ttl` seconds."""
        if self.ttl <= 0:
            return None
        try:
            digest = _hash(_secret(authorization))
        except Unauthorized:
            return None
        known = self._known.get(digest)
        if known is None or time.monotonic() - known[1] > self.ttl:
            return None
        return known[0]

    def put(self, authorization: str | None, caller: Caller) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._known) >= self.max_tokens:
                now = time.monotonic()
                self._known = {k: v for k, v in self._known.items() if now - v[1] <= self.ttl}
                if len(self._known) >= self.max_tokens:
                    self._known.clear()
            self._known[_hash(_secret(authorization))] = (caller, time.monotonic())

    def forget(self, token_id: int) -> None:
        with self._lock:
            self._known = {k: v for k, v in self._known.items() if v[0].token_id != token_id}


def create(session: Session, *, body: TokenCreate) -> tuple[str, TokenRead]:
    """A new token: the secret (shown once) and what is kept of it."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    project = None if body.role in (Role.ADMIN,) else body.project
    if body.role in (Role.USER, Role.VIEWER) and project is None:
        project = "default"
    token = ApiToken(
        name=body.name,
        prefix=secret[:12],
        token_hash=_hash(secret),
        role=body.role,
        project=project,
    )
    session.add(token)
    session.flush()
    return secret, read(token)


def read(token: ApiToken) -> TokenRead:
    return TokenRead.model_validate(token, from_attributes=True)


def listing(session: Session) -> list[TokenRead]:
    return [read(t) for t in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def revoke(session: Session, token_id: int) -> None:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} not found")
    token.revoked_at = token.revoked_at or utcnow()


def identify(session: Session, authorization: str | None) -> tuple[Caller, bool]:
    """The caller behind an `Authorization: Bearer ...` header, and whether its last use
    is old enough to be written again. Unauthorized when missing, unknown or revoked."""
    token = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == _hash(_secret(authorization)))
    ).one_or_none()
    if token is None or token.revoked_at is not None:
        raise Unauthorized("unknown or revoked token")
    stale = token.last_used_at is None or utcnow() - token.last_used_at > LAST_USED_RESOLUTION
    return Caller(role=Role(token.role), project=token.project, token_id=token.id), stale


def touch(session: Session, token_id: int) -> None:
    token = session.get(ApiToken, token_id)
    if token is not None:
        token.last_used_at = utcnow()
