"""The worker loop: claim -> train -> report -> finish, until told to stop."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from sweep import logs
from sweep.models import arrays, datasets, plugins
from sweep.worker.client import ServiceClient, ServiceError, TrialGone
from sweep.worker.heartbeat import Heartbeat
from sweep.worker.metrics import WorkerMetrics
from sweep.worker.outbox import Outbox
from sweep.worker.program_run import Outcome, ProgramRun, Setting
from sweep.worker.programs import Program
from sweep.worker.train import (
    DeviceData,
    Diverged,
    Pruned,
    Snapshot,
    Stopped,
    TrialConfig,
    TrialResult,
    to_device,
    train_trial,
    warm_up,
)

log = logging.getLogger("sweep.worker")
DATASETS_KEPT = 4  # datasets held on the device at once, least recently used dropped first
CLAIM_RETRY_SECONDS = 5.0  # the wait after a claim that failed (the service unreachable)


class Interrupted(Exception):
    """The worker was asked to shut down in the middle of a trial, checkpointed at `epoch`."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"shut down after epoch {epoch}")
        self.epoch = epoch


class _StopWaiting(BaseException):
    """Raised by the stop signal's handler while the worker waits idle in a claim's long poll,
    which it cuts short. Not an Exception: the HTTP client's error handling lets it through."""


# The call that ends a trial on the service and its arguments after (trial_id, token).
Ending = tuple[Any, ...] | None


@dataclass
class WorkerOptions:
    name: str
    device: torch.device
    # Long poll per claim (the server holds one open for 30 s at most, and answers it the
    # moment work arrives); never past exit_when_idle. Without the signal handlers (a worker
    # in a thread), also the longest an idle worker takes to see `stop`.
    wait_seconds: float = 30.0
    max_trials: int | None = None  # exit after this many trials
    exit_when_idle: float | None = None  # exit after this many seconds without work
    # In a pool: exit after a trial ran out of memory, so the pool runs one trial fewer here.
    exit_on_oom: bool = False
    # On a GPU, claim only when free memory holds this times the largest peak seen so far.
    memory_headroom: float = 1.25
    metrics_port: int | None = None  # serve Prometheus metrics on this port
    # Where uploaded datasets are kept between runs, by content hash.
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "sweep")
    # The programs this worker runs, by name (sweep.worker.programs).
    programs: dict[str, Program] = field(default_factory=dict)
    # How long a program that must end has after SIGTERM before it is killed.
    grace_seconds: float = 30.0
    experiment_id: int | None = None  # claim this experiment's trials only
    # The GPUs one of its programs' trials may use (all at once); None: its device's only.
    gpus: list[int] | None = None


