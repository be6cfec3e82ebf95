"""Who may do what: tokens, roles and projects, route by route."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from sweep.service.api import ROUTERS
from sweep.service.api import metrics as metrics_api
from sweep.service.api.deps import Allow
from sweep.service.app import create_app
from sweep.service.auth import Caller, KnownCallers, Role
from sweep.service.config import Settings
from sweep.service.errors import Unauthorized
from tests.helpers import authorize, budget, checksum, make_spec, wait_until

API = "/api/v1"
PUBLIC = {("GET", f"{API}/healthz"), ("GET", f"{API}/readyz")}


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'sweep.db'}"
    # Each case stages its own experiments: far more submissions than the per-minute limit.
    settings = Settings(database_url=url, max_submissions_per_minute=1_000_000)
    with TestClient(create_app(settings)) as client:
        yield client


def token(client: TestClient, role: str, project: str | None = None) -> dict[str, str]:
    authorize(client, role, project)
    return {"Authorization": client.headers.pop("Authorization")}


@pytest.fixture(scope="module")
def tokens(app_client: TestClient) -> dict[str, dict[str, str]]:
    return {
        "admin": token(app_client, "admin"),
        "user": token(app_client, "user", "a"),
        "viewer": token(app_client, "viewer", "a"),
        "worker": token(app_client, "worker", "a"),
    }


def decisions(client: TestClient) -> dict[tuple[str, str], frozenset[Role]]:
    """Each API route's declared decision: the roles its Allow dependency lets in."""
    found: dict[tuple[str, str], frozenset[Role]] = {}
    mounted = [(API, router) for router in ROUTERS] + [("", metrics_api.router)]
    for prefix, route in ((p, r) for p, router in mounted for r in router.routes):
        assert isinstance(route, APIRoute)
        allows = _allows(route.dependant)
        for method in route.methods:
            key = (method, prefix + route.path)
            if key not in PUBLIC:
                assert len(allows) == 1, f"{method} {route.path} has no single decision"
                found[key] = allows[0]
    # Every route the app serves is one of those: none slipped in beside the routers.
    served = {
        (m.upper(), p)
        for p, ops in client.get("/openapi.json").json()["paths"].items()
        for m in ops
    }
    assert served == set(found) | PUBLIC
    return found


def _allows(dependant: Any) -> list[frozenset[Role]]:
    own = [d.call.roles for d in dependant.dependencies if isinstance(d.call, Allow)]
    return own + [r for d in dependant.dependencies for r in _allows(d)]


def test_every_route_has_a_decision_and_the_decisions_are_the_policy(
    app_client: TestClient,
) -> None:
    found = decisions(app_client)
    expected = {
        "admin only": {
            ("GET", f"{API}/workers"),
            ("POST", f"{API}/tokens"),
            ("GET", f"{API}/tokens"),
            ("DELETE", f"{API}/tokens/{{token_id}}"),
        },
        "read": {
            ("GET", f"{API}/experiments"),
            ("GET", f"{API}/experiments/{{experiment_id}}"),
            ("GET", f"{API}/trials/{{trial_id}}"),
            ("GET", f"{API}/experiments/{{experiment_id}}/importance"),
            ("GET", f"{API}/experiments/{{experiment_id}}/plots/{{kind}}"),
            ("GET", "/metrics"),
            ("GET", f"{API}/datasets"),
            ("GET", f"{API}/datasets/{{name}}"),
        },
        "any token": {("GET", f"{API}/me"), ("GET", f"{API}/datasets/content/{{sha256}}")},
        "control": {
            ("POST", f"{API}/experiments"),
            ("DELETE", f"{API}/experiments/{{experiment_id}}"),
            ("PATCH", f"{API}/experiments/{{experiment_id}}"),
            ("POST", f"{API}/experiments/{{experiment_id}}/trials"),
            ("PUT", f"{API}/datasets/{{name}}"),
            ("DELETE", f"{API}/datasets/{{name}}"),
        },
        "run": {
            ("POST", f"{API}/workers/{{worker_id}}/claim"),
            ("POST", f"{API}/trials/{{trial_id}}/reports"),
        },
    }
    roles = {
        "admin only": {"admin"},
        "read": {"admin", "user", "viewer"},
        "control": {"admin", "user"},
        "run": {"admin", "worker"},
        "any token": {"admin", "user", "viewer", "worker"},
    }
    for kind, routes in expected.items():
        for route in routes:
            assert set(found[route]) == roles[kind], route


