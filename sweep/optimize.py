"""`sweep.optimize`: run an experiment's trials in this process, the way `study.optimize` does
in Optuna, from a notebook or a plain script, against a running Sweep server.

    def train(trial: sweep.Trial) -> None:
        for epoch in range(1, 11):
            trial.report(epoch, val_loss=fit_one_epoch(trial.params["lr"]))

    experiment = sweep.optimize("sweep.yaml", train, n_workers=2)

The function is called in this process, `n_workers` trials at once (threads), with every
guarantee of a worker's: leases, heartbeats, retries, pruning. A spec without a program
names the function's; only this experiment's trials are taken.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep import sdk
from sweep.client import Experiment, SweepClient, load_spec

ENDED = ("completed", "cancelled", "failed")


def optimize(
    experiment_or_spec: int | str | Path | dict[str, Any],
    train: Callable[[sdk.Trial], Any],
    *,
    n_workers: int = 1,
    server: str | None = None,
    token: str | None = None,
    worker_token: str | None = None,
    device: str | None = None,
) -> Experiment:
    """Run the trials of an experiment (its id) or of a new one (a spec, or its YAML file)
    with `train` until the experiment ends; returns it as it ended. With authentication on,
    `token` submits (admin or user) and `worker_token` claims (admin or worker; default:
    `token`)."""
    from sweep.worker.client import ServiceClient
    from sweep.worker.loop import Worker, WorkerOptions, pick_device
    from sweep.worker.programs import Program

    if n_workers < 1:
        raise ValueError("n_workers must be at least 1")
    token = token or os.environ.get("SWEEP_TOKEN")
    client = SweepClient(server, token=token)
    experiment = _experiment(client, experiment_or_spec, train)
    name = experiment["spec"]["program"]
    stop = threading.Event()
    runners = []
    for i in range(n_workers):
        options = WorkerOptions(
            name=f"{socket.gethostname()}-{os.getpid()}-optimize-{i}",
            device=pick_device(device),
            wait_seconds=1.0,
            programs={name: Program(name, call=train)},
            experiment_id=experiment["id"],
        )
        url = str(client.http.base_url)
        service = ServiceClient(url, token=worker_token or token, stop=stop)
        runners.append(Worker(service, options))
    threads = [threading.Thread(target=r.run, name=f"optimize-{i}") for i, r in enumerate(runners)]
    for thread in threads:
        thread.start()
    try:
        while (experiment := client.experiment(experiment["id"]))["state"] not in ENDED:
            if not any(thread.is_alive() for thread in threads):
                break
            stop.wait(1.0)
    finally:  # also on Ctrl-C: the trials running are given back
        stop.set()
        for thread in threads:
            thread.join()
        for runner in runners:
            runner.client.close()
        client.close()
    return experiment


def _experiment(
    client: SweepClient,
    experiment_or_spec: int | str | Path | dict[str, Any],
    train: Callable[[sdk.Trial], Any],
) -> Experiment:
    if isinstance(experiment_or_spec, int):
        experiment = client.experiment(experiment_or_spec)
        if not experiment["spec"].get("program"):
            raise ValueError(
                f"experiment {experiment_or_spec} trains a model, not a program: "
                "give a spec whose trials train() runs"
            )
        return experiment
    spec = (
        dict(experiment_or_spec)
        if isinstance(experiment_or_spec, dict)
        else load_spec(Path(experiment_or_spec))
    )
    spec.setdefault("program", _program_name(train))
    return client.submit(spec)


def _program_name(train: Callable[..., Any]) -> str:
    """The program name a function gets in a spec that names none: its module and name."""
    name = f"{getattr(train, '__module__', 'main')}.{getattr(train, '__qualname__', 'train')}"
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)
    return cleaned.replace("__main__.", "main.")[-64:]