class Worker:
    def __init__(self, client: ServiceClient, options: WorkerOptions) -> None:
        self.client = client
        self.options = options
        self.stop = client.stop  # set by SIGTERM; also cuts the client's retry waits short
        self._data: OrderedDict[str, DeviceData] = OrderedDict()
        self.trials_run = 0
        self.peak_bytes = 0  # the most device memory one of its trials took (CUDA)
        self.metrics = WorkerMetrics()
        self.worker_id: int | None = None
        self.ran_out_of_memory = False
        self._waiting = False  # idle in a claim's long poll, which a stop signal may cut short
        # The trial trained last whose end (the last reports' answers, the model, the result)
        # is still to be told, and what tells it in its own context (its request id).
        self._unsent: tuple[int, contextvars.Context, Callable[[], None]] | None = None
        # The trial whose end a thread is telling the service, and that thread.
        self._ending: tuple[int, threading.Thread] | None = None

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop after the current epoch (busy), or at once (idle).

        A busy worker's handler only sets a flag, which training checks between batches. An
        idle worker's long poll is cut short; the claim is then asked again without waiting,
        so a trial its answer might have carried comes back and is given back (`_claim`).
        """

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop.set()
            if self._waiting:
                self._waiting = False
                raise _StopWaiting()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)

    def run(self) -> int:
        """Run trials until stopped, out of trials, or idle too long; returns trials run."""
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port)
        device = self.options.device
        memory_gb = None
        if device.type == "cuda":  # what experiments' requirements.min_device_memory_gb ask
            memory_gb = torch.cuda.get_device_properties(device).total_memory / 2**30
        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
        installed = (list(plugins.model_plugins()), list(plugins.dataset_plugins()))
        worker_id = self.worker_id = self.client.register(
            self.options.name,
            socket.gethostname(),
            str(device),
            os.getpid(),
            memory_gb,
            installed,
            programs=sorted(self.options.programs),
            gpus=self._gpu_count(),
        )
        logs.request_id.set(f"w{worker_id}")  # on its claims; each trial's calls say more
        log.info(
            "worker %s registered as #%d on %s", self.options.name, worker_id, self.options.device
        )
        idle_since = time.monotonic()
        next_up = None  # claimed as the last trial's training ended, not started yet
        try:
            while not self.stop.is_set() and not self._enough_trials():
                if self.ran_out_of_memory and self.options.exit_on_oom:
                    log.warning("a trial ran out of memory: leaving the device to the others")
                    break
                assignment, next_up = next_up, None
                if assignment is None:
                    self._wait_for_memory()
                    assignment = self._claim(worker_id, idle_since)
                if assignment is None:
                    if self._idle_too_long(idle_since):
                        break
                    continue
                if self.stop.is_set():  # told to stop while the claim was in flight: give it back
                    self._tell(self.client.release, assignment["trial_id"], assignment["token"])
                    break
                early = assignment.get("claim_before_end", False)
                self.run_trial(assignment, end_in_background=early)
                # Where the service says so, the next trial is claimed before this one's end
                # is told, whatever the timing, so that the sampler's suggestions do not
                # depend on it: a sweep of one worker repeats exactly.
                next_up = self._claim_next(worker_id) if early else None
                self._start_end()
                idle_since = time.monotonic()
        finally:
            self._start_end()
            if next_up is not None:  # told to stop as it was claimed: give it back unstarted
                self._tell(self.client.release, next_up["trial_id"], next_up["token"])
            self._wait_ended()
        why = "told to stop" if self.stop.is_set() else "done"
        log.info("worker %s exiting (%s) after %d trials", self.options.name, why, self.trials_run)
        return self.trials_run

    def _gpu_count(self) -> int:
        if self.options.gpus:
            return len(self.options.gpus)
        return 1 if self.options.device.type == "cuda" else 0

    def _wait_for_memory(self) -> None:
        """On a GPU shared with other trials, wait until it has room for another trial the
        size of the largest this worker has run."""
        device = self.options.device
        if device.type != "cuda" or not self.peak_bytes:
            return
        needed = self.peak_bytes * self.options.memory_headroom
        while not self.stop.is_set():
            free, _ = torch.cuda.mem_get_info(device)
            if free >= needed:
                return
            log.info(
                "waiting for %.0f MiB free on %s (%.0f now)", needed / 2**20, device, free / 2**20
            )
            self.stop.wait(1.0)

    @contextmanager
    def _measuring_memory(self) -> Iterator[None]:
        """Keep the peak device memory of a trial that trained to its end (CUDA)."""
        device = self.options.device
        if device.type != "cuda":
            yield
            return
        torch.cuda.reset_peak_memory_stats(device)
        yield
        self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(device))

    def _claim(self, worker_id: int, idle_since: float) -> dict[str, Any] | None:
        """The next trial, or None; a server error is logged and waited out, not fatal."""
        wait = self.options.wait_seconds
        if self.options.exit_when_idle is not None:  # the poll ends when idling must
            wait = min(wait, max(0.0, idle_since + self.options.exit_when_idle - time.monotonic()))
        try:
            try:
                self._waiting = True
                return self.client.claim(
                    worker_id, wait, self.options.experiment_id, self._finishing()
                )
            finally:
                self._waiting = False
        except _StopWaiting:  # told to stop: whatever the cut answer held comes back now
            return self._claim_now(worker_id)
        except (ServiceError, ConnectionError) as exc:
            log.error("claim failed: %s", exc)
            self.stop.wait(min(wait, CLAIM_RETRY_SECONDS))
            return None

    def _claim_next(self, worker_id: int) -> dict[str, Any] | None:
        """As a trial's training ends: the next trial if one may start now (the one just
        trained is named as finishing, so it holds no slot), without waiting for work."""
        done = self._enough_trials() or (self.ran_out_of_memory and self.options.exit_on_oom)
        if self.stop.is_set() or done:
            return None
        self._wait_for_memory()
        return self._claim_now(worker_id)

    def _claim_now(self, worker_id: int) -> dict[str, Any] | None:
        """The trial this worker holds, if a claim handed it one, asked without waiting."""
        try:
            return self.client.claim(worker_id, 0, self.options.experiment_id, self._finishing())
        except (ServiceError, ConnectionError) as exc:
            log.error("claim failed: %s", exc)
            return None

    def run_trial(self, assignment: dict[str, Any], *, end_in_background: bool = False) -> None:
        """Train one claimed trial and tell the service how it ended. Never raises for the
        trial's own failures: a diverged or crashing trial must not take the worker down.

        With `end_in_background`, the end (the last reports' answers, the model's upload, the
        result) is left for `_start_end` to tell in a thread, while the worker claims and
        trains its next trial: its claims name this one as finishing. One end is told at a
        time, in order.

        Its calls and log lines carry the request id w<worker>-t<trial>-a<attempt>."""
        trace = f"w{self.worker_id}-t{assignment['trial_id']}-a{assignment['attempt']}"
        context = logs.request_id.set(trace)
        try:
            self._run_trial(assignment)
        finally:
            logs.request_id.reset(context)
        if not end_in_background:
            self._start_end(here=True)

    def _run_trial(self, assignment: dict[str, Any]) -> None:
        trial_id, token = assignment["trial_id"], assignment["token"]
        log.info(
            "trial %d (#%d of experiment %d, attempt %d, from epoch %d): %s",
            trial_id,
            assignment["number"],
            assignment["experiment_id"],
            assignment["attempt"],
            assignment["resume_epoch"] + 1,
            assignment["params"],
        )
        self.trials_run += 1
        interval = assignment["heartbeat_seconds"]
        # Entered here, left by the end's thread (_end): the lease is renewed until the end
        # is told, and the reports are delivered before it.
        beating, reporting = ExitStack(), ExitStack()
        try:
            beat = beating.enter_context(Heartbeat(self.client, trial_id, token, interval))
            outbox = reporting.enter_context(Outbox(self.client, trial_id, token))
            if assignment.get("program") is not None:
                end = _known(self._run_program(assignment, beat, outbox))
            else:
                end = self._run(assignment, beat, outbox)
        except BaseException:
            reporting.close()
            beating.close()
            raise
        self._wait_ended()  # one end told at a time, in order
        tell = partial(self._end, trial_id, token, end, reporting, beating)
        self._unsent = (trial_id, contextvars.copy_context(), tell)

    def _start_end(self, *, here: bool = False) -> None:
        """Tell the end of the trial trained last: in a thread, or `here` and now."""
        if self._unsent is None:
            return
        trial_id, context, tell = self._unsent
        self._unsent = None
        if here:
            context.run(tell)
            return
        thread = threading.Thread(target=context.run, args=(tell,), name=f"end of {trial_id}")
        thread.start()
        self._ending = (trial_id, thread)

    def _end(
        self,
        trial_id: int,
        token: str,
        end: Callable[[], Ending],
        reporting: ExitStack,
        beating: ExitStack,
    ) -> None:
        """Tell the service how a trial ended, once everything it reported was delivered; the
        lease is still renewed while the model uploads and the end is told, however long a
        server outage makes them."""
        try:
            with beating:
                with reporting:
                    ending = end()
                if ending is not None:
                    call, *args = ending
                    self._tell(call, trial_id, token, *args)
        except Exception:  # the worker goes on with its next trial whatever happened here
            log.exception("telling the end of trial %d failed", trial_id)

    def _finishing(self) -> list[int]:
        """The trial whose end is still to be told, if any: its training is over."""
        if self._unsent is not None:
            return [self._unsent[0]]
        if self._ending is not None and self._ending[1].is_alive():
            return [self._ending[0]]
        return []

    def _wait_ended(self) -> None:
        """Wait until the end under way has been told."""
        if self._ending is not None:
            self._ending[1].join()
            self._ending = None

    def _run(
        self, assignment: dict[str, Any], beat: Heartbeat, outbox: Outbox
    ) -> Callable[[], Ending]:
        """Train, and return what says (once the last reports were answered) which call
        ends the trial on the service (None: it already ended)."""
        trial_id = assignment["trial_id"]
        try:
            with self._measuring_memory():
                result = self._train(assignment, beat, outbox)
        except (Pruned, Stopped, TrialGone) as exc:
            log.info("trial %d stopped: %s", trial_id, exc or type(exc).__name__)
            self._ended("stopped")
            return _known(None)
        except Interrupted as exc:  # shutting down: checkpointed; the trial goes back
            log.info(
                "gave trial %d back at epoch %d (checkpointed: the next worker resumes it)",
                trial_id,
                exc.epoch,
            )
            self._ended("released")
            return _known((self.client.release,))
        except Diverged as exc:
            ending: Ending = (self.client.fail, "diverged", str(exc))
        except Exception as exc:
            log.exception("trial %d failed", trial_id)
            message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            self.ran_out_of_memory = self.ran_out_of_memory or _out_of_memory(exc)
            ending = (self.client.fail, "oom" if _out_of_memory(exc) else "error", message)
        else:
            ending = (self._finish, result, _model_kept(assignment, result.value))
        return partial(self._after_reports, trial_id, outbox, ending)

    def _after_reports(self, trial_id: int, outbox: Outbox, ending: Ending) -> Ending:
        """Training did not wait for the answers to the last reports: one may end the trial."""
        outbox.drain()
        if outbox.verdict is not None:
            log.info("trial %d stopped: %s", trial_id, outbox.verdict[1])
            self._ended("stopped")
            return None
        assert ending is not None
        self._ended("completed" if ending[0] == self._finish else ending[1])
        return ending

    def _run_program(self, assignment: dict[str, Any], beat: Heartbeat, outbox: Outbox) -> Ending:
        """Run the trial's program in its own process group and say how the trial ends."""
        trial_id, name = assignment["trial_id"], assignment["program"]
        program = self.options.programs.get(name)
        if program is None:  # the service routes by program: only after a change of mind
            return (
                self.client.fail,
                "error",
                f"worker {self.options.name} has no program {name!r}",
            )
        if program.function is not None and assignment["processes"] > 1:
            message = (
                f"program {name!r} is a function, which runs as one process; "
                f"requirements.resources.processes = {assignment['processes']} needs a command "
                "that starts them (torchrun --nproc_per_node={processes} ...)"
            )
            return (self.client.fail, "error", message)
        try:
            restore = None
            if assignment["resume_epoch"] > 0:
                restore = self.client.download_checkpoint(trial_id, assignment["token"])
        except TrialGone as exc:
            log.info("trial %d ended elsewhere: %s", trial_id, exc)
            return None
        setting = Setting(
            device=str(self.options.device),
            gpus=self.options.gpus,
            grace_seconds=self.options.grace_seconds,
            work_dir=self.options.cache_dir / "programs",
        )
        run = ProgramRun(
            program,
            assignment,
            setting,
            outbox=outbox,
            beat=beat,
            shutdown=self.stop,
            restore=restore,
        )
        try:
            outcome = run.run()
        except OSError as exc:  # the command does not exist, is not executable, ...
            outcome = Outcome("failed", "error", f"could not start program {name!r}: {exc}")
        finally:
            shutil.rmtree(run.dir, ignore_errors=True)
        self._ended(outcome.reason if outcome.kind == "failed" else outcome.kind)
        if outcome.kind == "stopped":
            log.info("trial %d stopped: %s", trial_id, outcome.message)
            return None
        if outcome.kind == "released":
            log.info("trial %d given back: %s", trial_id, outcome.message or outcome.reason)
            return (self.client.release, outcome.reason, outcome.message)
        if outcome.kind == "failed":
            log.warning(
                "trial %d failed (%s): %s",
                trial_id,
                outcome.reason,
                outcome.message.splitlines()[0],
            )
            self.ran_out_of_memory = self.ran_out_of_memory or outcome.reason == "oom"
            return (self._fail_program, outcome)
        assert outcome.value is not None
        return (self._complete_program, outcome, _model_kept(assignment, outcome.value))

    def _fail_program(self, trial_id: int, token: str, outcome: Outcome) -> None:
        if outcome.outputs is not None:
            self.client.upload_outputs(trial_id, token, outcome.outputs)
        self.client.fail(trial_id, token, outcome.reason, outcome.message, outcome.output)

    def _complete_program(
        self, trial_id: int, token: str, outcome: Outcome, send_model: bool
    ) -> None:
        if outcome.outputs is not None:
            self.client.upload_outputs(trial_id, token, outcome.outputs)
        if outcome.model is not None and send_model:
            self.client.upload_weights(trial_id, token, outcome.model)
        assert outcome.value is not None and outcome.epoch is not None
        self.client.complete(trial_id, token, outcome.value, outcome.epoch, outcome.output)
        log.info("trial %d completed: %.4f at report %d", trial_id, outcome.value, outcome.epoch)

    def _ended(self, outcome: str) -> None:
        self.metrics.trial_ended(outcome, self.options.device)

    def _tell(self, call: Callable[..., None], trial_id: int, token: str, *args: Any) -> None:
        """Report a trial's end; if the service refuses or stays away, log it and go on."""
        try:
            call(trial_id, token, *args)
        except TrialGone as exc:
            log.info("trial %d ended elsewhere: %s", trial_id, exc)
        except (ServiceError, ConnectionError) as exc:
            log.error("could not report the end of trial %d: %s", trial_id, exc)

    def _train(self, assignment: dict[str, Any], beat: Heartbeat, outbox: Outbox) -> TrialResult:
        objective = assignment["objective"]
        config = TrialConfig(
            model=assignment["model"],
            dataset=assignment["dataset"],
            hparams=assignment["config"],
            objective_metric=objective["metric"],
            direction=objective["direction"],
            reduce=objective["reduce"],
            number=assignment["number"],
        )
        data = self._dataset(assignment["dataset"])
        trial_id, token = assignment["trial_id"], assignment["token"]
        resume = None
        if assignment["resume_epoch"] > 0:
            resume = self.client.download_checkpoint(trial_id, token)

        def check() -> None:
            """End the trial once the service said so: in answer to a report (which may come
            while the next epoch trains) or to a heartbeat."""
            if outbox.verdict is not None:
                action, why = outbox.verdict
                raise Pruned(why) if action == "prune" else Stopped(why)
            if beat.stop_reason:
                raise Stopped(beat.stop_reason)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            outbox.report(epoch, metrics)
            self.metrics.epoch_seconds.observe(metrics["epoch_seconds"])
            check()

        hparams = assignment["config"]
        every, share = int(hparams["checkpoint_every"]), float(hparams["checkpoint_share"])
        checkpoints = _Checkpoints(every, share, outbox, self.stop)
        return train_trial(
            config,
            data,
            self.options.device,
            report,
            checkpoints=checkpoints,
            resume=resume,
            check=check,
        )

    def _finish(self, trial_id: int, token: str, result: TrialResult, send_model: bool) -> None:
        if send_model:
            self.client.upload_weights(trial_id, token, result.model)
        self.client.complete(trial_id, token, result.value, result.epoch)
        log.info(
            "trial %d completed: %.4f at epoch %d%s",
            trial_id,
            result.value,
            result.epoch,
            "" if send_model else " (its model is not among those kept: not sent)",
        )

    def _dataset(self, spec: dict[str, Any]) -> DeviceData:
        """The dataset on the device, loaded once per worker and reused across trials."""
        key = json.dumps(spec, sort_keys=True)
        if key not in self._data:
            uploaded = self._uploaded(spec["sha256"]) if "sha256" in spec else None
            dataset = datasets.for_spec(spec, uploaded)
            self._data[key] = to_device(dataset, self.options.device)
            while len(self._data) > DATASETS_KEPT:
                self._data.popitem(last=False)
        self._data.move_to_end(key)
        return self._data[key]

    def _uploaded(self, sha256: str) -> tuple[np.ndarray, np.ndarray]:
        """An uploaded dataset's arrays: from the cache, else downloaded once and checked."""
        path = self.options.cache_dir / "datasets" / f"{sha256}.npz"
        if path.exists():
            return arrays.from_npz(path.read_bytes())
        data = self.client.download_dataset(sha256)
        X, y = arrays.from_npz(data)
        if arrays.content_hash(X, y) != sha256:
            raise ValueError(f"dataset {sha256} arrived damaged (its content hash differs)")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(path)  # whole or not at all, also beside other workers of the host
        return X, y

    def _enough_trials(self) -> bool:
        return self.options.max_trials is not None and self.trials_run >= self.options.max_trials

    def _idle_too_long(self, idle_since: float) -> bool:
        limit = self.options.exit_when_idle
        return limit is not None and time.monotonic() - idle_since >= limit


