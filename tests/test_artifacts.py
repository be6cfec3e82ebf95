"""The artifact store: weights, checkpoints, outputs and datasets kept outside SQL (a
directory, or an S3-compatible server started here), streamed, checked by sha256, fenced,
pruned by retention, and moved out of SQL from a database of the previous schema."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from sweep.client import SweepClient
from sweep.service import artifacts, legacy_blobs
from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.service.db import MIGRATIONS, Database
from sweep.service.store import FileStore, Incoming, Store, open_store
from sweep.service.tables import (
    LEGACY_BLOBS,
    LEGACY_CHECKPOINTS,
    LEGACY_OUTPUTS,
    LEGACY_WEIGHTS,
    Artifact,
    Experiment,
    Trial,
    utcnow,
)
from tests.helpers import (
    authorize,
    budget,
    call,
    checksum,
    claim_trial,
    make_spec,
    register,
    submit,
    wait_until,
    wine_csv,
)
from tests.processes import ServerProcess

API = "/api/v1"


# --- the stores -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on 127.0.0.1 (moto's), for this module's tests."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "sweep-tests")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "sweep-tests")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["file", "s3"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Settings naming an empty store of each kind."""
    if request.param == "file":
        return {"artifacts": (tmp_path / "store").as_uri()}
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"sweep-{uuid.uuid4().hex[:12]}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return {"artifacts": f"s3://{bucket}/runs", "s3_endpoint_url": endpoint}


@pytest.fixture
def store(store_settings: dict[str, str], tmp_path: Path) -> Store:
    return Settings(data_dir=tmp_path, **store_settings).open_store()


def put(store: Store, key: str, data: bytes) -> None:
    incoming = Incoming(store.staging())
    incoming.write(data)
    incoming.finish()
    store.put_file(key, incoming.path)


def test_each_store_keeps_reads_lists_and_deletes_objects(store: Store) -> None:
    put(store, "experiments/1/trials/2/weights-a1-00.pt", b"w" * 3_000_000)
    put(store, "datasets/wine-01.npz", b"arrays")
    assert store.size("experiments/1/trials/2/weights-a1-00.pt") == 3_000_000
    with store.open("datasets/wine-01.npz") as stream:
        assert stream.read() == b"arrays"
    listed = {item.key: item.size for item in store.listing()}
    assert listed == {
        "experiments/1/trials/2/weights-a1-00.pt": 3_000_000,
        "datasets/wine-01.npz": 6,
    }
    store.delete("datasets/wine-01.npz")
    store.delete("datasets/never-there.npz")  # not an error
    assert not store.exists("datasets/wine-01.npz") and store.size("datasets/wine-01.npz") is None
    with pytest.raises(FileNotFoundError):
        store.open("datasets/wine-01.npz")
    assert not list(store.staging().glob("incoming-*"))  # nothing left behind on the way


def test_a_store_url_names_its_kind_and_a_key_cannot_leave_a_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert isinstance(open_store((tmp_path / "a").as_uri(), spool=spool), FileStore)
    for bad in ("ftp://host/x", "s3:///no-bucket", "/plain/path"):
        with pytest.raises(ValueError, match="SWEEP_ARTIFACTS"):
            open_store(bad, spool=spool)
    with pytest.raises(ValueError, match="leaves the store"):
        FileStore(tmp_path / "a").open("../../etc/passwd")


# --- through the API ------------------------------------------------------------------------


@pytest.fixture
def client(db_url: str, tmp_path: Path, store_settings: dict[str, str]) -> Iterator[TestClient]:
    """The app on each database with each store (purging by hand: `purged`)."""
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path,
        claim_poll_seconds=0.05,
        artifact_purge_seconds=3600,
        **store_settings,
    )
    with TestClient(create_app(settings)) as test_client:
        yield authorize(test_client)


def app_store(client: TestClient) -> Store:
    return client.app.state.store  # type: ignore[attr-defined,no-any-return]


def purged(client: TestClient) -> dict[str, int]:
    """Removes deleted artifacts' objects, as the background pass does; what the store holds."""
    with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
        while artifacts.purge(session, app_store(client)) == artifacts.PURGE_BATCH:
            pass
    return {item.key: item.size for item in app_store(client).listing()}


def upload(client: TestClient, trial: dict[str, Any], kind: str, data: bytes, **params: Any) -> Any:
    headers = {"X-Attempt-Token": trial["token"], **checksum(data)}
    url = f"{API}/trials/{trial['trial_id']}/{kind}"
    return client.put(url, content=data, headers=headers, params=params)


