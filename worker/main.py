"""Start a worker process: pick the device, set threads, run the loop until stopped."""

from __future__ import annotations

import os
import socket

import torch

from sweep import logs
from sweep.worker.client import ServiceClient
from sweep.worker.loop import Worker, WorkerOptions, pick_device
from sweep.worker.programs import Program


def run_worker(
    server: str,
    *,
    token: str | None = None,
    device: str | None = None,
    name: str | None = None,
    max_trials: int | None = None,
    exit_when_idle: float | None = None,
    threads: int | None = None,
    exit_on_oom: bool = False,
    metrics_port: int | None = None,
    programs: dict[str, Program] | None = None,
    grace_seconds: float = 30.0,
    gpus: list[int] | None = None,
) -> Worker:
    """Run trials from `server` until SIGTERM; returns the worker, with what it did."""
    logs.configure()
    if threads:
        torch.set_num_threads(threads)
    options = WorkerOptions(
        name=name or f"{socket.gethostname()}-{os.getpid()}",
        device=pick_device(device or (f"cuda:{gpus[0]}" if gpus else None)),
        max_trials=max_trials,
        exit_when_idle=exit_when_idle,
        exit_on_oom=exit_on_oom,
        metrics_port=metrics_port,
        programs=programs or {},
        grace_seconds=grace_seconds,
        gpus=gpus,
    )
    runner = Worker(ServiceClient(server, token=token), options)
    runner.install_signal_handlers()
    runner.run()
    return runner
