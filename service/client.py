"""A small Python client for the user-facing API; the CLI is built on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8642"


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        try:
            error = response.json()["error"]
            message = error["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        super().__init__(f"HTTP {response.status_code}: {message}")
        self.status = response.status_code


class SweepClient:
    def __init__(
        self, server: str = DEFAULT_SERVER, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=server.rstrip("/") + "/api/v1", timeout=timeout, headers=headers
        )

    def __enter__(self) -> SweepClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response)
        return response

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/healthz").json())

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/experiments", json=spec).json())

    def experiments(self, state: str | None = None, limit: int = 50) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit} | ({"state": state} if state else {})
        return dict(self._request("GET", "/experiments", params=params).json())

    def experiment(self, experiment_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/experiments/{experiment_id}").json())

    def trials(self, experiment_id: int, **params: Any) -> dict[str, Any]:
        query = {k: v for k, v in params.items() if v is not None}
        return dict(
            self._request("GET", f"/experiments/{experiment_id}/trials", params=query).json()
        )

    def best(self, experiment_id: int, k: int = 1) -> dict[str, Any]:
        return dict(
            self._request("GET", f"/experiments/{experiment_id}/best", params={"k": k}).json()
        )

    def enqueue(self, experiment_id: int, params: dict[str, Any]) -> dict[str, Any]:
        """Queue a trial with these params (all searched ones, or some)."""
        path = f"/experiments/{experiment_id}/trials"
        return dict(self._request("POST", path, json={"params": params}).json())

    def change_budget(self, experiment_id: int, **budget: int) -> dict[str, Any]:
        """n_trials and/or max_concurrent, effective at the next claim."""
        body = {"budget": budget}
        return dict(self._request("PATCH", f"/experiments/{experiment_id}", json=body).json())

    def importance(self, experiment_id: int, evaluator: str = "fanova") -> dict[str, Any]:
        path = f"/experiments/{experiment_id}/importance"
        return dict(self._request("GET", path, params={"evaluator": evaluator}).json())

    def trial(self, trial_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/trials/{trial_id}").json())

    def workers(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._request("GET", "/workers", params={"limit": limit}).json())

    def control(self, experiment_id: int, action: str) -> dict[str, Any]:
        """pause, resume or cancel."""
        return dict(self._request("POST", f"/experiments/{experiment_id}/{action}").json())

    def delete(self, experiment_id: int) -> None:
        self._request("DELETE", f"/experiments/{experiment_id}")

    def download_model(self, trial_id: int, path: Path) -> Path:
        path.write_bytes(self._request("GET", f"/trials/{trial_id}/model").content)
        return path