def test_artifacts_stream_checked_and_fenced_and_go_with_their_experiment(
    client: TestClient,
) -> None:
    experiment = submit(client, make_spec(budget=budget(1, 1)))
    first = claim_trial(client, register(client, "w1"))
    tid = first["trial_id"]
    call(client, first, "reports", epoch=1, metrics={"val_accuracy": 0.5})

    good = os.urandom(300_000)
    lying = {"X-Attempt-Token": first["token"], **checksum(b"something else")}
    refused = client.put(f"{API}/trials/{tid}/checkpoint?epoch=1", content=good, headers=lying)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "X-Content-SHA256"
    empty = upload(client, first, "weights", b"")
    assert empty.status_code == 422 and "empty" in empty.json()["error"]["message"]
    assert purged(client) == {}  # nothing was kept of either

    assert upload(client, first, "checkpoint", good, epoch=1).status_code == 204
    call(client, first, "release")  # attempt 2 resumes from it; attempt 1 is stale now
    second = claim_trial(client, register(client, "w2"))
    assert (second["attempt"], second["resume_epoch"]) == (2, 1)
    stale = upload(client, first, "checkpoint", b"stale state", epoch=1)
    assert stale.status_code == 409
    resumed = client.get(
        f"{API}/trials/{tid}/checkpoint", headers={"X-Attempt-Token": second["token"]}
    )
    assert resumed.content == good and resumed.headers["X-Checkpoint-Epoch"] == "1"
    assert resumed.headers["X-Content-SHA256"] == hashlib.sha256(good).hexdigest()

    weights = os.urandom(200_000)
    assert upload(client, second, "weights", weights).status_code == 204
    assert upload(client, second, "weights", weights[::-1]).status_code == 204  # replaced
    assert call(client, second, "complete", value=0.9, epoch=1).status_code == 200
    model = client.get(f"{API}/trials/{tid}/model")
    assert model.content == weights[::-1]
    assert model.headers["X-Content-SHA256"] == hashlib.sha256(weights[::-1]).hexdigest()
    # The checkpoint went when the trial ended, the first weights when they were replaced.
    assert list(purged(client).values()) == [200_000]

    assert client.delete(f"{API}/experiments/{experiment}").status_code == 204
    assert purged(client) == {}


def test_keep_models_bounds_the_store_over_a_40_trial_sweep(db_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=db_url, data_dir=tmp_path, artifact_purge_seconds=3600, claim_poll_seconds=0.05
    )
    spec = make_spec(budget=budget(40, 2), artifacts={"keep_models": 3}, pruner={"name": "none"})
    values = random.Random(7).sample(range(1000), 40)
    size = 20_000
    with TestClient(create_app(settings)) as raw:
        client = authorize(raw)
        experiment = submit(client, spec)
        worker = register(client)
        most = 0
        done: list[float] = []
        for value in values:
            trial = claim_trial(client, worker)
            # The value a model must beat to be kept: the third best so far, once there are 3.
            third = sorted(done, reverse=True)[2] if len(done) >= 3 else None
            assert (trial["send_model"], trial["model_bar"]) == (True, third)
            call(client, trial, "reports", epoch=1, metrics={"val_accuracy": value / 1000})
            assert upload(client, trial, "checkpoint", os.urandom(size), epoch=1).status_code == 204
            assert upload(client, trial, "weights", os.urandom(size)).status_code == 204
            call(client, trial, "complete", value=value / 1000, epoch=1)
            done.append(value / 1000)
            held = purged(client)
            most = max(most, len(held))
            assert sum(held.values()) <= 3 * size, f"{len(held)} objects after a trial"
        best = client.get(f"{API}/experiments/{experiment}/best", params={"k": 40}).json()
        with_weights = [t["value"] for t in best["trials"] if t["has_weights"]]
        assert with_weights == sorted((v / 1000 for v in values), reverse=True)[:3]
        assert most == 3
        dropped = next(t for t in best["trials"] if not t["has_weights"])
        gone = client.get(f"{API}/trials/{dropped['id']}/model")
        assert gone.status_code == 404 and "has no weights" in gone.json()["error"]["message"]


