"""Limits and hostile input: too big, too often, or trying to run code."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from sweep.models import catalog
from sweep.models.datasets import load_dataset
from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.worker.train import TrialConfig, to_device, train_trial
from tests.helpers import authorize, budget, checksum, make_spec

API = "/api/v1"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(update={"max_submissions_per_minute": 3})
    with TestClient(create_app(limited)) as test_client:
        yield authorize(test_client)


def count(client: TestClient) -> int:
    return int(client.get(f"{API}/experiments").json()["total"])


def test_a_50_mb_body_is_refused_before_it_is_read(client: TestClient) -> None:
    body = b'{"name": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    response = client.post(
        f"{API}/experiments", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert count(client) == 0


def test_a_streamed_body_past_the_limit_is_refused(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known as it comes
        yield b'{"epoch": 1, "metrics": {"val_accuracy": 0.5, "pad": "'
        for _ in range(64):
            yield b"x" * 8192
        yield b'"}}'

    response = client.post(
        f"{API}/trials/1/reports",
        content=chunks(),
        headers={"content-type": "application/json", "X-Attempt-Token": "t"},
    )
    assert response.status_code == 413


def test_submissions_per_token_are_rate_limited(client: TestClient) -> None:
    for _ in range(3):
        assert client.post(f"{API}/experiments", json=make_spec()).status_code == 201
    refused = client.post(f"{API}/experiments", json=make_spec())
    assert refused.status_code == 429
    assert "submissions a minute" in refused.json()["error"]["message"]
    assert count(client) == 3


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": "os:system"}, "model"),
        ({"dataset": "../../etc/passwd"}, "dataset.name"),
        ({"sampler": {"name": "pickle.loads"}}, "sampler.name"),
        ({"fixed": {"epochs": 3, "__import__": "os"}}, "fixed.__import__"),
    ],
)
def test_a_spec_cannot_name_code(client: TestClient, overrides: dict, field: str) -> None:
    response = client.post(f"{API}/experiments", json=make_spec(**overrides))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert count(client) == 0


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_is_never_unpickled(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": Exploit(marker)}, protocol=2)
    client.post(f"{API}/experiments", json=make_spec(budget=budget(1, 1)))
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    trial = client.post(f"{API}/workers/{worker}/claim", json={}).json()
    headers = {"X-Attempt-Token": trial["token"], **checksum(payload)}
    stored = client.put(
        f"{API}/trials/{trial['trial_id']}/weights", content=payload, headers=headers
    )
    assert stored.status_code == 204  # kept as opaque bytes by the service...
    config = TrialConfig(
        "mlp",
        {"name": "iris"},
        catalog.resolve_hyperparameters("mlp", {}),
        "val_accuracy",
        "maximize",
        "best",
        0,
    )
    data = to_device(load_dataset("iris"), torch.device("cpu"))
    with pytest.raises(pickle.UnpicklingError):  # ...and a worker resuming from it refuses
        train_trial(config, data, torch.device("cpu"), lambda e, m: None, resume=payload)
    assert not marker.exists()
