from fastapi import APIRouter, Response, status

from sweep.service import auth
from sweep.service.api.deps import ADMIN, KnownCallersDep, SessionDep, TokenId
from sweep.service.db import after_commit
from sweep.service.schemas import TokenCreate, TokenCreated, TokenRead

router = APIRouter(prefix="/tokens", tags=["tokens"], dependencies=[ADMIN])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep) -> TokenCreated:
    """Make a token; the secret is in this answer only."""
    secret, token = auth.create(session, body=body)
    return TokenCreated(**token.model_dump(), token=secret)


@router.get("")
def list_tokens(session: SessionDep) -> list[TokenRead]:
    """Every token: prefix, name, role, project, when made and last used, revoked."""
    return auth.listing(session)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: TokenId, session: SessionDep, known: KnownCallersDep) -> Response:
    """Revoke a token: it is refused from now on (by other API processes within
    `SWEEP_TOKEN_CACHE_SECONDS`)."""
    auth.revoke(session, token_id)
    after_commit(session, lambda: known.forget(token_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
