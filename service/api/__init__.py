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

# The worker protocol's routers first: routes are matched in order, and workers make most of
# the calls (a heartbeat tried 32 routes before its own, a seventh of its cost on the event
# loop).
ROUTERS: list[APIRouter] = [
    m.router for m in (trials, workers, health, me, experiments, tokens, datasets, webhooks)
]

# The documentation's groups, in the order a reader looks for them (not the routers' order).
TAGS = [
    "health",
    "tokens",
    "experiments",
    "trials",
    "worker protocol",
    "workers",
    "datasets",
    "webhooks",
]
