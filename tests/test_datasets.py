"""Users' own datasets: uploaded as CSV or NPZ, checked before anything is stored, named by
specs, fetched once by workers and cached by content hash."""

from __future__ import annotations

import csv
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sklearn.model_selection import train_test_split

from sweep.client import SweepClient
from sweep.service import artifacts
from tests.helpers import authorize, budget, run_worker, scrape, small, submit, value, wine_csv

API = "/api/v1"
SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}
CONTENT_ROUTE = f"{API}/datasets/content/{{sha256}}"


def put(client: TestClient, name: str, data: bytes, **params: Any) -> Any:
    return client.put(f"{API}/datasets/{name}", params=params, content=data)


def test_a_csv_becomes_a_dataset_specs_name_and_workers_cache(
    client: TestClient, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    uploaded = put(client, "wine-csv", wine_csv(), format="csv", target="cultivar")
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert dataset["task"] == "classification"  # inferred from the labels
    assert dataset["classes"] == ["cultivar_a", "cultivar_b", "cultivar_c"]
    assert (dataset["n_samples"], dataset["n_features"]) == (178, 13)
    again = put(client, "wine-csv", wine_csv(), format="csv", target="cultivar")
    assert again.json()["id"] == dataset["id"]  # the same data again: nothing new

    spec = small(SPACE, dataset={"name": "wine-csv", "split_seed": 3}, budget=budget(2))
    experiment_id = submit(client, spec)
    stored = client.get(f"{API}/experiments/{experiment_id}").json()["spec"]["dataset"]
    assert stored["sha256"] == dataset["sha256"] and stored["standardize"] is True

    assert (
        run_worker(client, max_trials=1, cache_dir=tmp_path) == 1
    )  # the first worker downloads...
    assert (
        run_worker(client, max_trials=1, cache_dir=tmp_path) == 1
    )  # ...the second reads its host's cache
    assert (tmp_path / "datasets" / f"{dataset['sha256']}.npz").exists()
    downloads = value(
        scrape(client.get("/metrics").text),
        "sweep_http_request_duration_seconds_count",
        method="GET",
        route=CONTENT_ROUTE,
        status="200",
    )
    assert downloads == 1
    trials = client.get(f"{API}/experiments/{experiment_id}/trials").json()["items"]
    assert all(t["state"] == "completed" and t["value"] > 0.5 for t in trials)

    # The trial's model takes the CSV's raw rows and answers its class names, scoring on the
    # trial's validation rows what the trial reported.
    X, labels = raw_rows(wine_csv(), "cultivar")
    classes = sorted(set(labels))
    index = np.asarray([classes.index(label) for label in labels])
    _, X_val, _, y_val = train_test_split(X, labels, test_size=0.2, random_state=3, stratify=index)
    model = SweepClient(http=client).load_model(trials[0]["id"])
    assert not model.training and model.classes == classes
    assert (model.predict(X_val) == y_val).mean() == pytest.approx(trials[0]["value"])

    taken = put(
        client,
        "wine-csv",
        wine_csv().replace(b"cultivar_c", b"cultivar_b"),
        format="csv",
        target="cultivar",
    )
    assert taken.status_code == 409


def test_an_npz_regression_dataset_trains(client: TestClient, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * rng.normal(size=200)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=X, y=y)
    dataset = put(client, "linear", buffer.getvalue(), format="npz").json()
    assert dataset["task"] == "regression" and dataset["classes"] is None
    spec = small(
        SPACE,
        dataset="linear",
        objective={"metric": "val_r2", "direction": "maximize"},
        fixed={"epochs": 5, "hidden_layers": 1},
        budget=budget(1),
    )
    experiment_id = submit(client, spec)
    assert run_worker(client, max_trials=1, cache_dir=tmp_path) == 1
    [trial] = client.get(f"{API}/experiments/{experiment_id}/trials").json()["items"]
    assert trial["state"] == "completed" and trial["value"] > 0.5
    # Predictions come in the target's units: R^2 on the raw validation rows is the trial's.
    _, X_val, _, y_val = train_test_split(X, y, test_size=0.2, random_state=0)
    predicted = SweepClient(http=client).load_model(trial["id"]).predict(X_val)
    r2 = 1 - ((predicted - y_val) ** 2).sum() / ((y_val - y_val.mean()) ** 2).sum()
    assert r2 == pytest.approx(trial["value"], rel=1e-4)


def raw_rows(data: bytes, target: str) -> tuple[np.ndarray, list[str]]:
    """A CSV's feature rows as numbers and its target column, as a user reads them."""
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    features = [name for name in rows[0] if name != target]
    X = np.asarray([[float(row[name]) for name in features] for row in rows])
    return X, [row[target] for row in rows]


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_members(**members: bytes) -> bytes:
    """An NPZ-shaped zip holding these bytes as NAME.npy, whatever they are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def zip_flagged(data: bytes, flags: int = 0, method: int | None = None) -> bytes:
    """A zip with general-purpose `flags` set (1: encrypted) or its members' compression
    method replaced, in the local and the central headers."""
    out = bytearray(data)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = out.find(signature)
        while at != -1:
            out[at + flag_at] |= flags
            if method is not None:
                out[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            at = out.find(signature, at + 4)
    return bytes(out)


BAD_UPLOADS = [
    ("no target", b"a,b\n1,2\n", {"format": "csv"}, "target", "needs target"),
    ("unknown target", b"a,b\n1,2\n", {"target": "c"}, "target", "no column 'c'"),
    ("words as features", b"a,y\n1,0\nParis,1\n", {"target": "y"}, "body", "'a', line 3"),
    ("a missing value", b"a,y\n1,0\n,1\n", {"target": "y"}, "body", "'a', line 3"),
    ("not finite", b"a,y\n1,0\ninf,1\n", {"target": "y"}, "body", "not finite"),
    ("ragged rows", b"a,b,y\n1,2,0\n1,1\n", {"target": "y"}, "body", "line 3 has 2 values"),
    ("not text", b"\xff\xfe\x00a", {"target": "y"}, "body", "not UTF-8"),
    ("too few rows", b"a,y\n1,0\n2,1\n", {"target": "y"}, "body", "2 samples"),
    (
        "a class with one sample",
        b"a,y\n" + b"".join(b"%d,%d\n" % (i, i % 2) for i in range(12)) + b"5,7\n",
        {"target": "y"},
        "body",
        "2 samples or more",
    ),
    (
        "binary with three classes",
        b"a,y\n" + b"".join(b"%d,%d\n" % (i, i % 3) for i in range(12)),
        {"target": "y", "task": "binary"},
        "task",
        "2 classes",
    ),
    ("not an npz", b"hello", {"format": "npz"}, "body", "not an NPZ"),
    ("npz without y", npz(X=np.zeros((20, 2))), {"format": "npz"}, "body", "missing"),
    (
        "npz of objects",
        npz(X=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20)),
        {"format": "npz"},
        "body",
        "numeric",
    ),
    (
        "npz with NaN",
        npz(X=np.full((20, 2), np.nan), y=np.arange(20) % 2),
        {"format": "npz"},
        "body",
        "finite",
    ),
    (
        "a cell over the csv field limit",
        b"a,y\n" + b"1" * 200_000 + b",0\n",
        {"target": "y"},
        "body",
        "field limit",
    ),
    (
        "a quoted 1 MB cell",
        b'a,y\n"' + b"x" * 1_000_000 + b'",0\n',
        {"target": "y"},
        "body",
        "field limit",
    ),
    (
        "an encrypted npz",
        zip_flagged(npz(X=np.zeros((20, 2)), y=np.arange(20) % 2), flags=1),
        {"format": "npz"},
        "body",
        "encrypted",
    ),
    (
        "an npz compressed as zipfile cannot read",
        zip_flagged(npz(X=np.zeros((20, 2)), y=np.arange(20) % 2), method=99),
        {"format": "npz"},
        "body",
        "compression",
    ),
    (
        "an npz whose y.npy is a pickle",
        npz_members(X=npy(np.zeros((20, 2))), y=pickle.dumps(list(range(20)))),
        {"format": "npz"},
        "body",
        "y.npy is not a numpy",
    ),
    (
        "an npz without features",
        npz(X=np.zeros((20, 0)), y=np.arange(20) % 2),
        {"format": "npz"},
        "body",
        "no features",
    ),
]


def test_bad_uploads_are_refused_with_the_reason_and_store_nothing(client: TestClient) -> None:
    for case, data, params, field, says in BAD_UPLOADS:
        refused = put(client, "bad", data, **params)
        assert refused.status_code == 422, (case, refused.text)
        error = refused.json()["error"]
        assert error["field"] == field and says in error["message"], (case, error)
    assert client.get(f"{API}/datasets").json() == []
    # Names a URL path cannot keep ("." and ".." are gone before the server sees them).
    for name in ("...", ".hidden", ".", ".."):
        refused = client.put(f"{API}/datasets/{name}", params={"target": "y"}, content=b"a,y\n")
        assert refused.status_code in (404, 405, 422), (name, refused.text)
    assert client.get(f"{API}/datasets").json() == []


def test_datasets_belong_to_a_project(client: TestClient) -> None:
    bundled = put(client, "digits", wine_csv(), target="cultivar")
    assert bundled.status_code == 409  # a bundled dataset's name
    authorize(client, role="user", project="a")
    sha = put(client, "wine-csv", wine_csv(), target="cultivar").json()["sha256"]
    assert client.get(f"{API}/datasets/content/{sha}").status_code == 200
    authorize(client, role="user", project="b")
    assert client.get(f"{API}/datasets").json() == []
    assert client.get(f"{API}/datasets/content/{sha}").status_code == 404
    refused = client.post(f"{API}/experiments", json=small(SPACE, dataset="wine-csv"))
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "dataset.name"
    assert "PUT /api/v1/datasets/wine-csv" in refused.json()["error"]["message"]


def test_the_client_uploads_by_suffix(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "wine.csv"
    path.write_bytes(wine_csv())
    sweep = SweepClient(http=client)
    assert sweep.upload_dataset(path, "my-wine", target="cultivar")["n_samples"] == 178
    assert [d["name"] for d in sweep.datasets()] == ["my-wine"]
    with pytest.raises(ValueError, match=r"\.csv or \.npz"):
        sweep.upload_dataset(tmp_path / "wine.parquet", "x")


def test_a_dataset_in_use_stays_and_its_arrays_go_with_the_last_holder(client: TestClient) -> None:
    put(client, "wine-csv", wine_csv(), target="cultivar")
    sha = put(client, "same-wine", wine_csv(), target="cultivar").json()["sha256"]
    experiment = submit(client, small(SPACE, dataset="wine-csv"))
    in_use = client.delete(f"{API}/datasets/wine-csv")
    assert in_use.status_code == 409 and str(experiment) in in_use.json()["error"]["message"]
    client.post(f"{API}/experiments/{experiment}/cancel")
    assert client.delete(f"{API}/datasets/wine-csv").status_code == 204
    assert client.get(f"{API}/datasets/wine-csv").status_code == 404
    assert client.get(f"{API}/datasets/content/{sha}").status_code == 200  # same-wine has it
    assert client.delete(f"{API}/datasets/same-wine").status_code == 204
    assert client.get(f"{API}/datasets/content/{sha}").status_code == 404
    app = client.app
    with app.state.db.transaction() as session:  # type: ignore[attr-defined]
        assert artifacts.usage(session) == (0, 0)
        # the shared arrays, and the copy the second upload made before it found them
        assert artifacts.purge(session, app.state.store) == 2  # type: ignore[attr-defined]
    assert list(app.state.store.listing()) == []  # type: ignore[attr-defined]


def test_a_compressed_npz_is_measured_before_it_is_unpacked(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweep.service import datasets

    monkeypatch.setattr(datasets, "MAX_UNPACKED_BYTES", 1_000_000)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=np.zeros((100_000, 4)), y=np.zeros(100_000))  # 4 MB of zeros
    assert len(buffer.getvalue()) < 100_000
    refused = put(client, "bomb", buffer.getvalue(), format="npz")
    assert (
        refused.status_code == 422 and "unpack to more than" in refused.json()["error"]["message"]
    )