@dataclass
class Scene:
    """Fresh experiments and claimed trials in project a (own) and b (other)."""

    experiment: dict[str, int]
    trial: dict[str, dict[str, Any]]
    worker: int  # the caller's worker, for claims
    token_id: int
    workers: dict[str, int] = field(default_factory=dict)  # each role's own worker, by role


def stage(client: TestClient, admin: dict[str, str]) -> Scene:
    experiment, trial = {}, {}
    for side, project in (("own", "a"), ("other", "b")):
        # One worker per trial: a worker asking again would get back the trial it holds.
        worker = client.post(f"{API}/workers", json={"name": "w"}, headers=admin).json()["id"]
        spec = make_spec(project=project, budget=budget(5, 5))
        experiment[side] = client.post(f"{API}/experiments", json=spec, headers=admin).json()["id"]
        claimed = client.post(
            f"{API}/workers/{worker}/claim", headers=admin, json={"experiment_id": experiment[side]}
        ).json()
        attempt = {**admin, "X-Attempt-Token": claimed["token"]}
        tid = claimed["trial_id"]
        client.post(
            f"{API}/trials/{tid}/reports",
            headers=attempt,
            json={"epoch": 1, "metrics": {"val_accuracy": 0.5}},
        )
        url = f"{API}/trials/{tid}"
        c, w, o = ({**attempt, **checksum(data)} for data in (b"c", b"w", OUTPUTS))
        client.put(f"{url}/checkpoint", params={"epoch": 1}, content=b"c", headers=c)
        client.put(f"{url}/weights", content=b"w", headers=w)
        client.put(f"{url}/outputs", content=OUTPUTS, headers=o)
        trial[side] = {"id": tid, "token": claimed["token"]}
    made = client.post(f"{API}/tokens", json={"role": "viewer", "project": "a"}, headers=admin)
    return Scene(experiment, trial, worker, made.json()["id"])


def request_for(method: str, path: str, scene: Scene, side: str) -> dict[str, Any]:
    """A well-formed request to the route, about project a's (own) or b's (other) objects."""
    trial = scene.trial[side]
    url = (
        path.replace("{experiment_id}", str(scene.experiment[side]))
        .replace("{trial_id}", str(trial["id"]))
        .replace("{worker_id}", str(scene.worker))
        .replace("{token_id}", str(scene.token_id))
    )
    headers = {"X-Attempt-Token": trial["token"]}
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", f"{API}/experiments"): {"json": make_spec(project="a" if side == "own" else "b")},
        ("POST", f"{API}/workers"): {"json": {"name": "w2"}},
        ("PATCH", f"{API}/experiments/{{experiment_id}}"): {"json": {"budget": {"n_trials": 9}}},
        ("POST", f"{API}/experiments/{{experiment_id}}/trials"): {"json": {"params": {}}},
        ("POST", f"{API}/workers/{{worker_id}}/claim"): {
            "json": {"experiment_id": scene.experiment[side]}
        },
        ("POST", f"{API}/tokens"): {"json": {"role": "viewer", "project": "a"}},
        ("POST", f"{API}/trials/{{trial_id}}/reports"): {
            "json": {"epoch": 2, "metrics": {"val_accuracy": 0.6}}
        },
        ("POST", f"{API}/trials/{{trial_id}}/complete"): {"json": {"value": 0.5, "epoch": 1}},
        ("POST", f"{API}/trials/{{trial_id}}/fail"): {"json": {"reason": "error"}},
        ("PUT", f"{API}/trials/{{trial_id}}/checkpoint"): {"params": {"epoch": 1}, "content": b"c"},
        ("PUT", f"{API}/trials/{{trial_id}}/weights"): {"content": b"w"},
        ("PUT", f"{API}/trials/{{trial_id}}/outputs"): {"content": OUTPUTS},
        ("POST", f"{API}/trials/{{trial_id}}/uploads"): {"json": DIRECT},
        ("POST", f"{API}/trials/{{trial_id}}/uploads/commit"): {"json": {**DIRECT, "key": "k"}},
    }
    body = bodies.get((method, path), {})
    if "content" in body:
        headers.update(checksum(body["content"]))
    return {"method": method, "url": url, "headers": headers, **body}


