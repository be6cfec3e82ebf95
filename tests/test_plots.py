"""The plots behind the dashboard, over HTTP on both backends."""

from __future__ import annotations

from fastapi.testclient import TestClient

from sweep.service.search.plots import PLOTS
from tests.helpers import (
    attempt_headers,
    budget,
    finish_quickly,
    make_spec,
    remember,
    small,
    submit,
)

API = "/api/v1"


def test_plots_say_why_they_wait_then_draw_what_the_trials_show(client: TestClient) -> None:
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }
    experiment_id = submit(client, small(space, budget=budget(3)))

    waiting = client.get(f"{API}/experiments/{experiment_id}/plots").json()
    assert set(waiting) == set(PLOTS)
    assert "no trial has started" in waiting["timeline"]
    refused = client.get(f"{API}/experiments/{experiment_id}/plots/history")
    assert refused.status_code == 409
    assert "needs 1 completed trial" in refused.json()["error"]["message"]
    unknown = client.get(f"{API}/experiments/{experiment_id}/plots/bogus")
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "kind"

    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    values = [finish_quickly(client, worker, value=v) for v in (0.3, 0.9, 0.6)]
    assert all(values)
    assert client.get(f"{API}/experiments/{experiment_id}/plots").json() == {
        "pareto": "a Pareto front needs several objectives; this experiment has one"
    }
    figures = {
        kind: client.get(f"{API}/experiments/{experiment_id}/plots/{kind}").json()
        for kind in PLOTS
        if kind != "pareto"
    }
    history = figures["history"]["data"]
    assert history[0]["y"] == [0.3, 0.9, 0.6]  # each trial's value, in order
    assert history[1]["y"] == [0.3, 0.9, 0.9]  # the best so far
    assert len(figures["intermediate"]["data"]) == 3  # one curve per trial
    assert {t["name"] for t in figures["timeline"]["data"]} == {"completed"}
    assert len(figures["timeline"]["data"][0]["x"]) == 3
    importance = figures["importance"]["data"][0]
    assert sorted(importance["y"]) == ["dropout", "lr"]
    assert figures["contour"]["data"] and figures["slice"]["data"]
    assert sum("customdata" in t for t in figures["parallel"]["data"]) == 3  # a line per trial


def test_a_pareto_front_for_several_objectives(client: TestClient) -> None:
    spec = make_spec(
        objectives=[
            {"metric": "val_accuracy", "direction": "maximize"},
            {"metric": "val_loss", "direction": "minimize"},
        ],
        budget=budget(2),
    )
    del spec["objective"], spec["pruner"]
    experiment_id = submit(client, spec)
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    for accuracy, loss in ((0.9, 0.4), (0.8, 0.2)):  # neither beats the other
        trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())
        assert trial is not None
        tid, headers = trial["trial_id"], attempt_headers(trial["trial_id"])
        metrics = {"val_accuracy": accuracy, "val_loss": loss}
        report = {"epoch": 1, "metrics": metrics}
        client.post(f"{API}/trials/{tid}/reports", headers=headers, json=report)
        done = client.post(
            f"{API}/trials/{tid}/complete", headers=headers, json={"value": accuracy}
        )
        assert done.status_code == 200, done.text
    assert "pareto" not in client.get(f"{API}/experiments/{experiment_id}/plots").json()
    front = client.get(f"{API}/experiments/{experiment_id}/plots/pareto")
    assert front.status_code == 200
    points = sorted(zip(front.json()["data"][1]["x"], front.json()["data"][1]["y"], strict=True))
    assert points == [(0.8, 0.2), (0.9, 0.4)]  # both on the front
