"""The trials table over HTTP on both backends: filters on parameters, sorts by parameter and
metric, each trial's last metrics, and curves of any metric to overlay."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.helpers import attempt_headers, budget, claim, small, submit

API = "/api/v1"
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "batch_size": {"type": "categorical", "choices": [16, 64]},
    "hidden_layers": {"type": "int", "low": 1, "high": 3},
}
# (lr, optimizer, batch_size, hidden_layers, val_loss per epoch)
TRIALS = [
    (0.1, "sgd", 16, 1, [0.9, 0.5, 0.4]),
    (0.001, "adam", 64, 2, [0.8, 0.3]),
    (0.01, "adam", 16, 3, [0.7, 0.6, 0.55]),
    (0.5, "sgd", 64, 2, [2.0]),
]


def run(client: TestClient) -> int:
    experiment_id = submit(client, small(SPACE, fixed={"epochs": 2}, budget=budget(len(TRIALS))))
    for lr, optimizer, batch_size, layers, _ in TRIALS:
        params = {
            "lr": lr,
            "optimizer": optimizer,
            "batch_size": batch_size,
            "hidden_layers": layers,
        }
        queued = client.post(f"{API}/experiments/{experiment_id}/trials", json={"params": params})
        assert queued.status_code == 201, queued.text
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    for *_, losses in TRIALS:
        trial = claim(client, worker)
        assert trial is not None
        tid = trial["trial_id"]
        for epoch, loss in enumerate(losses, start=1):
            reported = client.post(
                f"{API}/trials/{tid}/reports",
                headers=attempt_headers(tid),
                json={"epoch": epoch, "metrics": {"val_accuracy": 1 - loss, "val_loss": loss}},
            )
            assert reported.status_code == 200, reported.text
        done = client.post(
            f"{API}/trials/{tid}/complete", headers=attempt_headers(tid), json={"value": 1 - loss}
        )
        assert done.status_code == 200, done.text
    return experiment_id


def page(client: TestClient, experiment_id: int, **query: Any) -> dict[str, Any]:
    answer = client.get(f"{API}/experiments/{experiment_id}/trials", params=query)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def lrs(found: dict[str, Any]) -> list[float]:
    return [t["params"]["lr"] for t in found["items"]]


def test_trials_filter_and_sort_by_parameters_and_metrics(client: TestClient) -> None:
    experiment_id = run(client)

    everything = page(client, experiment_id)
    assert everything["total"] == 4
    first = everything["items"][0]
    assert first["last_metrics"] == {"val_accuracy": 1 - 0.4, "val_loss": 0.4}

    assert lrs(page(client, experiment_id, where=["lr>=0.01"])) == [0.1, 0.01, 0.5]
    ranged = page(client, experiment_id, where=["lr>=0.005", "lr<=0.2"])
    assert lrs(ranged) == [0.1, 0.01] and ranged["total"] == 2
    assert lrs(page(client, experiment_id, where=["optimizer=adam"])) == [0.001, 0.01]
    assert lrs(page(client, experiment_id, where=["batch_size=64", "optimizer=sgd"])) == [0.5]
    assert lrs(page(client, experiment_id, where=["lr=0.01"])) == [0.01]
    assert lrs(page(client, experiment_id, where=["hidden_layers=2"])) == [0.001, 0.5]
    assert lrs(page(client, experiment_id, where=["hidden_layers>=3"])) == [0.01]

    assert lrs(page(client, experiment_id, sort="param:lr")) == [0.001, 0.01, 0.1, 0.5]
    assert lrs(page(client, experiment_id, sort="param:lr", order="desc")) == [
        0.5,
        0.1,
        0.01,
        0.001,
    ]
    by_loss = page(client, experiment_id, sort="metric:val_loss", limit=2, offset=1)
    assert lrs(by_loss) == [0.1, 0.01] and by_loss["total"] == 4  # last val_loss 0.3, 0.4, 0.55...
    assert lrs(page(client, experiment_id, sort="objective", limit=1)) == [0.001]

    for query, field in (
        ({"where": ["lr>>1"]}, "where"),
        ({"where": ["depth>=3"]}, "where"),
        ({"where": ["lr>=fast"]}, "where"),
        ({"where": ["lr<=inf"]}, "where"),
        ({"where": ["optimizer>=adam"]}, "where"),
        ({"where": ["optimizer=lion"]}, "where"),
        ({"sort": "param:depth"}, "sort"),
        ({"sort": "loudest"}, "sort"),
    ):
        refused = client.get(f"{API}/experiments/{experiment_id}/trials", params=query)
        assert refused.status_code == 422, (query, refused.text)
        assert refused.json()["error"]["field"] == field, query


def test_curves_of_any_metric_for_the_trials_named(client: TestClient) -> None:
    experiment_id = run(client)
    url = f"{API}/experiments/{experiment_id}/curves"

    answer = client.get(url, params={"metric": "val_loss", "trial": [2, 0]})
    assert answer.status_code == 200, answer.text
    curves = answer.json()["curves"]
    assert [c["name"] for c in curves] == [f"{experiment_id}/2", f"{experiment_id}/0"]
    assert curves[0]["epochs"] == [1, 2, 3] and curves[0]["values"] == [0.7, 0.6, 0.55]
    assert curves[1]["state"] == "completed"

    thinned = client.get(url, params={"metric": "val_loss", "trial": [0], "max_points": 2}).json()
    assert thinned["curves"][0]["epochs"] == [1, 3]  # the first and the last
    unknown = client.get(url, params={"metric": "val_loss", "trial": [9]})
    assert unknown.status_code == 404 and "number 9" in unknown.json()["error"]["message"]
    assert client.get(url, params={"metric": "val_loss"}).status_code == 422