def test_a_claim_says_what_a_model_must_beat_to_be_kept(client: TestClient) -> None:
    """Minimizing with keep_models: 2, the bar is the second lowest value among the trials
    that kept a model (one without a model does not count); keep_models: 0 keeps none; with
    several objectives (the Pareto front) or without the policy there is no bar."""
    worker = register(client)
    unpruned: dict[str, Any] = {"pruner": {"name": "none"}, "budget": budget(5, 1)}

    def claimed(experiment_id: int) -> dict[str, Any]:
        return claim_trial(client, worker, experiment_id=experiment_id)

    def finish(trial: dict[str, Any], value: float, model: bool = True) -> None:
        metrics = {"val_loss": value, "val_accuracy": value}
        assert call(client, trial, "reports", epoch=1, metrics=metrics).status_code == 200
        if model:
            assert upload(client, trial, "weights", os.urandom(100)).status_code == 204
        assert call(client, trial, "complete", value=value, epoch=1).status_code == 200

    lowest = {"metric": "val_loss", "direction": "minimize"}
    experiment = submit(
        client, make_spec(name="low", objective=lowest, artifacts={"keep_models": 2}, **unpruned)
    )
    bars = []
    for value, model in ((0.5, True), (0.1, False), (0.4, True), (0.3, True)):
        trial = claimed(experiment)
        bars.append((trial["send_model"], trial["model_bar"]))
        finish(trial, value, model)
    last = claimed(experiment)
    bars.append((last["send_model"], last["model_bar"]))
    assert bars == [(True, None), (True, None), (True, None), (True, 0.5), (True, 0.4)]
    finish(last, 0.6, model=False)

    several = make_spec(
        name="two",
        objectives=[
            {"metric": "val_accuracy", "direction": "maximize"},
            {"metric": "val_loss", "direction": "minimize"},
        ],
        artifacts={"keep_models": 1},
        budget=budget(5, 1),
    )
    del several["objective"], several["pruner"]
    policies = {
        "none": make_spec(name="none", artifacts={"keep_models": 0}, **unpruned),
        "all": make_spec(name="all", **unpruned),
        "two": several,
    }
    for name, spec in policies.items():
        experiment = submit(client, spec)
        for value in (0.2, 0.1):
            trial = claimed(experiment)
            assert (trial["send_model"], trial["model_bar"]) == (name != "none", None), name
            finish(trial, value, model=name != "none")


def test_a_dataset_is_kept_in_the_store_and_served_to_workers(client: TestClient) -> None:
    answer = client.put(
        f"{API}/datasets/my-wine", params={"target": "cultivar"}, content=wine_csv()
    )
    assert answer.status_code == 201, answer.text
    sha = answer.json()["sha256"]
    ((key, size),) = purged(client).items()
    assert key.startswith("datasets/my-wine-") and size > 0
    content = client.get(f"{API}/datasets/content/{sha}")
    assert content.status_code == 200 and content.content.startswith(b"PK")  # an NPZ
    assert content.headers["X-Content-SHA256"] == hashlib.sha256(content.content).hexdigest()


# --- out of SQL -----------------------------------------------------------------------------


