"""The client's typed results say what the server's schemas answer: a field added to, removed
from or made optional in one of them fails here until the other says the same."""

from __future__ import annotations

import types
from datetime import datetime
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
from pydantic import BaseModel

from sweep import client
from sweep.service import schemas

PAIRS: dict[Any, type[BaseModel]] = {
    client.TrialCounts: schemas.TrialCounts,
    client.Experiment: schemas.ExperimentRead,
    client.Trial: schemas.TrialRead,
    client.Metric: schemas.MetricRead,
    client.TrialDetail: schemas.TrialDetail,
    client.BestTrials: schemas.BestTrials,
}
NAMES = {server: typed.__name__ for typed, server in PAIRS.items()}


def shape(annotation: Any) -> str:
    """A type as JSON carries it: datetimes are strings, a schema is its client type's name,
    Optional is a trailing '?'."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = shape(rest[0]) if len(rest) == 1 else "|".join(sorted(shape(a) for a in rest))
        return inner + ("?" if len(rest) < len(args) else "")
    if origin is Literal:
        return "str"
    if origin is list:
        return f"list[{shape(args[0])}]"
    if origin is dict or annotation is dict:
        return "dict"
    if annotation is datetime:
        return "str"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return NAMES[annotation]
    if annotation in PAIRS:
        return str(annotation.__name__)
    return str(getattr(annotation, "__name__", annotation))


@pytest.mark.parametrize("typed", list(PAIRS), ids=lambda t: t.__name__)
def test_the_client_types_match_the_server_schemas(typed: Any) -> None:
    server = PAIRS[typed]
    client_fields = {name: shape(hint) for name, hint in get_type_hints(typed).items()}
    server_fields = {name: shape(f.annotation) for name, f in server.model_fields.items()}
    server_fields |= {  # computed from the others, and answered with them
        name: shape(f.return_type) for name, f in server.model_computed_fields.items()
    }
    assert client_fields == server_fields, server.__name__


def test_the_shapes_tell_types_apart() -> None:
    assert shape(int | None) == "int?" and shape(int) == "int"
    assert shape(list[schemas.TrialRead]) == "list[Trial]"
    assert shape(datetime | None) == shape(str | None) == "str?"
