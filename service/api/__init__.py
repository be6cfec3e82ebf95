"""HTTP routes, one module per resource."""

from fastapi import APIRouter

from sweep.service.api import (
    datasets,
    experiments,
    health,
    me,
    tokens,
    trials,
    webhooks,
    workers,
)

ROUTERS: list[APIRouter] = [
    m.router for m in (health, me, experiments, trials, workers, tokens, datasets, webhooks)
]
