"""A worker's Prometheus metrics, served on `--metrics-port` when given."""

from __future__ import annotations

import resource

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

EPOCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.trials = Counter(
            "sweep_worker_trials",
            "Trials this worker ran, by how they ended here (completed, stopped, released, "
            "diverged, error, oom)",
            ["outcome"],
            registry=r,
        )
        self.epoch_seconds = Histogram(
            "sweep_worker_epoch_seconds",
            "Training time of each epoch",
            buckets=EPOCH_BUCKETS,
            registry=r,
        )
        self.device_memory = Gauge(
            "sweep_worker_device_memory_bytes",
            "Peak memory of the last trial: allocated on a CUDA device; the process's peak "
            "resident memory on the CPU",
            ["device"],
            registry=r,
        )

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def trial_ended(self, outcome: str, device: torch.device) -> None:
        self.trials.labels(outcome).inc()
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:  # kilobytes on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.device_memory.labels(str(device)).set(peak)
