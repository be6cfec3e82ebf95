"""The worker loop against the real app: bad trials fail alone, the network may break."""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from sweep.models import bundle, catalog
from sweep.models.datasets import load_dataset
from sweep.retry import RetryPolicy
from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.worker import train
from sweep.worker.client import ServiceClient, TrialGone
from sweep.worker.loop import Worker, WorkerOptions
from sweep.worker.outbox import Outbox
from sweep.worker.train import Pruned, Snapshot, TrialConfig, to_device, train_trial
from tests.helpers import (
    authorize,
    budget,
    quick_spec,
    scrape,
    submit,
    trials_of,
    value,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models train faster on one

API = "/api/v1"


def test_diverged_and_crashing_trials_fail_without_killing_the_worker(client: TestClient) -> None:
    diverging = submit(
        client,
        quick_spec(
            name="diverges",
            budget=budget(2, 1),
            fixed={
                "epochs": 3,
                "lr": 5.0,
                "optimizer": "sgd",
                "activation": "leaky_relu",
                "hidden_layers": 3,
                "hidden_units": 128,
            },
        ),
    )
    # scikit-learn refuses to split 20 samples into 10 stratified classes: a worker-side error.
    crashing = submit(
        client,
        quick_spec(
            name="crashes",
            budget=budget(1, 1),
            fixed={"epochs": 2},
            dataset={
                "name": "synthetic",
                "options": {"n_samples": 20, "n_classes": 10, "n_informative": 5},
            },
        ),
    )
    healthy = submit(client, quick_spec(name="fine", budget=budget(1, 1), fixed={"epochs": 2}))

    worker = Worker(
        ServiceClient("", http=client),
        WorkerOptions(name="w", device=torch.device("cpu"), wait_seconds=0.2, exit_when_idle=0.5),
    )
    assert worker.run() == 4

    assert [(t["state"], t["failure_reason"]) for t in trials_of(client, diverging)] == [
        ("failed", "diverged"),
        ("failed", "diverged"),
    ]
    [crashed] = trials_of(client, crashing)
    assert (crashed["state"], crashed["failure_reason"]) == ("failed", "error")
    assert "ValueError" in crashed["failure_message"]
    [fine] = trials_of(client, healthy)
    assert fine["state"] == "completed" and fine["has_weights"]
    # Without a completed trial an experiment is no success, whatever the kind of failure
    # (diverging is none of the setup's errors in a row), and its reason counts them.
    ended = {e: client.get(f"{API}/experiments/{e}").json() for e in (diverging, crashing)}
    assert (ended[diverging]["state"], ended[diverging]["stop_reason"]) == (
        "failed",
        "all 2 trials failed: 2 diverged",
    )
    assert ended[crashing]["stop_reason"] == "its only trial failed: error"
    assert client.get(f"{API}/experiments/{healthy}").json()["state"] == "completed"


def test_an_idle_worker_long_polls_no_longer_than_it_may_stay_idle(client: TestClient) -> None:
    # The default long poll is 30 s; with nothing to run, --exit-when-idle 0.5 ends it first.
    options = WorkerOptions(name="w", device=torch.device("cpu"), exit_when_idle=0.5)
    assert options.wait_seconds == 30
    started = time.monotonic()
    assert Worker(ServiceClient("", http=client), options).run() == 0
    assert time.monotonic() - started < 15  # well short of one 30 s poll, even when loaded


def test_cancelled_experiment_stops_the_running_trial(client: TestClient) -> None:
    experiment_id = submit(client, quick_spec(budget=budget(3, 1), fixed={"epochs": 50}))
    service = ServiceClient("", http=client)
    worker = Worker(service, WorkerOptions(name="w", device=torch.device("cpu")))
    worker_id = service.register("w", "host", "cpu", 1)
    assignment = service.claim(worker_id, 0)
    assert assignment is not None
    client.post(f"{API}/experiments/{experiment_id}/cancel")
    worker.run_trial(assignment)
    [trial] = trials_of(client, experiment_id)
    assert (trial["state"], trial["last_epoch"]) == ("cancelled", 1)


def test_retry_policy_backs_off_with_a_cap_and_gives_up() -> None:
    policy = RetryPolicy(initial=1, multiplier=2, maximum=5, jitter=0, give_up_after=20)
    assert list(policy.delays()) == [1, 2, 4, 5, 5, 3]
    jittered = list(RetryPolicy(jitter=0.5, give_up_after=60).delays(random.Random(3)))
    assert all(0 < d <= 15 * 1.5 for d in jittered) and sum(jittered) == pytest.approx(60)


def test_client_rides_out_a_broken_network_and_keeps_order() -> None:
    attempts: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        if len(attempts) in (1, 2):
            raise httpx.ConnectError("connection refused", request=request)
        if len(attempts) == 3:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json={"action": "continue"})

    http = httpx.Client(transport=httpx.MockTransport(flaky), base_url="http://sweep")
    client = ServiceClient(
        "", http=http, retry=RetryPolicy(initial=0.01, jitter=0, give_up_after=5)
    )
    assert client.report(7, "token", 1, {"val_accuracy": 0.5}) == {"action": "continue"}
    assert attempts == ["/api/v1/trials/7/reports"] * 4


