"""Delivers an attempt's reports and checkpoints in order, from a background thread.

Training never waits on the network: a report is queued and the next epoch starts at once.
The first answer that ends the trial (prune, stop) is kept in `verdict`, which the trainer
checks before every batch, so pruning stays prompt without a round trip per epoch. While the
service is away the outbox keeps retrying; when it comes back, everything is delivered in the
order it was produced, so the trial's curve has neither gaps nor duplicates (the service
records a repeated report once). A checkpoint still queued when a newer one arrives is not
serialized or sent: the service keeps only the newest.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
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
        self._send(lambda: self._checkpoint(epoch, snapshot))

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
        if epoch == self._newest_checkpoint:  # else the service would replace it soon anyway
            self.client.upload_checkpoint(self.trial_id, self.token, epoch, snapshot.to_bytes())

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
