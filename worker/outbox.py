"""Delivers an attempt's reports and checkpoints in order, from a background thread.

Training never waits on the network: a report is queued and the next epoch starts at once.
The first answer that ends the trial (prune, stop) is kept in `verdict`, which the trainer
checks before every batch, so pruning stays prompt without a round trip per epoch. While the
service is away the outbox keeps retrying; when it comes back, everything is delivered in the
order it was produced, so the trial's curve has neither gaps nor duplicates (the service
records a repeated report once). A checkpoint still queued when a newer one arrives is not
serialized or sent: the service keeps only the newest. The outbox times what sending a
checkpoint takes, so the trainer can keep checkpoints to a share of its time
(`checkpoint_affordable`).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from sweep.worker.client import ServiceClient, TrialGone


class Snapshot(Protocol):
    """A checkpoint, serialized only when its turn comes."""

    def to_bytes(self) -> bytes: ...


log = logging.getLogger("sweep.worker")


class Outbox:
    def __init__(self, client: ServiceClient, trial_id: int, token: str) -> None:
        self.client, self.trial_id, self.token = client, trial_id, token
        # The first answer that ends the trial: ("prune" | "stop", reason).
        self.verdict: tuple[str, str] | None = None
        self._newest_checkpoint = 0  # epoch of the last checkpoint queued
        self._finished_checkpoint = 0  # epoch of the last checkpoint sent or passed over
        self._checkpoint_queued_at = 0.0  # monotonic clock
        # Seconds that serializing and sending the last few took; their median is what the
        # next is expected to take (one sent through an outage, retried, does not count much).
        self._checkpoint_seconds: deque[float] = deque(maxlen=5)
        self._items: queue.Queue[tuple[Callable[[], Any], threading.Event] | None] = queue.Queue()
        # In the trial's context: its calls carry the trial's request id.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._deliver,),
            name=f"outbox-{trial_id}",
            daemon=True,
        )

    def __enter__(self) -> Outbox:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drain()
        self._items.put(None)
        self._thread.join()

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queue an epoch's report; its answer lands in `verdict` if it ends the trial."""
        self._send(lambda: self._report(epoch, metrics))

    def checkpoint(self, epoch: int, snapshot: Snapshot) -> None:
        """Queue a checkpoint; it is serialized and delivered after the reports queued before
        it, unless a newer one is queued before its turn comes."""
        self._newest_checkpoint = epoch
        self._checkpoint_queued_at = time.monotonic()
        self._send(lambda: self._checkpoint(epoch, snapshot))

    def checkpoint_affordable(self, share: float) -> bool:
        """Whether a checkpoint now keeps checkpoints within `share` of the trial's time: not
        while the last one is still on its way, nor sooner after it than what sending one takes
        divided by `share`."""
        if self._finished_checkpoint != self._newest_checkpoint:
            return False
        if not self._checkpoint_seconds:
            return True
        since = time.monotonic() - self._checkpoint_queued_at
        return since * share >= statistics.median(self._checkpoint_seconds)

    def drain(self) -> None:
        """Wait until everything queued was delivered (or the trial ended on the service)."""
        self._send(lambda: None).wait()

    def _send(self, call: Callable[[], Any]) -> threading.Event:
        done = threading.Event()
        self._items.put((call, done))
        return done

    def _report(self, epoch: int, metrics: dict[str, float]) -> None:
        answer = self.client.report(self.trial_id, self.token, epoch, metrics)
        if answer["action"] != "continue":
            self.verdict = (answer["action"], answer.get("reason") or answer["action"])

    def _checkpoint(self, epoch: int, snapshot: Snapshot) -> None:
        try:
            if epoch == self._newest_checkpoint:  # else the service would replace it soon anyway
                started = time.monotonic()
                data = snapshot.to_bytes()
                self.client.upload_checkpoint(self.trial_id, self.token, epoch, data)
                self._checkpoint_seconds.append(time.monotonic() - started)
        finally:
            self._finished_checkpoint = epoch

    def _deliver(self) -> None:
        while (item := self._items.get()) is not None:
            call, done = item
            try:
                if self.verdict is None:  # once the trial has ended, nothing more is sent
                    call()
            except TrialGone as exc:
                self.verdict = ("stop", f"the attempt is no longer ours: {exc}")
            except Exception as exc:
                # Later items would leave a gap in the trial's history, so the trial stops here;
                # the service hands it out again from its last delivered checkpoint.
                log.error("trial %d: could not deliver to the service: %s", self.trial_id, exc)
                self.verdict = ("stop", f"could not deliver to the service: {exc}")
            finally:
                done.set()
