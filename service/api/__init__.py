"""HTTP routes, one module per resource."""

from fastapi import APIRouter

from service.api import experiments, health, tokens, trials, workers

ROUTERS: list[APIRouter] = [m.router for m in (health, experiments, trials, workers, tokens)]