def at_revision(db: Database, revision: str, *, down: bool = False) -> None:
    with db.engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def test_blobs_sql_held_move_into_the_store_resumably_and_back(db_url: str, tmp_path: Path) -> None:
    """A database of the schema before the store (0009), with bytes in its rows: the server
    moves them into the store as it starts, after a mover that was cut short; `--into-sql`
    puts them back for a downgrade."""
    db = Database.connect(db_url)
    at_revision(db, "0009")
    blobs = {kind: os.urandom(50_000) for kind in ("weights", "checkpoint", "outputs", "dataset")}
    blobs["outputs"] = b"\x1f\x8b" + blobs["outputs"]
    sha = "ab" * 32
    with db.transaction() as session:
        # In Core, naming only the columns 0009 has (the model has later ones).
        stamp = utcnow()
        experiment_id = session.execute(
            insert(Experiment.__table__).values(
                name="before",
                state="completed",
                spec=make_spec(),
                metric="val_accuracy",
                direction="maximize",
                n_trials=2,
                max_concurrent=1,
                trial_count=2,
                finish_seq=2,
                created_at=stamp,
                updated_at=stamp,
            )
        ).inserted_primary_key[0]
        trials = [
            session.execute(
                insert(Trial.__table__).values(
                    experiment_id=experiment_id,
                    number=n,
                    state="completed",
                    params={},
                    system_attrs={},
                    last_epoch=0,
                    attempt=1,
                    retries=0,
                    resumed_from=0,
                    has_weights=True,
                    has_outputs=False,
                    created_at=stamp,
                    updated_at=stamp,
                )
            ).inserted_primary_key[0]
            for n in (0, 1)
        ]
        for trial_id in trials:
            row = {"trial_id": trial_id, "size": 50_000, "created_at": stamp}
            session.execute(insert(LEGACY_WEIGHTS).values(**row, data=blobs["weights"]))
        session.execute(
            insert(LEGACY_CHECKPOINTS).values(
                trial_id=trials[1],
                epoch=4,
                data=blobs["checkpoint"],
                size=50_000,
                created_at=stamp,
            )
        )
        session.execute(
            insert(LEGACY_OUTPUTS).values(
                trial_id=trials[1], data=blobs["outputs"], size=50_002, created_at=stamp
            )
        )
        session.execute(
            insert(LEGACY_BLOBS).values(
                sha256=sha, data=blobs["dataset"], size=50_000, created_at=stamp
            )
        )
        session.execute(
            insert(LEGACY_BLOBS.metadata.tables["sweep_datasets"]).values(
                project="default",
                name="old",
                sha256=sha,
                format="npz",
                task="regression",
                n_samples=10,
                n_features=3,
                input_shape=[3],
                size=50_000,
                created_at=stamp,
            )
        )
    at_revision(db, "head")
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    store = settings.open_store()
    # Cut short after its first row: a process that died while moving.
    assert legacy_blobs._move_trial_row(db, store, LEGACY_WEIGHTS, "weights", trials[0]) == 1
    assert legacy_blobs._move_trial_row(db, store, LEGACY_WEIGHTS, "weights", trials[0]) == 0

    with TestClient(create_app(settings)) as raw:  # it moves the rest as it starts
        client = authorize(raw)
        for trial_id in trials:
            assert client.get(f"{API}/trials/{trial_id}/model").content == blobs["weights"]
        assert client.get(f"{API}/trials/{trials[1]}/outputs").content == blobs["outputs"]
        assert client.get(f"{API}/datasets/content/{sha}").content == blobs["dataset"]
    with db.transaction(write=False) as session:
        assert legacy_blobs.pending(session) == 0
        checkpoint = artifacts.of_trial(session, trials[1], "checkpoint")
        assert checkpoint is not None and checkpoint.epoch == 4
        assert session.scalar(select(func.count()).select_from(Artifact)) == 5
    for key in (a.key for a in _all(db)):
        with store.open(key) as stream:
            assert hashlib.sha256(stream.read()).hexdigest() in {
                hashlib.sha256(b).hexdigest() for b in blobs.values()
            }

    assert legacy_blobs.into_sql(db, store) == 5
    at_revision(db, "0009", down=True)
    with db.engine.connect() as conn:
        assert conn.execute(
            select(LEGACY_CHECKPOINTS.c.data, LEGACY_CHECKPOINTS.c.epoch)
        ).all() == [(blobs["checkpoint"], 4)]
        assert conn.execute(select(LEGACY_BLOBS.c.data)).scalars().all() == [blobs["dataset"]]
        assert len(conn.execute(select(LEGACY_WEIGHTS.c.trial_id)).all()) == 2
    db.dispose()


def _all(db: Database) -> list[Artifact]:
    with db.transaction(write=False) as session:
        return list(session.scalars(select(Artifact)))


# --- a large artifact through a server process ------------------------------------------------