def test_client_gives_up_when_told_and_stops_on_conflict() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down", request=request)

    http = httpx.Client(transport=httpx.MockTransport(down), base_url="http://sweep")
    client = ServiceClient("", http=http, retry=RetryPolicy(initial=0.01, give_up_after=0.05))
    with pytest.raises(ConnectionError, match="gave up"):
        client.claim(1, 0)

    def gone(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": {"message": "trial 3 is pruned"}})

    http = httpx.Client(transport=httpx.MockTransport(gone), base_url="http://sweep")
    with pytest.raises(TrialGone):
        ServiceClient("", http=http).report(3, "token", 2, {"val_accuracy": 0.1})


def test_a_trial_whose_experiment_was_deleted_does_not_stop_the_worker(
    client: TestClient,
) -> None:
    crashing = {
        "name": "synthetic",
        "options": {"n_samples": 20, "n_classes": 10, "n_informative": 5},
    }
    for dataset in ("digits", crashing):
        experiment_id = submit(
            client, quick_spec(budget=budget(1, 1), fixed={"epochs": 2}, dataset=dataset)
        )
        service = ServiceClient("", http=client)
        worker = Worker(service, WorkerOptions(name="w", device=torch.device("cpu")))
        assignment = service.claim(service.register("w", "host", "cpu", 1), 0)
        assert assignment is not None
        client.delete(f"{API}/experiments/{experiment_id}")
        worker.run_trial(assignment)  # reports (or the failure) now get 404: no exception
        assert client.get(f"{API}/trials/{assignment['trial_id']}").status_code == 404


def test_reports_do_not_wait_for_answers_and_only_the_newest_waiting_checkpoint_goes() -> None:
    first_answer = threading.Event()
    sent: list[str] = []

    def slow_at_first(request: httpx.Request) -> httpx.Response:
        if not sent:
            first_answer.wait(10)
        sent.append(request.url.path.rsplit("/", 1)[1] + str(request.url.params.get("epoch", "")))
        if request.url.path.endswith("/reports"):
            epoch = json.loads(request.content)["epoch"]
            return httpx.Response(200, json={"action": "prune" if epoch == 4 else "continue"})
        if request.url.path.endswith("/uploads"):  # a store without direct uploads
            return httpx.Response(200, json={"url": None})
        return httpx.Response(200)

    http = httpx.Client(transport=httpx.MockTransport(slow_at_first), base_url="http://sweep")
    with Outbox(ServiceClient("", http=http), 7, "token") as outbox:
        started = time.monotonic()
        for epoch in (1, 2, 3):
            outbox.report(epoch, {"val_accuracy": 0.5})
            outbox.checkpoint(epoch, Snapshot({"epoch": epoch}))
        assert time.monotonic() - started < 1 and sent == []  # nothing answered yet
        first_answer.set()
        outbox.drain()
        # Checkpoints 1 and 2 were still waiting when a newer one came: the service keeps
        # only the newest, so they are not sent.
        assert sent == ["reports", "reports", "reports", "uploads", "checkpoint3"]
        outbox.report(4, {"val_accuracy": 0.1})
        outbox.checkpoint(4, Snapshot({"epoch": 4}))
        outbox.drain()
    assert outbox.verdict == ("prune", "prune")
    assert sent[5:] == ["reports"]  # nothing after the answer that ended the trial


def test_a_checkpoint_waits_while_the_last_one_is_sent_and_until_it_fits_its_share() -> None:
    sending = threading.Event()
    release = threading.Event()

    def slow_upload(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/uploads"):  # a store without direct uploads
            return httpx.Response(200, json={"url": None})
        sending.set()
        release.wait(10)
        time.sleep(0.2)  # the network's latency, simulated: sending takes at least this long
        return httpx.Response(204)

    http = httpx.Client(transport=httpx.MockTransport(slow_upload), base_url="http://sweep")
    with Outbox(ServiceClient("", http=http), 7, "token") as outbox:
        assert outbox.checkpoint_affordable(0.01)  # nothing sent yet: the first one goes
        queued = time.monotonic()
        outbox.checkpoint(1, Snapshot({"epoch": 1}))
        assert sending.wait(10)
        assert not outbox.checkpoint_affordable(1.0)  # still on its way
        release.set()
        outbox.drain()
        # It took at least 0.2 s: with a share of 0.01, the next one waits 20 s after it.
        assert not outbox.checkpoint_affordable(0.01)
        wait_until(lambda: outbox.checkpoint_affordable(0.5), 30, "a share of 0.5", poll=0.01)
        assert time.monotonic() - queued >= 0.2 / 0.5


def test_checkpoints_of_short_epochs_are_kept_to_their_share_of_the_time(
    client: TestClient,
) -> None:
    fixed = {"epochs": 30}
    spec = quick_spec(budget=budget(1, 1), fixed=fixed, pruner={"name": "none"})
    experiment_id = submit(client, spec)
    options = WorkerOptions(
        name="w", device=torch.device("cpu"), wait_seconds=0.2, exit_when_idle=0.5
    )
    assert Worker(ServiceClient("", http=client), options).run() == 1
    [trial] = trials_of(client, experiment_id)
    assert (trial["state"], trial["last_epoch"]) == ("completed", 30)
    sent = value(
        scrape(client.get("/metrics").text),
        "sweep_http_request_duration_seconds_count",
        method="PUT",
        route=f"{API}/trials/{{trial_id}}/checkpoint",
        status="204",
    )
    # 29 checkpoints were due (checkpoint_every 1, none after the last epoch), and each was
    # sent while epochs were longer than sending one. Epochs of some 15 ms are not 20 times
    # longer than that: within the default share of 5% one every several epochs is kept.
    assert 1 <= sent <= 10


def test_an_answer_that_ends_the_trial_stops_training_at_the_next_batch() -> None:
    data = to_device(load_dataset("digits"), torch.device("cpu"))  # 1437 samples: 23 batches
    hparams = catalog.resolve_hyperparameters("mlp", {"batch_size": 64, "epochs": 5})
    config = TrialConfig("mlp", {}, hparams, "val_accuracy", "maximize", "best", 0)
    batches, reported = [], []

    def check() -> None:
        batches.append(1)
        if len(batches) == 30:  # the answer to epoch 1's report came during epoch 2
            raise Pruned("pruned")

    with pytest.raises(Pruned):
        train_trial(config, data, torch.device("cpu"), lambda e, m: reported.append(e), check=check)
    assert reported == [1] and len(batches) == 30


def test_a_trial_pruned_at_its_last_epoch_is_not_completed(client: TestClient) -> None:
    pruner = {"name": "threshold", "options": {"lower": 2.0}}  # val_accuracy is always lower
    experiment_id = submit(
        client, quick_spec(budget=budget(1, 1), fixed={"epochs": 1}, pruner=pruner)
    )
    paths: list[str] = []
    client.event_hooks["request"].append(lambda request: paths.append(request.url.path))
    options = WorkerOptions(
        name="w", device=torch.device("cpu"), wait_seconds=0.2, exit_when_idle=0.5
    )
    assert Worker(ServiceClient("", http=client), options).run() == 1
    [trial] = trials_of(client, experiment_id)
    assert (trial["state"], trial["last_epoch"], trial["has_weights"]) == ("pruned", 1, False)
    assert not [p for p in paths if p.endswith(("/weights", "/complete"))]


def test_a_model_that_cannot_be_kept_is_not_sent(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_models: 1, trials one at a time: a trial's model is packed and sent only when its
    value beats every finished trial's, and the best trial has it."""
    packed: list[bytes] = []

    def pack(*args: Any) -> bytes:
        packed.append(bundle.pack(*args))
        return packed[-1]

    monkeypatch.setattr(train, "bundle", SimpleNamespace(pack=pack))
    spec = quick_spec(
        budget=budget(6, 1),
        fixed={"epochs": 1},
        pruner={"name": "none"},
        artifacts={"keep_models": 1},
    )
    experiment_id = submit(client, spec)
    sent: list[int] = []
    client.event_hooks["request"].append(
        lambda request: (
            sent.append(int(request.url.path.split("/")[-2]))
            if request.method == "PUT" and request.url.path.endswith("/weights")
            else None
        )
    )
    options = WorkerOptions(
        name="w", device=torch.device("cpu"), wait_seconds=0.2, exit_when_idle=0.5
    )
    assert Worker(ServiceClient("", http=client), options).run() == 6
    trials = sorted(trials_of(client, experiment_id), key=lambda t: t["number"])
    records = [
        t["id"] for i, t in enumerate(trials) if all(t["value"] > s["value"] for s in trials[:i])
    ]
    assert sent == records and len(sent) < len(trials) and len(packed) == len(sent)
    best = max(trials, key=lambda t: (t["value"], -t["id"]))
    assert [t["id"] for t in trials if t["has_weights"]] == [best["id"]]
    assert client.get(f"{API}/trials/{best['id']}/model").status_code == 200


def test_a_worker_trains_its_next_trial_while_the_last_one_sends_its_model(
    settings: Settings,
) -> None:
    """Where suggestions are asked ahead (here from the first trial on), max_concurrent 1:
    the network holds the first trial's model back until a second trial runs beside it,
    which only a trial whose training ended allows; both complete, each with its model."""
    ahead = settings.model_copy(update={"ask_ahead_after": 0})
    spec = quick_spec(budget=budget(2, 1), fixed={"epochs": 1}, pruner={"name": "none"})
    held: list[str] = []
    with TestClient(create_app(ahead)) as test_client:
        client = authorize(test_client)
        experiment_id = submit(client, spec)

        def running() -> bool:
            experiment = client.get(f"{API}/experiments/{experiment_id}").json()
            return bool(experiment["counts"]["running"] == 2)

        def slow_first_model(request: httpx.Request) -> None:
            if request.method == "PUT" and request.url.path.endswith("/weights") and not held:
                held.append(request.url.path)
                wait_until(running, timeout=30, what="the next trial to start", poll=0.05)

        client.event_hooks["request"].append(slow_first_model)
        options = WorkerOptions(
            name="w", device=torch.device("cpu"), wait_seconds=0.2, exit_when_idle=0.5
        )
        assert Worker(ServiceClient("", http=client), options).run() == 2
        trials = trials_of(client, experiment_id)
    assert [(t["state"], t["has_weights"]) for t in trials] == [("completed", True)] * 2


def test_a_trial_claimed_before_the_last_ones_end_is_given_back_when_told_to_stop(
    settings: Settings,
) -> None:
    """The stop comes with the answer to the claim made as the first trial's training ended:
    the worker tells the first trial's end, gives the second back unstarted, and exits."""
    ahead = settings.model_copy(update={"ask_ahead_after": 0})
    spec = quick_spec(budget=budget(3, 1), fixed={"epochs": 1}, pruner={"name": "none"})
    with TestClient(create_app(ahead)) as test_client:
        client = authorize(test_client)
        experiment_id = submit(client, spec)
        options = WorkerOptions(name="w", device=torch.device("cpu"), wait_seconds=0.2)
        worker = Worker(ServiceClient("", http=client), options)

        def stop_with_early_answer(response: httpx.Response) -> None:
            request = response.request
            if request.url.path.endswith("/claim") and b"finishing" in request.content:
                worker.stop.set()

        client.event_hooks["response"].append(stop_with_early_answer)
        assert worker.run() == 1
        trials = sorted(trials_of(client, experiment_id), key=lambda t: t["number"])
    assert [(t["state"], t["attempt"]) for t in trials] == [("completed", 1), ("queued", 1)]


@pytest.fixture
def signal_cut_requests() -> Iterator[None]:
    """For a test whose signal handler raises inside a request to the in-process app. The
    exception can land in the test client between its making a memory stream and its
    registering the stream's close (a real client over a socket has no such stream), and
    the stream, held in a reference cycle, would warn when some later test collects it.
    It is collected here, its warning ignored."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.usefixtures("signal_cut_requests")
def test_a_stop_that_cuts_a_claim_short_gives_its_trial_back(client: TestClient) -> None:
    experiment_id = submit(client, quick_spec(budget=budget(1, 1), fixed={"epochs": 1}))

    def stop_once_a_trial_is_handed_out(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/claim") and response.status_code == 200:
            os.kill(os.getpid(), signal.SIGTERM)  # the answer is lost to the worker

    client.event_hooks["response"].append(stop_once_a_trial_is_handed_out)
    options = WorkerOptions(name="w", device=torch.device("cpu"), wait_seconds=5)
    worker = Worker(ServiceClient("", http=client), options)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.install_signal_handlers()
        assert worker.run() == 0
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    [trial] = trials_of(client, experiment_id)
    # Asked again at once, the claim brought the trial back, and the worker gave it back.
    assert (trial["state"], trial["failure_reason"], trial["retries"]) == ("queued", "preempted", 0)


@pytest.mark.usefixtures("signal_cut_requests")
def test_a_stop_signal_cuts_an_idle_long_poll_short(client: TestClient) -> None:
    options = WorkerOptions(name="w", device=torch.device("cpu"), wait_seconds=20)
    worker = Worker(ServiceClient("", http=client), options)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    polling = threading.Event()
    client.event_hooks["request"].append(
        lambda request: request.url.path.endswith("/claim") and polling.set()
    )
    stopper = threading.Thread(
        target=lambda: polling.wait(30) and os.kill(os.getpid(), signal.SIGTERM)
    )
    try:
        worker.install_signal_handlers()
        stopper.start()
        started = time.monotonic()
        assert worker.run() == 0
        waited = time.monotonic() - started
    finally:
        stopper.join()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert waited < 10  # not the 20 seconds the server would have held the claim
