"""Keeps a claimed attempt's lease alive from a background thread while the trial trains."""

from __future__ import annotations

import contextvars
import logging
import threading
from types import TracebackType

from sweep.worker.client import ServiceClient, ServiceError, TrialGone

log = logging.getLogger("sweep.worker")


class Heartbeat:
    """`with Heartbeat(...) as beat:` beats every `interval` seconds until the block ends.

    `beat.stop_reason` is set when the service says the trial should stop, or when the
    attempt was taken over (its lease ran out): the trainer checks it after each epoch.
    """

    def __init__(self, client: ServiceClient, trial_id: int, token: str, interval: float) -> None:
        self.client, self.trial_id, self.token, self.interval = client, trial_id, token, interval
        self.stop_reason: str | None = None
        self._done = threading.Event()
        # In the trial's context: its calls carry the trial's request id.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._run,),
            name=f"heartbeat-{trial_id}",
            daemon=True,
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                answer = self.client.heartbeat(self.trial_id, self.token)
            except TrialGone as exc:
                self.stop_reason = f"the attempt is no longer ours: {exc}"
                return
            except (ServiceError, ConnectionError) as exc:
                log.warning("heartbeat for trial %d failed: %s", self.trial_id, exc)
                continue
            if answer["action"] == "stop":
                self.stop_reason = answer.get("reason") or "stopped by the service"
                return
