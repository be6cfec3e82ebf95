"""One attempt of a program: its process group, the local channel its SDK talks over, its
output, and how it ended.

The worker keeps the lease, the heartbeats and the outbox; the program only talks to this
runner, over a socket on 127.0.0.1 that needs the attempt's secret, or prints reports as
`SWEEP {"step": 3, "val_loss": 0.41}` lines. When the trial must end (pruned, stopped, timed
out, taken over, or the worker is shutting down) the program's process group gets SIGTERM
(the SDK turns it into Stopped at the next report; a script without the SDK just ends), and
SIGKILL once the grace period is over.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import math
import os
import secrets
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sweep import sdk
from sweep.worker.heartbeat import Heartbeat
from sweep.worker.outbox import Outbox
from sweep.worker.programs import Attempt, Program

log = logging.getLogger("sweep.worker")

TAIL_LINES = 50  # of the program's output, in a failed trial's message
OUTPUT_LINES = 500  # of the program's output, kept with its trial
LINE_LIMIT = 64 * 1024  # a longer output line is cut
MESSAGE_LIMIT = 1 << 20  # one message from the SDK
OUTPUTS_LIMIT = 256 << 20  # bytes of SWEEP_OUTPUT_DIR kept with a trial
REPORT_PREFIX = "SWEEP "
CHECKPOINT_MAGIC = b"SWEEP-CHECKPOINT-1\n"  # then a JSON header line, then the payload


@dataclass
class Outcome:
    """How the attempt ended, for the worker to tell the service."""

    kind: str  # completed, failed, released (given back), stopped (ended on the service)
    reason: str = ""  # failed: diverged, oom, error
    message: str = ""
    value: float | None = None
    epoch: int | None = None
    model: bytes | None = None  # what the program saved as its model
    output: str | None = None  # the tail of its output
    outputs: bytes | None = None  # the files it left in SWEEP_OUTPUT_DIR, a gzipped tar


@dataclass(frozen=True)
class Setting:
    """What the worker gives every program it runs."""

    device: str  # the worker's device: cpu, cuda:1, ...
    gpus: list[int] | None  # the GPUs its trials may use (sweep worker --gpus), else the device's
    grace_seconds: float
    work_dir: Path  # the attempt's directories go under it, removed afterwards


def attempt_dir(work_dir: Path, assignment: dict[str, Any]) -> Path:
    """A new directory for an attempt's files, its own even when another worker on this host
    runs an attempt of the same trial id and number (of another server) at the same time."""
    work_dir.mkdir(parents=True, exist_ok=True)
    name = f"trial-{assignment['trial_id']}-{assignment['attempt']}-"
    return Path(tempfile.mkdtemp(prefix=name, dir=work_dir))


class ProgramRun:
    def __init__(
        self,
        program: Program,
        assignment: dict[str, Any],
        setting: Setting,
        *,
        outbox: Outbox,
        beat: Heartbeat,
        shutdown: threading.Event,
        restore: bytes | None,
    ) -> None:
        self.program, self.assignment, self.setting = program, assignment, setting
        self.outbox, self.beat, self.shutdown = outbox, beat, shutdown
        self.objectives = [o["metric"] for o in assignment["objectives"]]
        self.directions = [o["direction"] for o in assignment["objectives"]]
        self.reduce = assignment["objective"]["reduce"]
        self.dir = attempt_dir(setting.work_dir, assignment)
        self.attempt = Attempt(
            trial_id=assignment["trial_id"],
            number=assignment["number"],
            attempt=assignment["attempt"],
            config=assignment["config"],
            processes=assignment["processes"],
            checkpoint_dir=self.dir / "checkpoints",
            output_dir=self.dir / "output",
            params_file=self.dir / "params.json",
        )
        self._restore = restore
        self._lock = threading.Lock()
        self.epoch = assignment["resume_epoch"]  # the service's count of this trial's reports
        # (epoch, objectives) of the reports that held every objective, earlier attempts' too
        self.scored = [(s["epoch"], s["values"]) for s in assignment.get("resumed_scores", [])]
        self.diverged: str | None = None
        self.failure: str | None = None  # what the SDK said ended the program
        self.out_of_memory = False
        self.model: Path | None = None
        self.uses_sdk = False
        self.killed = False  # by this worker, once the grace period was over
        self.told_to_end = False  # by SIGTERM, or an answer that raised Pruned or Stopped
        self.tail: deque[str] = deque(maxlen=OUTPUT_LINES)
        self._cut_warned = False

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> Outcome:
        for directory in (self.attempt.checkpoint_dir, self.attempt.output_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.attempt.params_file.write_text(json.dumps(self.assignment["config"]))
        restored = self._restored()
        if self.program.call is not None:
            return self._run_in_process(self.program.call, restored)
        secret = secrets.token_hex(16)
        with _Channel(secret, lambda message: self._answer(message, restored)) as channel:
            argv = self.program.argv(self.attempt)
            log.info("trial %d runs %s", self.attempt.trial_id, " ".join(argv))
            process = subprocess.Popen(
                argv,
                env=self._environment(channel.address, secret),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach its children
            )
            assert process.stdout is not None
            reader = threading.Thread(  # in the trial's context: its lines carry its request id
                target=contextvars.copy_context().run,
                args=(self._read, process.stdout),
                daemon=True,
            )
            reader.start()
            code = self._wait(process, channel)
            log.info("trial %d: its program ended (%s)", self.attempt.trial_id, _exit(code))
            _signal_group(process.pid, signal.SIGKILL)  # children it left behind go too
            reader.join(timeout=10)
        self.outbox.drain()  # the answers to its last reports may end the trial
        outcome = self._outcome(code)
        if outcome.kind in ("completed", "failed"):
            outcome.outputs = self._packed_outputs()
        return outcome

    def _packed_outputs(self) -> bytes | None:
        """SWEEP_OUTPUT_DIR as a gzipped tar, unless it is empty or too large to keep."""
        files = [p for p in self.attempt.output_dir.rglob("*") if p.is_file()]
        if not files:
            return None
        size = sum(p.stat().st_size for p in files)
        if size > OUTPUTS_LIMIT:
            log.warning(
                "trial %d left %d bytes in SWEEP_OUTPUT_DIR, over %d: not kept",
                self.attempt.trial_id,
                size,
                OUTPUTS_LIMIT,
            )
            return None
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(files):
                tar.add(path, arcname=str(path.relative_to(self.attempt.output_dir)))
        return buffer.getvalue()

    def _run_in_process(
        self, call: Callable[[sdk.Trial], Any], restored: dict[str, Any] | None
    ) -> Outcome:
        """Call the function in this thread: the answers to its reports end it (nothing can
        kill a thread), and its exceptions are its outcome."""
        channel = _Local(lambda message: self._answer(message, restored))
        trial = sdk.Trial(channel, channel.ask({"op": "hello"}))
        code = 0
        try:
            call(trial)
        except (sdk.Pruned, sdk.Stopped):
            self.told_to_end = True
        except Exception as error:
            trial._failed(error)
            self.tail.extend(traceback.format_exc().splitlines())
            code = 1
        self.outbox.drain()
        return self._outcome(code)

    def _wait(self, process: subprocess.Popen[bytes], channel: _Channel) -> int:
        """Wait for the program to exit. Once the trial must end, a program that uses the SDK
        has the grace period to end by itself (its next report raises), and is then sent
        SIGTERM; a script without it, or any program when the worker shuts down, gets SIGTERM
        at once. SIGKILL follows when the grace period after SIGTERM is over."""
        since: float | None = None  # when the program was last asked to end
        terminated = False
        while True:
            try:
                return process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            action, why = self.verdict()
            if action == sdk.CONTINUE:
                continue
            channel.push(action, why)  # every rank, including one that connected late
            if since is None:
                log.info("trial %d: %s; ending its program", self.attempt.trial_id, why)
                since = time.monotonic()
            overdue = time.monotonic() - since > self.setting.grace_seconds
            if not terminated and (overdue or not self.uses_sdk or self.shutdown.is_set()):
                self.told_to_end = terminated = True
                since = time.monotonic()
                _signal_group(process.pid, signal.SIGTERM)
            elif terminated and overdue and not self.killed:
                self.killed = True
                _signal_group(process.pid, signal.SIGKILL)

    def _outcome(self, code: int) -> Outcome:
        name = self.objectives[0]
        if self.diverged is not None:
            return self._failed("diverged", self.diverged)
        if self.outbox.verdict is not None or self.beat.stop_reason is not None:
            return Outcome("stopped", message=(self.verdict()[1]))
        if self.shutdown.is_set() and (code != 0 or self.told_to_end):
            return Outcome("released", reason="preempted")
        if code == -signal.SIGKILL and not self.killed:  # the OOM killer, an operator: retry
            return Outcome("released", reason="killed", message="its program was killed by SIGKILL")
        if self.out_of_memory or (code != 0 and _mentions_out_of_memory(self.tail)):
            return self._failed(
                "oom", self.failure or f"the program ran out of memory ({_exit(code)})"
            )
        if code == 0:
            if not self.scored:
                return self._failed("error", f"the program exited 0 but never reported {name}")
            epoch, values = self._chosen()
            model = self.model.read_bytes() if self.model is not None else None
            return Outcome(
                "completed", value=values[0], epoch=epoch, model=model, output=self.output()
            )
        return self._failed("error", f"{self.failure or 'the program failed'} ({_exit(code)})")

    def _failed(self, reason: str, message: str) -> Outcome:
        last = list(self.tail)[-TAIL_LINES:]
        if last:
            message += f"\n--- the last {len(last)} lines of its output ---\n" + "\n".join(last)
        return Outcome("failed", reason=reason, message=message, output=self.output())

    def output(self) -> str:
        return "\n".join(self.tail)

    def _chosen(self) -> tuple[int, list[float]]:
        """The epoch whose values are the trial's: the last, or the best of the first
        objective, among the reports that held every objective."""
        if self.reduce == "last":
            return self.scored[-1]
        sign = 1.0 if self.directions[0] == "maximize" else -1.0
        return max(reversed(self.scored), key=lambda scored: sign * scored[1][0])

    def verdict(self) -> tuple[str, str]:
        """Whether the program goes on: ("continue" | "prune" | "stop", why)."""
        if self.diverged is not None:
            return sdk.STOP, self.diverged
        if self.outbox.verdict is not None:
            return self.outbox.verdict
        if self.beat.stop_reason is not None:
            return sdk.STOP, self.beat.stop_reason
        if self.shutdown.is_set():
            return sdk.STOP, "the worker is shutting down: checkpoint and return"
        return sdk.CONTINUE, ""

    # --- what the program says -------------------------------------------------------------

    def _answer(
        self, message: dict[str, Any], restored: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        op = message.get("op")
        if op == "hello":
            self.uses_sdk = True
            a = self.assignment
            return {
                "trial_id": a["trial_id"],
                "number": a["number"],
                "attempt": a["attempt"],
                "params": a["config"],
                "device": _program_device(self.setting.device),
                "objective": self.objectives[0],
                "restore": restored,
                "checkpoint_dir": str(self.attempt.checkpoint_dir),
            }
        if op == "report":
            self.report(message.get("step"), message.get("metrics"))
            return None  # not answered: the verdict is pushed when it changes
        if op == "checkpoint":
            return self._checkpoint(Path(str(message["path"])), str(message.get("kind")))
        elif op == "model":
            self.model = self.dir / "model"
            os.replace(_copy(Path(str(message["path"])), self.dir / "model.part"), self.model)
            return {"ok": True}
        elif op == "failed":
            self.failure = str(message.get("error", ""))[:2000]
            self.out_of_memory = self.out_of_memory or bool(message.get("oom"))
            return {"ok": True}
        elif op != "verdict":
            return {"refused": f"unknown op {op!r}"}
        action, reason = self.verdict()
        self.told_to_end = self.told_to_end or action != sdk.CONTINUE
        return {"action": action, "reason": reason}

    def report(self, step: object, metrics: object) -> None:
        """A report, from the SDK or an output line: queued for the service at once."""
        if not isinstance(metrics, dict):
            raise ValueError("metrics must be an object of numbers")
        values: dict[str, float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or not 1 <= len(key) <= 64:
                raise ValueError(f"a metric's name must be 1-64 characters: {key!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"metric {key} must be a number, got {value!r}")
            values[key] = float(value)
        if not values:
            raise ValueError("a report needs at least one metric")
        with self._lock:
            for name in self.objectives:
                if name in values and not math.isfinite(values[name]):
                    self.diverged = f"{name} is {values[name]} at step {step}"
                    return
            finite = {k: v for k, v in values.items() if math.isfinite(v)}
            if isinstance(step, int) and not isinstance(step, bool) and "step" not in finite:
                finite["step"] = float(step)
            self.epoch += 1
            self.outbox.report(self.epoch, finite)
            if all(name in finite for name in self.objectives):
                self.scored.append((self.epoch, [finite[name] for name in self.objectives]))

    def _checkpoint(self, path: Path, kind: str) -> dict[str, Any]:
        with self._lock:
            epoch = self.epoch
        if epoch == 0:
            return {"ok": False, "error": "take a checkpoint after a report: it resumes from one"}
        name = path.name if kind == "file" else sdk.CHECKPOINT_NAME
        header = json.dumps({"kind": "file" if kind == "file" else "object", "name": name})
        data = CHECKPOINT_MAGIC + header.encode() + b"\n" + path.read_bytes()
        self.outbox.checkpoint(epoch, _Bytes(data))
        return {"ok": True}

    def _restored(self) -> dict[str, Any] | None:
        """The last checkpoint, put back where the program finds it."""
        if self._restore is None:
            return None
        data = self._restore
        header: dict[str, Any] = {"kind": "file", "name": "checkpoint"}
        if data.startswith(CHECKPOINT_MAGIC):
            line, _, data = data[len(CHECKPOINT_MAGIC) :].partition(b"\n")
            header = json.loads(line)
        path = self.attempt.checkpoint_dir / Path(str(header["name"])).name
        path.write_bytes(data)
        return {"kind": header["kind"], "path": str(path)}

    def _read(self, output: IO[bytes]) -> None:
        """The program's output, line by line: reports taken, the tail kept, the rest logged."""
        cutting = False
        for chunk in iter(lambda: output.readline(LINE_LIMIT), b""):
            whole = chunk.endswith(b"\n")
            if cutting:  # the rest of a line too long to keep
                cutting = not whole
                continue
            if not whole and len(chunk) >= LINE_LIMIT:
                cutting = True
                if not self._cut_warned:
                    self._cut_warned = True
                    log.warning(
                        "trial %d printed a line over %d bytes: cut",
                        self.attempt.trial_id,
                        LINE_LIMIT,
                    )
            line = chunk.decode("utf-8", errors="replace").rstrip("\r\n").replace("\x00", "?")
            self.tail.append(line[:2000])
            log.info("| %s", line[:1000])
            if line.startswith(REPORT_PREFIX):
                self._line_report(line[len(REPORT_PREFIX) :])

    def _line_report(self, text: str) -> None:
        try:
            metrics = json.loads(text)
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
            step = metrics.pop("step", None)
            self.report(step, metrics)
        except ValueError as exc:  # json's errors are ValueErrors too
            log.warning("trial %d: ignored a malformed report line: %s", self.attempt.trial_id, exc)

    def _environment(self, address: str, secret: str) -> dict[str, str]:
        a = self.attempt
        env = {k: v for k, v in os.environ.items() if k not in ("SWEEP_TOKEN",)}
        env.update(
            SWEEP_CHANNEL=address,
            SWEEP_CHANNEL_SECRET=secret,
            SWEEP_PARAMS_JSON=json.dumps(a.config),
            SWEEP_TRIAL_ID=str(a.trial_id),
            SWEEP_TRIAL_NUMBER=str(a.number),
            SWEEP_ATTEMPT=str(a.attempt),
            SWEEP_CHECKPOINT_DIR=str(a.checkpoint_dir),
            SWEEP_OUTPUT_DIR=str(a.output_dir),
            SWEEP_OBJECTIVE=self.objectives[0],
            SWEEP_DEVICE=_program_device(self.setting.device),
            SWEEP_PROCESSES=str(a.processes),
            CUDA_VISIBLE_DEVICES=_visible_devices(self.setting.device, self.setting.gpus),
            PYTHONUNBUFFERED="1",  # report lines arrive as they are printed
        )
        return env


