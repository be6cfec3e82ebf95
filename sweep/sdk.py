"""The SDK for your own training code, run by a Sweep worker as a program.

    import sweep

    trial = sweep.trial()
    lr = trial.params["lr"]
    state = trial.restore()              # None on a first attempt
    for epoch in range(start, epochs):
        ...
        trial.report(epoch, val_macro_f1=f1, train_loss=loss)   # raises sweep.Pruned
        trial.checkpoint({"epoch": epoch, "model": model.state_dict()})
    trial.save_model(model.state_dict())

The worker that started the program keeps the trial's lease, heartbeats and retries; the
program talks only to it, over a local connection that needs the attempt's secret. Outside a
worker, `sweep.trial()` gives a trial without params whose reports are printed.

In a job of several processes (torchrun), every rank gets the same params and only rank 0's
reports are kept. With torch.distributed initialized, `report`, `should_prune` and
`should_stop` are collectives: every rank calls them, and every rank gets the same answer.

Only the standard library is needed; torch is imported to save and load objects, and only
when there is one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol

CONTINUE, STOP, PRUNE = "continue", "stop", "prune"
_SEVERITY = {CONTINUE: 0, STOP: 1, PRUNE: 2}
CHECKPOINT_NAME = "sweep-checkpoint.pt"  # an object checkpoint, where restore() finds it
_MAX_MESSAGE = 1 << 20  # a reply is one JSON line, far below this


class Pruned(Exception):
    """The service pruned the trial: end it now (as `raise optuna.TrialPruned()` would)."""


class Stopped(Exception):
    """The trial must end without a result: its experiment ended, its attempt was taken over,
    it ran past its time limit, or the worker is shutting down (checkpoint, then return)."""


class Trial:
    """One attempt of one trial, as the program sees it."""

    def __init__(self, channel: Channel | None, hello: dict[str, Any]) -> None:
        self._channel = channel
        self.params: dict[str, Any] = dict(hello.get("params", {}))
        self.trial_id: int | None = hello.get("trial_id")
        self.number: int | None = hello.get("number")
        self.attempt: int = int(hello.get("attempt", 1))
        self.device: str = str(hello.get("device", "cpu"))
        self.objective: str | None = hello.get("objective")
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._restore: dict[str, Any] | None = hello.get("restore")
        self._checkpoint_dir: str | None = hello.get("checkpoint_dir")
        self._shutting_down = threading.Event()

    @property
    def connected(self) -> bool:
        """Whether a worker runs this trial (else reports are printed, nothing is kept)."""
        return self._channel is not None

    # --- reports and the service's answer ----------------------------------------------

    def report(self, step: int, **metrics: float) -> None:
        """Report metrics at `step` (any names; the objective's among them when there is one).
        Raises Pruned when the service prunes the trial, Stopped when it must end."""
        if not metrics:
            raise ValueError("report at least one metric")
        if any(not 1 <= len(name) <= 64 for name in metrics):
            raise ValueError("a metric's name has 1 to 64 characters")
        values = {name: float(value) for name, value in metrics.items()}
        if self._channel is None:
            print(f"sweep: step {step}: {values}", file=sys.stderr)
            return
        if self.rank == 0:  # sent, not waited on: the worker's answer comes when it changes
            self._channel.send({"op": "report", "step": int(step), "metrics": values})
        action, reason = self._agreed(self._channel.verdict())
        if action == PRUNE:
            raise Pruned(reason)
        if action == STOP:
            raise Stopped(reason)

    def should_prune(self) -> bool:
        """Whether the service pruned the trial, for code that prefers to ask."""
        return self._verdict()[0] == PRUNE

    def should_stop(self) -> bool:
        """Whether the trial should end now, pruned or stopped."""
        return self._verdict()[0] != CONTINUE

    def _verdict(self) -> tuple[str, str]:
        if self._channel is None:
            return (STOP, "shutting down") if self._shutting_down.is_set() else (CONTINUE, "")
        return self._agreed(self._channel.verdict())

    def _agreed(self, answer: dict[str, Any]) -> tuple[str, str]:
        """The service's answer; in a distributed job, the gravest any rank got, on every rank
        (answers reach ranks at slightly different moments)."""
        action = str(answer.get("action", CONTINUE))
        if self._shutting_down.is_set() and action == CONTINUE:
            action = STOP
        reason = str(answer.get("reason") or action)
        dist = _distributed()
        if dist is None:
            return action, reason
        import torch

        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        code = torch.tensor([_SEVERITY[action]], device=device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        agreed = next(a for a, n in _SEVERITY.items() if n == int(code.item()))
        return agreed, reason if agreed == action else f"{agreed} (on another rank)"

    # --- checkpoints and the model -------------------------------------------------------

    def checkpoint(self, obj_or_path: Any) -> None:
        """Keep a checkpoint (an object, saved with torch.save or pickle, or a file's path) to
        resume from if this attempt dies. Only the newest is kept; take it after a report."""
        if self._channel is None or self.rank != 0:
            return
        with _as_file(obj_or_path, self._scratch()) as (path, kind):
            try:
                answer = self._channel.ask({"op": "checkpoint", "path": str(path), "kind": kind})
            except RuntimeError as refused:  # training goes on without it
                answer = {"error": str(refused)}
        if not answer.get("ok"):
            import warnings

            warnings.warn(f"sweep: checkpoint not kept: {answer.get('error')}", stacklevel=2)

    def restore(self) -> Any | None:
        """What the last checkpoint held (None on a first attempt): the object, or the path
        of a file checkpoint, restored into SWEEP_CHECKPOINT_DIR."""
        if self._restore is None:
            return None
        path = Path(self._restore["path"])
        if self._restore["kind"] == "file":
            return path
        return _load(path)

    def save_model(self, obj_or_path: Any) -> None:
        """Mark the trial's model: an object (a state_dict, a module) or a file's path. The
        last one saved becomes the trial's model artifact when the trial completes."""
        if self._channel is None or self.rank != 0:
            return
        with _as_file(obj_or_path, self._scratch()) as (path, kind):
            self._channel.ask({"op": "model", "path": str(path), "kind": kind})

    def _scratch(self) -> Path:
        return Path(self._checkpoint_dir or tempfile.gettempdir())

    def _failed(self, error: BaseException) -> None:
        """Tell the worker what ended the program (an out-of-memory error is not a bug)."""
        if self._channel is not None:
            with contextlib.suppress(OSError, ValueError):
                self._channel.ask(
                    {"op": "failed", "oom": _out_of_memory(error), "error": _describe(error)}
                )


_trial: Trial | None = None
_lock = threading.Lock()


def trial() -> Trial:
    """This process's trial (the same object on every call)."""
    global _trial
    with _lock:
        if _trial is None:
            _trial = _connect()
        return _trial


def _connect() -> Trial:
    address = os.environ.get("SWEEP_CHANNEL")
    if not address:
        print(
            "sweep: not run by a Sweep worker (sweep worker --program ...): "
            "no params; reports are printed, not sent",
            file=sys.stderr,
        )
        return Trial(None, {"params": json.loads(os.environ.get("SWEEP_PARAMS_JSON", "{}"))})
    channel = _Channel(address, os.environ.get("SWEEP_CHANNEL_SECRET", ""))
    found = Trial(channel, channel.ask({"op": "hello", "rank": int(os.environ.get("RANK", "0"))}))
    _install_hooks(found)
    return found


def _install_hooks(found: Trial) -> None:
    """SIGTERM (the worker is shutting down, or the trial ended) makes the next report raise
    Stopped, so the program can checkpoint and return; a second one ends it. An uncaught
    exception is described to the worker before Python prints it."""
    previous_hook = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        if isinstance(error, Pruned | Stopped):  # the worker knows why: no traceback
            print(f"sweep: trial {type(error).__name__.lower()}: {error}", file=sys.stderr)
            return
        found._failed(error)
        previous_hook(kind, error, tb)

    sys.excepthook = hook
    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        if found._shutting_down.is_set():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        found._shutting_down.set()

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_term)


class Channel(Protocol):
    """How a trial reaches the worker that runs it."""

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a message and wait for its answer."""
        ...

    def send(self, message: dict[str, Any]) -> None:
        """Send a message that has no answer (a report)."""
        ...

    def verdict(self) -> dict[str, Any]:
        """The worker's latest word on whether the trial goes on: {"action", "reason"}."""
        ...


class _Channel:
    """Newline-delimited JSON with the worker that started the program. Reports go without
    waiting; the worker pushes its verdict when it changes, which a listening thread keeps,
    so a report costs one write, not a round trip."""

    def __init__(self, address: str, secret: str) -> None:
        host, port = address.rsplit(":", 1)
        self._socket = socket.create_connection((host, int(port)), timeout=60)
        self._socket.settimeout(None)
        # Small messages, sent at once rather than held back (Nagle).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self._socket.makefile("rb")
        self._writer = self._socket.makefile("wb")
        self._secret = secret
        self._sending = threading.Lock()
        self._asking = threading.Lock()
        self._asked = 0  # calls made; each answer names the call it answers
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._latest: dict[str, Any] = {"action": CONTINUE, "reason": ""}
        threading.Thread(target=self._listen, name="sweep-channel", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps({**message, "secret": self._secret}).encode() + b"\n"
        with self._sending:
            try:
                self._writer.write(line)
                self._writer.flush()
            except OSError as exc:
                raise Stopped("the worker that ran this trial is gone") from exc

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._asking:
            self._asked += 1
            self.send({**message, "id": self._asked})
            while (answer := self._answers.get()) is not None and answer.get("id") != self._asked:
                pass  # an answer to a call that gave up waiting for it
        if answer is None:
            raise Stopped("the worker that ran this trial is gone")
        if "refused" in answer:
            raise RuntimeError(f"sweep: the worker refused the call: {answer['refused']}")
        return answer

    def verdict(self) -> dict[str, Any]:
        return self._latest

    def _listen(self) -> None:
        try:
            for line in iter(lambda: self._reader.readline(_MAX_MESSAGE), b""):
                message = json.loads(line)
                if message.get("push") == "verdict":
                    self._latest = message
                else:
                    self._answers.put(message)
        except (OSError, ValueError):
            pass
        self._latest = {"action": STOP, "reason": "the worker that ran this trial is gone"}
        self._answers.put(None)


@contextlib.contextmanager
def _as_file(obj_or_path: Any, scratch: Path) -> Any:
    """A path holding what is to be kept, and its kind ("file" or "object"); an object is
    saved to a scratch file, removed once the worker has read it."""
    if isinstance(obj_or_path, str | os.PathLike) and Path(obj_or_path).is_file():
        yield Path(obj_or_path).resolve(), "file"
        return
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".sweep-", suffix=".pt", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as out:
            _save(obj_or_path, out)
        yield Path(name), "object"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _save(obj: Any, out: Any) -> None:
    """torch.save in a program that uses torch (tensors, state dicts), else pickle: a program
    without torch does not pay for importing it."""
    if "torch" not in sys.modules:
        pickle.dump(obj, out)
        return
    import torch

    torch.save(obj, out)


def _load(path: Path) -> Any:
    with path.open("rb") as f:
        if f.read(2) != b"PK":  # torch.save writes a zip file; anything else was pickled
            f.seek(0)
            return pickle.load(f)  # written by this trial's own earlier attempt
    import torch

    return torch.load(path, weights_only=False, map_location="cpu")


def _distributed() -> Any:
    """torch.distributed when this is one rank of an initialized job of several, else None."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return "outofmemoryerror" in text or "out of memory" in text


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]
