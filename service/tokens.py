"""Tokens made straight in the database, for the operator on the server host and the demo."""

from __future__ import annotations

from sweep.service import auth
from sweep.service.config import Settings
from sweep.service.db import Database
from sweep.service.schemas import TokenCreate


def create_in_database(
    *, role: str, project: str | None = None, name: str = "token", settings: Settings | None = None
) -> str:
    """Migrate the server's database if needed and make a token in it; returns the secret."""
    body = TokenCreate.model_validate({"role": role, "project": project, "name": name})
    db = Database.connect((settings or Settings()).resolved_database_url())
    try:
        db.migrate()
        with db.transaction() as session:
            secret, _ = auth.create(session, body=body)
        return secret
    finally:
        db.dispose()
