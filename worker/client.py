"""The worker's side of the HTTP protocol. The worker reaches the service only through this."""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

import httpx

from sweep import logs
from sweep.worker.retry import RetryPolicy

API = "/api/v1"
RETRYABLE_STATUS = {502, 503, 504}
OUTPUT_LIMIT = 64 * 1024  # characters of a program's output kept with its trial
log = logging.getLogger("sweep.worker")


class ServiceError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"service answered {status}: {body}")
        self.status = status


class TrialGone(ServiceError):
    """The trial is no longer running (finished elsewhere, deleted): stop it, report nothing."""


class ServiceClient:
    """Calls the service, retrying through restarts and network failures.

    Every call is safe to repeat (the service records a repeated report or finish once), so a
    call whose answer was lost is simply sent again.
    """

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.Client | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        # The read timeout outlasts the longest claim the server holds open (30 s by default).
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(10.0, read=90), headers=headers
        )
        self.retry = retry or RetryPolicy()
        # Once set (the worker is shutting down), waiting to retry is cut short.
        self.stop = stop or threading.Event()

    def close(self) -> None:
        self.http.close()

    def register(
        self,
        name: str,
        hostname: str,
        device: str,
        pid: int,
        memory_gb: float | None = None,
        plugins: tuple[list[str], list[str]] = ([], []),
        programs: list[str] | None = None,
        gpus: int = 0,
    ) -> int:
        """Register; `plugins` are the plugin models and datasets installed here, `programs`
        the names of the programs it runs."""
        body = {
            "name": name,
            "hostname": hostname,
            "device": device,
            "pid": pid,
            "device_memory_gb": memory_gb,
            "models": plugins[0],
            "datasets": plugins[1],
            "programs": programs or [],
            "gpus": gpus,
        }
        worker: dict[str, Any] = self._call("POST", "/workers", json=body).json()
        return int(worker["id"])

    def claim(
        self, worker_id: int, wait_seconds: float, experiment_id: int | None = None
    ) -> dict[str, Any] | None:
        """The next trial (of `experiment_id` only, when given), or None."""
        body: dict[str, Any] = {"wait_seconds": wait_seconds}
        if experiment_id is not None:
            body["experiment_id"] = experiment_id
        response = self._call("POST", f"/workers/{worker_id}/claim", json=body)
        return None if response.status_code == 204 else dict(response.json())

    def report(
        self, trial_id: int, token: str, epoch: int, metrics: dict[str, float]
    ) -> dict[str, Any]:
        body = {"epoch": epoch, "metrics": metrics}
        path = f"/trials/{trial_id}/reports"
        return dict(self._call("POST", path, token=token, json=body).json())

    def heartbeat(self, trial_id: int, token: str) -> dict[str, Any]:
        """One try, no retries: the next heartbeat is the retry."""
        path = f"/trials/{trial_id}/heartbeat"
        return dict(self._call("POST", path, token=token, retry=False).json())

    def release(
        self, trial_id: int, token: str, reason: str = "preempted", message: str = ""
    ) -> None:
        body = {"reason": reason, "message": message}
        self._call("POST", f"/trials/{trial_id}/release", token=token, json=body)

    def upload_checkpoint(self, trial_id: int, token: str, epoch: int, data: bytes) -> None:
        path = f"/trials/{trial_id}/checkpoint"
        self._upload(path, token, data, "application/octet-stream", params={"epoch": epoch})

    def download_dataset(self, sha256: str) -> bytes:
        """An uploaded dataset's arrays (NPZ with X and y), by content hash."""
        return _checked(self._call("GET", f"/datasets/content/{sha256}"))

    def download_checkpoint(self, trial_id: int, token: str) -> bytes:
        return _checked(self._call("GET", f"/trials/{trial_id}/checkpoint", token=token))

    def upload_outputs(self, trial_id: int, token: str, data: bytes) -> None:
        self._upload(f"/trials/{trial_id}/outputs", token, data, "application/gzip")

    def upload_weights(self, trial_id: int, token: str, data: bytes) -> None:
        self._upload(f"/trials/{trial_id}/weights", token, data, "application/octet-stream")

    def _upload(self, path: str, token: str, data: bytes, media_type: str, **kwargs: Any) -> None:
        """An artifact with its sha256, which the service checks before it keeps anything."""
        headers = {"content-type": media_type, "X-Content-SHA256": hashlib.sha256(data).hexdigest()}
        self._call("PUT", path, token=token, content=data, headers=headers, **kwargs)

    def complete(
        self, trial_id: int, token: str, value: float, epoch: int, output: str | None = None
    ) -> None:
        body = {"value": value, "epoch": epoch, "output": _tail(output, OUTPUT_LIMIT)}
        self._call("POST", f"/trials/{trial_id}/complete", token=token, json=body)

    def fail(
        self, trial_id: int, token: str, reason: str, message: str, output: str | None = None
    ) -> None:
        # The tail of a long traceback matters most.
        body = {
            "reason": reason,
            "message": _tail(message, 20_000),
            "output": _tail(output, OUTPUT_LIMIT),
        }
        self._call("POST", f"/trials/{trial_id}/fail", token=token, json=body)

    def _call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        if token is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), "X-Attempt-Token": token}
        if (request_id := logs.request_id.get()) is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), "X-Request-ID": request_id}
        delays = self.retry.delays() if retry else iter(())
        while True:
            try:
                response = self.http.request(method, API + path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRYABLE_STATUS:
                    raise _error(response)
                problem = f"HTTP {response.status_code}"
            delay = next(delays, None)
            if delay is None:
                raise ConnectionError(f"{method} {path}: gave up retrying ({problem})")
            log.warning("%s %s failed (%s); retrying in %.1fs", method, path, problem, delay)
            if self.stop.wait(delay):
                raise ConnectionError(f"{method} {path}: not retried, shutting down ({problem})")


def _checked(response: httpx.Response) -> bytes:
    """A downloaded artifact, refused unless it hashes as the service says it should."""
    data = response.content
    expected = response.headers.get("X-Content-SHA256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ServiceError(
            response.status_code,
            f"{response.request.url.path}: the download does not match its sha256 {expected}",
        )
    return data


def _tail(text: str | None, limit: int) -> str | None:
    """The end of `text`, as the service stores it (no NUL characters)."""
    return None if text is None else text.replace("\x00", "?")[-limit:]


def _error(response: httpx.Response) -> ServiceError:
    if response.status_code in (404, 409) and "/trials/" in response.request.url.path:
        return TrialGone(response.status_code, response.text)
    return ServiceError(response.status_code, response.text)