class _Checkpoints:
    """Checkpoints every `every` epochs through the outbox (after that epoch's report), within
    `share` of the trial's time, and always once the worker is told to stop, which then ends
    the trial.

    Within `share`: a due checkpoint is skipped while the last one is still being sent, or
    when sending it took more than `share` of the time since. Epochs long beside a checkpoint
    keep every one; epochs of milliseconds, whose checkpoints would cost a good part of the
    training, keep one every so many, and a crash loses that much training at most."""

    def __init__(self, every: int, share: float, outbox: Outbox, stop: threading.Event) -> None:
        self.every, self.share, self.outbox, self.stop = every, share, outbox, stop

    def due(self, epoch: int) -> bool:
        if self.stop.is_set():
            return True
        if self.every == 0 or epoch % self.every:
            return False
        return self.outbox.checkpoint_affordable(self.share)

    def save(self, epoch: int, snapshot: Snapshot) -> None:
        self.outbox.checkpoint(epoch, snapshot)
        if self.stop.is_set():
            raise Interrupted(epoch)


def _known(ending: Ending) -> Callable[[], Ending]:
    """An end there is nothing to wait for."""
    return lambda: ending


def _model_kept(assignment: dict[str, Any], value: float) -> bool:
    """Whether the service may keep the trial's model (`artifacts.keep_models`): one that does
    not beat the bar its claim gave cannot be among the kept ones, so it is not sent."""
    if not assignment.get("send_model", True):
        return False
    bar = assignment.get("model_bar")
    if bar is None:
        return True
    return bool(value > bar if assignment["objective"]["direction"] == "maximize" else value < bar)


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA or host out of memory (torch reports the host's as a RuntimeError)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def pick_device(requested: str | None) -> torch.device:
    """cuda when available, else cpu; an explicit request wins."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
