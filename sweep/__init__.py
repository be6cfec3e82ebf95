"""Sweep: hyperparameter sweeps as a service.

This package is what users import: the HTTP client (httpx and PyYAML only), the `sweep` command
line and the demo. The server, the workers and the models are its subpackages
`sweep.service`, `sweep.worker` and `sweep.models`.

    from sweep import SweepClient
    client = SweepClient()                       # SWEEP_SERVER and SWEEP_TOKEN, or arguments
    experiment = client.submit("sweep.yaml")
    client.wait(experiment["id"], progress=True)

The typed results (Experiment, Trial, ...) are in `sweep.client`.
"""

from sweep.client import ApiError, SweepClient

__version__ = "0.1.0"
__all__ = ["ApiError", "SweepClient"]
