"""Several trials at once on one host: K worker processes per device, each running its trials
in its own process, so a crash or an out-of-memory error takes down one trial, not its
neighbours. A process that dies is started again (with backoff); one that exits cleanly (idle,
or its trial limit reached) is done. SIGTERM or SIGINT is passed on to every process, which
checkpoints and gives its trial back, and the pool exits when they have.

Packing follows memory: on a GPU each process claims only when the device has room for the
largest trial it has run, and a process whose trial ran out of memory exits with
EXIT_OUT_OF_MEMORY, after which the pool runs one process fewer on that device (never none).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("sweep.pool")

MAX_BACKOFF = 30.0
EXIT_OUT_OF_MEMORY = 3
EXIT_REFUSED = 4  # the server refused the worker's token: starting it again cannot help


def resolve_devices(devices: str) -> list[str]:
    """ "all": every CUDA device, or the CPU when there is none; otherwise a comma list."""
    if devices != "all":
        return [d.strip() for d in devices.split(",") if d.strip()]
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]


def threads_per_process(devices: list[str], per_device: int) -> int:
    """The host's cores split between the processes (at least one thread each)."""
    return max(1, (os.cpu_count() or 1) // (len(devices) * per_device))


@dataclass
class _Slot:
    """One worker process of the pool and how often it had to be started again."""

    name: str
    device: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    done: bool = False


class Pool:
    def __init__(
        self,
        server: str,
        *,
        devices: list[str],
        per_device: int,
        token: str | None = None,
        threads: int | None = None,
        name: str | None = None,
        worker_args: list[str] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.server = server
        self.token = token
        self.threads = threads or threads_per_process(devices, per_device)
        self.worker_args = worker_args or []
        self.metrics_port = metrics_port  # slot i serves metrics on metrics_port + i
        base = name or f"{socket.gethostname()}-{os.getpid()}"
        self.refused = False  # a process exited because the server refused the token
        self.slots = [
            _Slot(name=f"{base}-{device}-{k}", device=device)
            for device in devices
            for k in range(per_device)
        ]
        self._stopping = False

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self, poll: float = 0.5) -> int:
        """Keep every slot's process running until all are done or the pool is stopped;
        returns how many times a process had to be started again."""
        while not self._stopping and not all(slot.done for slot in self.slots):
            for slot in self.slots:
                self._tend(slot)
            time.sleep(poll)
        self._stop_all()
        return sum(slot.restarts for slot in self.slots)

    def _tend(self, slot: _Slot) -> None:
        if slot.done:
            return
        if slot.process is None:
            if time.monotonic() >= slot.next_start:
                slot.process = self._start(slot)
            return
        code = slot.process.poll()
        if code is None:
            return
        slot.process = None
        if code == 0:
            slot.done = True
            return
        if code == EXIT_REFUSED:
            slot.done = self.refused = True
            log.error("%s: the server refused the token; not started again", slot.name)
            return
        if code == EXIT_OUT_OF_MEMORY and self._live_on(slot.device) > 1:
            slot.done = True
            left = self._live_on(slot.device)
            log.warning(
                "%s ran out of memory: %d trials at once on %s from now on",
                slot.name,
                left,
                slot.device,
            )
            return
        slot.restarts += 1
        delay = min(MAX_BACKOFF, 2.0 ** min(slot.restarts - 1, 5))
        slot.next_start = time.monotonic() + delay
        log.warning("%s exited with %d; starting it again in %.0f s", slot.name, code, delay)

    def _live_on(self, device: str) -> int:
        """Slots of the device still in use (this one included)."""
        return sum(1 for s in self.slots if s.device == device and not s.done)

    def _start(self, slot: _Slot) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "sweep.worker",
            "--server",
            self.server,
            "--device",
            slot.device,
            "--threads",
            str(self.threads),
            "--name",
            slot.name,
            "--exit-on-oom",
            *self.worker_args,
        ]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port + self.slots.index(slot))]
        env = dict(os.environ)
        if self.token:
            env["SWEEP_TOKEN"] = self.token
        log.info("starting %s on %s with %d threads", slot.name, slot.device, self.threads)
        return subprocess.Popen(command, env=env)

    def _stop_all(self, timeout: float = 60.0) -> None:
        running = [s.process for s in self.slots if s.process and s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
