"""A whole sweep driven through `sweep_api`, a client that openapi-python-client generated from
Sweep's own /openapi.json: nobody here wrote it, so it knows the service only by its document.

    python drive.py SERVER_URL ADMIN_TOKEN WORKER_TOKEN

The client raises on any status the document does not list; each answer must parse into the
model the document promises. Type-checked with mypy against the generated package first."""

from __future__ import annotations

import hashlib
import io
import sys
from typing import Any, TypeVar

from sweep_api import AuthenticatedClient
from sweep_api.api.datasets import get_dataset, upload_dataset
from sweep_api.api.experiments import (
    best_trials,
    cancel_experiment,
    create_experiment,
    get_experiment,
    list_trials,
    pause_experiment,
    resume_experiment,
)
from sweep_api.api.trials import complete_trial, get_model, get_trial, report_epoch, upload_weights
from sweep_api.api.worker_protocol import claim_trial, register_worker
from sweep_api.models import (
    Assignment,
    BestTrials,
    ClaimRequest,
    CompleteIn,
    DatasetRead,
    ErrorResponse,
    ExperimentCreate,
    ExperimentRead,
    ReportIn,
    ReportInMetrics,
    ReportOut,
    TrialDetail,
    TrialPage,
    TrialRead,
    WorkerRead,
    WorkerRegister,
)
from sweep_api.types import File, Response

T = TypeVar("T")

SPEC: dict[str, Any] = {
    "name": "generated-client",
    "model": "mlp",
    "dataset": "digits",
    "objective": {"metric": "val_accuracy", "direction": "maximize"},
    "search_space": {
        "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    },
    "fixed": {"epochs": 2},
    "budget": {"n_trials": 2, "max_concurrent": 1},
}
CSV = b"a,b,y\n" + b"".join(b"%d,%d,%d\n" % (i, i * i % 7, i % 2) for i in range(20))


def answer(response: Response[T | ErrorResponse | Any], status: int, model: type[T]) -> T:
    """The parsed answer, which must have `status` and be a `model`."""
    parsed = response.parsed
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert isinstance(parsed, model), (type(parsed), response.content[:500])
    return parsed


def main(url: str, admin_token: str, worker_token: str) -> None:
    user = AuthenticatedClient(base_url=url, token=admin_token, raise_on_unexpected_status=True)
    worker = AuthenticatedClient(base_url=url, token=worker_token, raise_on_unexpected_status=True)

    body = ExperimentCreate.from_dict(SPEC)
    created = answer(create_experiment.sync_detailed(client=user, body=body), 201, ExperimentRead)
    again = create_experiment.sync_detailed(client=user, body=body, idempotency_key="drive-1")
    twin = answer(again, 201, ExperimentRead)
    replayed = create_experiment.sync_detailed(client=user, body=body, idempotency_key="drive-1")
    assert answer(replayed, 200, ExperimentRead).id == twin.id

    me = answer(
        register_worker.sync_detailed(client=worker, body=WorkerRegister(name="gen")),
        201,
        WorkerRead,
    )
    for number in range(2):
        claimed = claim_trial.sync_detailed(me.id, client=worker, body=ClaimRequest(wait_seconds=5))
        trial = answer(claimed, 200, Assignment)
        assert trial.experiment_id == created.id and trial.number == number
        for epoch in (1, 2):
            accuracy = 0.4 + 0.1 * epoch + 0.01 * number
            metrics = ReportInMetrics.from_dict({"val_accuracy": accuracy})
            report = ReportIn(epoch=epoch, metrics=metrics)
            reported = report_epoch.sync_detailed(
                trial.trial_id, client=worker, body=report, x_attempt_token=trial.token
            )
            assert answer(reported, 200, ReportOut).action.value in ("continue", "prune")
        weights = f"weights of trial {number}".encode()
        uploaded = upload_weights.sync_detailed(
            trial.trial_id,
            client=worker,
            body=File(payload=io.BytesIO(weights)),
            x_attempt_token=trial.token,
            x_content_sha256=hashlib.sha256(weights).hexdigest(),
        )
        assert uploaded.status_code == 204, uploaded.content
        done = complete_trial.sync_detailed(
            trial.trial_id,
            client=worker,
            body=CompleteIn(value=0.6 + 0.01 * number, epoch=2),
            x_attempt_token=trial.token,
        )
        assert answer(done, 200, TrialRead).state == "completed"

    # The refused: an empty upload, a stale attempt, a missing trial: documented, and parsed.
    refused = upload_weights.sync_detailed(
        trial.trial_id,
        client=worker,
        body=File(payload=io.BytesIO(b"")),
        x_attempt_token=trial.token,
        x_content_sha256=hashlib.sha256(b"").hexdigest(),
    )
    assert refused.status_code in (409, 422) and isinstance(refused.parsed, ErrorResponse)
    missing = get_trial.sync_detailed(10**9, client=user)
    assert missing.status_code == 404 and isinstance(missing.parsed, ErrorResponse)

    ended = answer(get_experiment.sync_detailed(created.id, client=user), 200, ExperimentRead)
    assert ended.state == "completed", ended.state
    best = answer(best_trials.sync_detailed(created.id, client=user), 200, BestTrials)
    top = best.trials[0]
    assert top.number == 1 and top.value == 0.61
    page = answer(list_trials.sync_detailed(created.id, client=user), 200, TrialPage)
    assert page.total == 2
    detail = answer(get_trial.sync_detailed(top.id, client=user), 200, TrialDetail)
    assert [m.epoch for m in detail.metrics] == [1, 2]
    model = get_model.sync_detailed(top.id, client=user)
    assert model.status_code == 200 and isinstance(model.parsed, File)
    assert model.parsed.payload.read() == b"weights of trial 1"

    uploaded_data = upload_dataset.sync_detailed(
        "generated", client=user, body=File(payload=io.BytesIO(CSV)), target="y"
    )
    dataset = answer(uploaded_data, 201, DatasetRead)
    assert dataset.n_samples == 20 and dataset.n_features == 2
    described = answer(get_dataset.sync_detailed("generated", client=user), 200, DatasetRead)
    assert described.sha256 == dataset.sha256

    paused = answer(pause_experiment.sync_detailed(twin.id, client=user), 200, ExperimentRead)
    assert paused.state == "paused"
    conflict = pause_experiment.sync_detailed(twin.id, client=user)
    assert conflict.status_code == 409 and isinstance(conflict.parsed, ErrorResponse)
    resumed = answer(resume_experiment.sync_detailed(twin.id, client=user), 200, ExperimentRead)
    assert resumed.state == "running"
    cancelled = answer(cancel_experiment.sync_detailed(twin.id, client=user), 200, ExperimentRead)
    assert cancelled.state == "cancelled"
    print("the generated client drove the sweep")


if __name__ == "__main__":
    main(*sys.argv[1:4])