def rss(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (or its peak, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


@pytest.mark.processes
def test_a_large_artifact_streams_through_a_server_in_bounded_memory(
    sqlite_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(sqlite_url, tmp_path / "logs")
    server.start()
    try:
        http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=120,
        )
        http.post(f"{API}/experiments", json=make_spec(budget=budget(1, 1)))
        worker = http.post(f"{API}/workers", json={"name": "w"}).json()["id"]
        trial = http.post(f"{API}/workers/{worker}/claim", json={}).json()
        url = f"{API}/trials/{trial['trial_id']}/weights"
        block, blocks = os.urandom(1 << 20), 256  # 256 MiB
        digest = hashlib.sha256()
        for _ in range(blocks):
            digest.update(block)
        headers = {"X-Attempt-Token": trial["token"], "X-Content-SHA256": digest.hexdigest()}
        pid = server.process.pid  # type: ignore[union-attr]
        before = rss(pid)
        sent = http.put(url, content=(block for _ in range(blocks)), headers=headers)
        assert sent.status_code == 204, sent.text
        received = hashlib.sha256()
        with http.stream("GET", f"{API}/trials/{trial['trial_id']}/model") as response:
            for chunk in response.iter_bytes():
                received.update(chunk)
        assert received.hexdigest() == digest.hexdigest()
        growth = rss(pid, "VmHWM") - before
        assert growth < 100 * 2**20, f"the server grew by {growth / 2**20:.0f} MiB"

        # Cut off part way: nothing is kept, and the weights stored before stay.
        store = tmp_path / "server-data" / "artifacts"
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(
                f"PUT {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                f"X-Attempt-Token: {trial['token']}\r\nX-Content-SHA256: {'0' * 64}\r\n"
                f"Content-Length: {1 << 22}\r\n\r\n".encode()
                + block
            )
            incoming = store / ".incoming"
            wait_until(lambda: any(p.stat().st_size for p in incoming.iterdir()), 30, "bytes")
        wait_until(lambda: not list(incoming.iterdir()), 30, "the cut upload to go")
        with http.stream("GET", f"{API}/trials/{trial['trial_id']}/model") as response:
            assert response.headers["X-Content-SHA256"] == digest.hexdigest()
        sizes = [p.stat().st_size for p in store.rglob("*") if p.is_file()]
        assert sizes == [blocks << 20]
        http.close()
    finally:
        server.stop()


# --- straight to S3 -------------------------------------------------------------------------


def test_with_s3_workers_transfer_straight_to_the_store_and_the_service_checks(
    sqlite_url: str, tmp_path: Path, s3_endpoint: str
) -> None:
    from sweep.worker.client import ServiceClient

    bucket = f"sweep-{uuid.uuid4().hex[:12]}"
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path,
        artifacts=f"s3://{bucket}",
        s3_endpoint_url=s3_endpoint,
        artifact_purge_seconds=3600,
    )
    with TestClient(create_app(settings)) as raw:
        client = authorize(raw)
        seen: list[str] = []
        client.event_hooks["request"].append(lambda r: seen.append(f"{r.method} {r.url.path}"))
        submit(client, make_spec(budget=budget(1, 1)))
        trial = claim_trial(client, register(client))
        tid, token = trial["trial_id"], trial["token"]
        call(client, trial, "reports", epoch=1, metrics={"val_accuracy": 0.5})
        worker = ServiceClient("http://testserver", http=client)

        state = os.urandom(150_000)
        worker.upload_checkpoint(tid, token, 1, state)
        assert f"POST {API}/trials/{tid}/uploads/commit" in seen
        assert not [s for s in seen if s.startswith("PUT")]  # no byte went through the API
        assert worker.download_checkpoint(tid, token) == state
        assert [s for s in seen if s.endswith("/checkpoint")] == [
            f"GET {API}/trials/{tid}/checkpoint"
        ]

        def offered(size: int) -> dict[str, Any]:
            about = {
                "kind": "checkpoint",
                "sha256": hashlib.sha256(b"x").hexdigest(),
                "size": size,
                "epoch": 1,
            }
            answer = call_json(client, tid, token, "uploads", about)
            return {**about, "key": answer["key"], "url": answer["url"]}

        def commit(about: dict[str, Any]) -> Any:
            body = {k: v for k, v in about.items() if k != "url"}
            return client.post(
                f"{API}/trials/{tid}/uploads/commit", json=body, headers={"X-Attempt-Token": token}
            )

        corrupted = offered(1)
        httpx.put(corrupted["url"], content=b"y")  # not what its sha256 says
        refused = commit(corrupted)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "sha256"
        short = offered(1000)
        httpx.put(short["url"], content=b"x")
        refused = commit(short)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "size"
        foreign = {**offered(1), "key": "experiments/9/trials/99/checkpoint-a1-0.ckpt"}
        assert commit(foreign).json()["error"]["field"] == "key"
        store = app_store(client)
        keys = [item.key for item in store.listing()]
        assert len(keys) == 1  # the refused ones are gone; the good checkpoint stays
        assert worker.download_checkpoint(tid, token) == state

        weights = os.urandom(120_000)
        worker.upload_weights(tid, token, weights)
        call(client, trial, "complete", value=0.5, epoch=1)
        saved = SweepClient(http=client).download_model(tid, tmp_path / "model.pt")
        assert saved.read_bytes() == weights
        about = {"kind": "weights", "sha256": "0" * 64, "size": 1}
        ended = client.post(
            f"{API}/trials/{tid}/uploads", json=about, headers={"X-Attempt-Token": token}
        )
        assert ended.status_code == 409  # an ended attempt is offered nothing
        worker.close()


def call_json(client: TestClient, trial_id: int, token: str, action: str, body: Any) -> Any:
    answer = client.post(
        f"{API}/trials/{trial_id}/{action}", json=body, headers={"X-Attempt-Token": token}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()