SCOPED = ("{experiment_id}", "{trial_id}")
OUTPUTS = gzip.compress(b"files")
DIRECT = {"kind": "weights", "sha256": "0" * 64, "size": 1}  # what a worker uploads: a gzipped tar


def test_the_matrix_every_route_by_every_role_for_own_and_other_project(
    app_client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    checked = 0
    # A scene per role and side, staged again only after a request that may have changed it:
    # a refused request changes nothing, so the next route finds the scene as it was staged.
    scenes: dict[tuple[str, str], Scene] = {}
    for (method, path), allowed in sorted(decisions(app_client).items()):
        for role, credentials in tokens.items():
            for side in ("own", "other"):
                scene = scenes.get((role, side))
                if scene is None:
                    scene = scenes[(role, side)] = stage(app_client, tokens["admin"])
                if Role(role) in (Role.ADMIN, Role.WORKER) and role not in scene.workers:
                    scene.workers[role] = app_client.post(  # to claim with a worker of its own
                        f"{API}/workers", json={"name": role}, headers=credentials
                    ).json()["id"]
                scene.worker = scene.workers.get(role, scene.worker)
                request = request_for(method, path, scene, side)
                request["headers"] = {**request["headers"], **credentials}
                status = app_client.request(**request).status_code
                case = f"{role} {method} {path} ({side} project): {status}"
                if Role(role) not in allowed:
                    assert status == 403, case
                elif role != "admin" and side == "other" and any(s in path for s in SCOPED):
                    assert status == 404, case  # never 403: ids do not leak
                elif role != "admin" and side == "other" and "claim" in path:
                    assert status == 404, case
                elif role != "admin" and side == "other" and path == f"{API}/experiments":
                    assert status == (403 if method == "POST" else 200), case
                else:
                    assert status not in (401, 403, 404) and status < 500, case
                if method != "GET" and status < 400:
                    del scenes[(role, side)]
                checked += 1
    assert checked >= 150


def test_no_token_bad_token_and_revoked_token_get_401(
    app_client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    assert app_client.get(f"{API}/healthz").status_code == 200
    assert app_client.get(f"{API}/readyz").json() == {"status": "ready"}
    for headers in ({}, {"Authorization": "Bearer swp_nope"}, {"Authorization": "Basic x"}):
        response = app_client.get(f"{API}/experiments", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    made = app_client.post(
        f"{API}/tokens", json={"role": "user", "project": "a"}, headers=tokens["admin"]
    ).json()
    secret = {"Authorization": f"Bearer {made['token']}"}
    assert app_client.get(f"{API}/experiments", headers=secret).status_code == 200
    listed = app_client.get(f"{API}/tokens", headers=tokens["admin"]).json()
    mine = next(t for t in listed if t["id"] == made["id"])
    assert mine["prefix"] == made["token"][:12] and "token" not in mine
    assert mine["last_used_at"] is not None
    app_client.delete(f"{API}/tokens/{made['id']}", headers=tokens["admin"])
    assert app_client.get(f"{API}/experiments", headers=secret).status_code == 401


def test_a_revoked_token_is_refused_here_at_once_and_elsewhere_within_the_cache_time(
    tmp_path: Path,
) -> None:
    """Four API processes on one database, trusting a checked token for an hour, a second,
    an hour, and not at all. The token is revoked through the first."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    apps = [
        create_app(Settings(database_url=url, token_cache_seconds=ttl))
        for ttl in (3600, 1, 3600, 0)
    ]
    with (
        TestClient(apps[0]) as here,
        TestClient(apps[1]) as soon,
        TestClient(apps[2]) as late,
        TestClient(apps[3]) as never,
    ):
        admin = token(here, "admin")
        made = here.post(f"{API}/tokens", json={"role": "viewer"}, headers=admin).json()
        secret = {"Authorization": f"Bearer {made['token']}"}
        for client in (here, soon, late, never):  # each has checked it in SQL
            assert client.get(f"{API}/experiments", headers=secret).status_code == 200
        assert here.delete(f"{API}/tokens/{made['id']}", headers=admin).status_code == 204

        assert here.get(f"{API}/experiments", headers=secret).status_code == 401
        assert never.get(f"{API}/experiments", headers=secret).status_code == 401
        wait_until(
            lambda: soon.get(f"{API}/experiments", headers=secret).status_code == 401,
            30,
            "the revocation to reach a process that trusts a check for a second",
        )
        # The price of the cache, as documented: a process told to trust its check for an
        # hour has not read SQL again.
        assert late.get(f"{API}/experiments", headers=secret).status_code == 200


def test_a_project_token_lists_only_its_project(
    app_client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    stage(app_client, tokens["admin"])
    listed = app_client.get(f"{API}/experiments", headers=tokens["viewer"]).json()["items"]
    assert listed and {e["project"] for e in listed} == {"a"}
    everything = app_client.get(f"{API}/experiments", headers=tokens["admin"]).json()["items"]
    assert {e["project"] for e in everything} == {"a", "b"}


@pytest.mark.processes
def test_the_cli_makes_the_first_admin_token(tmp_path: Path) -> None:
    env = {"SWEEP_DATABASE_URL": f"sqlite:///{tmp_path / 'sweep.db'}", "PATH": "/usr/bin"}
    made = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "token", "create", "--role", "admin"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("swp_") and len(secret) > 40
    settings = Settings(database_url=env["SWEEP_DATABASE_URL"])
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {secret}"}
        assert client.get(f"{API}/tokens", headers=headers).status_code == 200


def test_auth_is_off_only_when_said_and_then_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", auth=False)
    with TestClient(create_app(settings)) as client:
        assert client.get(f"{API}/experiments").status_code == 200
    assert "AUTHENTICATION IS OFF" in caplog.text


def test_a_worker_id_serves_only_the_project_that_registered_it(
    app_client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    scene = stage(app_client, tokens["admin"])
    other = token(app_client, "worker", "b")
    theirs = app_client.post(f"{API}/workers", json={"name": "b"}, headers=other).json()["id"]
    response = app_client.post(f"{API}/workers/{theirs}/claim", json={}, headers=tokens["worker"])
    assert response.status_code == 404
    mine = app_client.post(f"{API}/workers", json={"name": "a"}, headers=tokens["worker"])
    claimed = app_client.post(
        f"{API}/workers/{mine.json()['id']}/claim", json={}, headers=tokens["worker"]
    ).json()
    experiment = app_client.get(
        f"{API}/experiments/{claimed['experiment_id']}", headers=tokens["admin"]
    ).json()
    assert experiment["project"] == "a" and claimed["experiment_id"] != scene.experiment["other"]


def test_calls_that_miss_the_token_cache_together_share_one_check() -> None:
    # A thousand workers share a token: when its cached check expires, their calls must not
    # all read (and touch) its row at once.
    known = KnownCallers(ttl=5)
    header = "Bearer sweep_" + "x" * 40
    caller = Caller(role=Role.WORKER, project=None, token_id=1)
    checks = []

    async def calls(outcome: Caller | Exception) -> list[Caller | BaseException]:
        gate = asyncio.Event()

        async def check() -> Caller:
            checks.append(outcome)
            await gate.wait()
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        waiting = [asyncio.ensure_future(known.checked(header, check)) for _ in range(20)]
        await asyncio.sleep(0)  # every call reaches the cache before the check ends
        waiting[0].cancel()  # a caller that leaves takes no one's answer with it
        gate.set()
        return await asyncio.gather(*waiting[1:], return_exceptions=True)

    assert asyncio.run(calls(caller)) == [caller] * 19
    assert len(checks) == 1
    refused = Unauthorized("unknown or revoked token")
    assert asyncio.run(calls(refused)) == [refused] * 19  # the next miss checks anew
    assert len(checks) == 2
