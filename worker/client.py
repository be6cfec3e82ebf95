"""The worker's side of the HTTP protocol. The worker reaches the service only through this."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

import httpx

from sweep import logs
from sweep.retry import RetryPolicy, retry_after

API = "/api/v1"
# A fault of the service or its database, not of the request: waited out (a 500 too, which
# a bug the worker cannot fix also answers; retrying it costs a request per backoff step).
RETRYABLE_STATUS = {500, 502, 503, 504}
NO_DIRECT_SECONDS = 600.0
OUTPUT_LIMIT = 64 * 1024  # characters of a program's output kept with its trial
log = logging.getLogger("sweep.worker")


class ServiceError(Exception):
    def __init__(self, status: int, body: str) -> None:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:500]
        super().__init__(f"service answered {status}: {message}")
        self.status = status
        self.message = message


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
        # Transfers straight to the artifact store (pre-signed URLs): none of our headers.
        self.direct = httpx.Client(timeout=httpx.Timeout(30.0, read=300))
        # A store without pre-signed URLs (a directory) is not asked again for a while.
        self._no_direct_until = 0.0

    def close(self) -> None:
        self.http.close()
        self.direct.close()

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
        self,
        worker_id: int,
        wait_seconds: float,
        experiment_id: int | None = None,
        finishing: list[int] | None = None,
    ) -> dict[str, Any] | None:
        """The next trial (of `experiment_id` only, when given), or None. `finishing`: this
        worker's trials whose training ended, whose models and results it is still sending."""
        body: dict[str, Any] = {"wait_seconds": wait_seconds}
        if experiment_id is not None:
            body["experiment_id"] = experiment_id
        if finishing:
            body["finishing"] = finishing
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
        self._upload(trial_id, token, "checkpoint", data, "application/octet-stream", epoch)

    def download_dataset(self, sha256: str) -> bytes:
        """An uploaded dataset's arrays (NPZ with X and y), by content hash."""
        return self._download(f"/datasets/content/{sha256}")

    def download_checkpoint(self, trial_id: int, token: str) -> bytes:
        return self._download(f"/trials/{trial_id}/checkpoint", token)

    def upload_outputs(self, trial_id: int, token: str, data: bytes) -> None:
        self._upload(trial_id, token, "outputs", data, "application/gzip")

    def upload_weights(self, trial_id: int, token: str, data: bytes) -> None:
        self._upload(trial_id, token, "weights", data, "application/octet-stream")

    def _upload(
        self,
        trial_id: int,
        token: str,
        kind: str,
        data: bytes,
        media_type: str,
        epoch: int | None = None,
    ) -> None:
        """An artifact with its sha256, which the service checks before it keeps anything:
        straight into the store where it offers a URL, else (or should that fail) through
        the API."""
        sha256 = hashlib.sha256(data).hexdigest()
        about = {"kind": kind, "sha256": sha256, "size": len(data), "epoch": epoch}
        if time.monotonic() >= self._no_direct_until:
            path = f"/trials/{trial_id}/uploads"
            offer = self._call("POST", path, token=token, json=about).json()
            if not offer.get("url"):
                self._no_direct_until = time.monotonic() + NO_DIRECT_SECONDS
            elif self._put_direct(offer, data):
                commit = {**about, "key": offer["key"]}
                self._call("POST", f"{path}/commit", token=token, json=commit)
                return
        headers = {"content-type": media_type, "X-Content-SHA256": sha256}
        params = {"epoch": epoch} if epoch is not None else None
        path = f"/trials/{trial_id}/{kind}"
        self._call("PUT", path, token=token, content=data, headers=headers, params=params)

    def _put_direct(self, offer: dict[str, Any], data: bytes) -> bool:
        try:
            response = self.direct.put(offer["url"], content=data, headers=offer["headers"])
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code < 300:
                return True
            problem = f"HTTP {response.status_code}"
        log.warning("uploading to the artifact store failed (%s); through the API", problem)
        return False

    def _download(self, path: str, token: str | None = None) -> bytes:
        """An artifact, checked against its sha256: straight from the store where the service
        redirects to it, else (or should that fail) through the API."""
        response = self._call(
            "GET", path, token=token, params={"direct": "true"}, follow_redirects=False
        )
        if response.status_code == 307:
            try:
                direct = self.direct.get(response.headers["Location"])
                if direct.status_code == 200:
                    return _checked(direct, response.headers.get("X-Content-SHA256"))
                problem = f"HTTP {direct.status_code}"
            except (httpx.TransportError, ServiceError) as exc:
                problem = str(exc)
            log.warning("downloading from the artifact store failed (%s); through the API", problem)
            response = self._call("GET", path, token=token)
        return _checked(response, response.headers.get("X-Content-SHA256"))

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
            asked = 0.0  # what the service asked to wait (Retry-After)
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
                asked = retry_after(response.headers)
            url = f"{self.http.base_url}{API}{path}"
            delay = next(delays, None)
            if delay is None:
                raise ConnectionError(f"{method} {url}: gave up retrying ({problem})")
            delay = max(delay, asked)
            log.warning("%s %s failed (%s); retrying in %.1fs", method, url, problem, delay)
            if self.stop.wait(delay):
                raise ConnectionError(f"{method} {url}: not retried, shutting down ({problem})")


def _checked(response: httpx.Response, expected: str | None) -> bytes:
    """A downloaded artifact, refused unless it hashes as the service says it should."""
    data = response.content
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