class _Bytes:
    """A checkpoint already serialized, as the outbox takes it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data


class _Local:
    """The SDK's channel for a function called in the worker's own process."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        self.answer = answer

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.answer(message) or {}

    def send(self, message: dict[str, Any]) -> None:
        self.answer(message)

    def verdict(self) -> dict[str, Any]:
        return self.ask({"op": "verdict"})


class _Channel:
    """The worker's end of the local channel: one thread per connection (a job of several
    processes has one per rank), each message checked against the attempt's secret. Reports
    get no answer; `push` sends every connection the verdict once the trial must end."""

    def __init__(
        self, secret: str, answer: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> None:
        self.secret, self.answer = secret, answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self._closed = False
        # Each SDK's connection, the stream over it and the lock its writes take.
        self._streams: list[tuple[socket.socket, Any, threading.Lock]] = []
        self._serving: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> _Channel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.server.close()
        # The program has exited: what it sent last is still read to the end (reports are not
        # answered, so nothing else says they arrived), unless a process it left holds on.
        deadline = time.monotonic() + 5
        for thread in list(self._serving):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for connection, _, _ in list(self._streams):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()

    def push(self, action: str, reason: str) -> None:
        line = json.dumps({"push": "verdict", "action": action, "reason": reason}).encode()
        for _, stream, lock in list(self._streams):
            with contextlib.suppress(OSError, ValueError), lock:
                stream.write(line + b"\n")
                stream.flush()

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._serving.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lock = threading.Lock()
        with contextlib.suppress(OSError), connection, connection.makefile("rwb") as stream:
            for line in iter(lambda: stream.readline(MESSAGE_LIMIT), b""):
                try:
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError("not a JSON object")
                except ValueError:
                    return  # not the SDK: hang up
                if not secrets.compare_digest(str(message.get("secret", "")), self.secret):
                    with lock:
                        refusal = {"refused": "wrong secret", "id": message.get("id")}
                        stream.write(json.dumps(refusal).encode() + b"\n")
                        stream.flush()
                    return
                if message.get("op") == "hello":  # one of ours: it may be pushed verdicts
                    self._streams.append((connection, stream, lock))
                try:
                    reply = self.answer(message)
                except (ValueError, OSError, KeyError) as exc:
                    reply = {"refused": str(exc)}
                if reply is not None:
                    reply["id"] = message.get("id")
                    with lock:
                        stream.write(json.dumps(reply).encode() + b"\n")
                        stream.flush()


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _copy(source: Path, target: Path) -> Path:
    with source.open("rb") as src, target.open("wb") as out:
        while block := src.read(1 << 20):
            out.write(block)
    return target


def _exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


def _mentions_out_of_memory(lines: deque[str]) -> bool:
    text = "\n".join(lines).lower()
    return "out of memory" in text or "memoryerror" in text or "outofmemoryerror" in text


def _program_device(device: str) -> str:
    """The device as the program sees it: cuda:N becomes cuda, the one GPU it may use."""
    return device.split(":")[0]


def _visible_devices(device: str, gpus: list[int] | None) -> str:
    """CUDA_VISIBLE_DEVICES for the program: the worker's GPUs (`gpus`, else its device's),
    none on a CPU worker; numbered within what the worker itself sees."""
    if not device.startswith("cuda"):
        return ""
    indices = gpus if gpus else [int(device.partition(":")[2] or 0)]
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return ",".join(visible[i] if i < len(visible) else str(i) for i in indices)
