"""Sweep: hyperparameter sweeps as a service.

This package is what users import: the HTTP client (httpx and PyYAML only), the SDK for their
own training code (the standard library only), the `sweep` command line and the demo. The
server, the workers and the models are its subpackages `sweep.service`, `sweep.worker` and
`sweep.models`.

    from sweep import SweepClient
    client = SweepClient()                       # SWEEP_SERVER and SWEEP_TOKEN, or arguments
    experiment = client.submit("sweep.yaml")
    client.wait(experiment["id"], progress=True)
    model = sweep.load_model(trial_id)           # an nn.Module that predicts on raw samples

In a program a worker runs (sweep worker --program NAME=...):

    import sweep
    trial = sweep.trial()
    trial.report(epoch, val_loss=loss)           # raises sweep.Pruned when pruned

The typed results (Experiment, Trial, ...) are in `sweep.client`, the SDK in `sweep.sdk`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep.sdk import Pruned, Stopped, Trial, trial

if TYPE_CHECKING:
    from sweep.client import ApiError, SweepClient, load_model
    from sweep.optimize import optimize

__version__ = "0.1.0"
__all__ = [
    "ApiError",
    "Pruned",
    "Stopped",
    "SweepClient",
    "Trial",
    "load_model",
    "optimize",
    "trial",
]


def __getattr__(name: str) -> Any:
    """The client and optimize (the worker, torch) are imported on first use: a program that
    only reports loads neither."""
    if name in ("ApiError", "SweepClient", "load_model"):
        from sweep import client

        return getattr(client, name)
    if name == "optimize":
        from sweep.optimize import optimize

        return optimize
    raise AttributeError(f"module 'sweep' has no attribute {name!r}")
