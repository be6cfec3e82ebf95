"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against a
real server with a finished sweep trained by a real worker process."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sweep.client import SweepClient
from sweep.service.config import Settings
from sweep.service.search.plots import PLOTS
from sweep.service.tokens import create_in_database
from tests.helpers import budget, make_spec, wait_for_end
from tests.processes import ServerProcess, serve, start_worker, stop_workers

pytestmark = pytest.mark.processes  # real server, worker or pool processes

CHROMIUM = os.environ.get("SWEEP_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (scripts/test.sh installs Debian's chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture
def sweep(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> tuple[ServerProcess, SweepClient, int]:
    """A server with a finished 8-trial sweep on two objectives, so that every plot applies."""
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    spec = make_spec(
        name="dashboard-demo",
        objectives=[
            {"metric": "val_accuracy", "direction": "maximize"},
            {"metric": "n_params", "direction": "minimize"},
        ],
        fixed={"epochs": 4, "batch_size": 128},
        budget=budget(8, 2),
    )
    del spec["objective"], spec["pruner"]
    for name in ("batch_size", "optimizer", "activation"):
        del spec["search_space"][name]
    experiment_id = client.submit(spec)["id"]
    worker = start_worker(server, tmp_path / "logs", "w0", "--exit-when-idle", "5")
    try:
        assert wait_for_end(client, experiment_id, timeout=180)["state"] == "completed"
    finally:
        stop_workers([worker])
    return server, client, experiment_id


def test_the_dashboard_shows_the_sweep_and_controls_experiments(
    chromium: Any, sweep: tuple[ServerProcess, SweepClient, int]
) -> None:
    server, client, experiment_id = sweep
    as_worker = {"Authorization": f"Bearer {server.worker_token}"}
    waiting = client.submit(make_spec(name="waiting-for-workers", budget=budget(4)))["id"]
    problems: list[str] = []
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: problems.append(f"token in {r.url}") if "token" in r.url else 0)

    # Without a token the API says 401 and the page asks for one.
    page.goto(f"{server.url}/dashboard/")
    page.wait_for_selector("text=Enter an API token")
    problems.clear()  # the refused request is logged by the browser as an error
    page.fill("#token-input", server.admin_token)
    page.click("text=Use token")
    row = page.locator("#experiments tr", has_text="dashboard-demo")
    row.wait_for(timeout=WAIT_MS)
    assert "completed" in row.inner_text() and "8 / 8" in row.inner_text()
    objective = client.experiment(experiment_id)["spec"]["objective"]
    assert f"{objective['direction']} {objective['metric']}" in row.inner_text()
    page.select_option("#state-filter", "running")
    page.locator("#experiments", has_text="1 experiment(s)").wait_for(timeout=WAIT_MS)
    assert "waiting-for-workers" in page.inner_text("#experiments")

    page.select_option("#state-filter", "")

    # The experiment page draws every plot (the token stays in the browser session).
    page.click(f"a[href='/dashboard/experiments/{experiment_id}']", timeout=WAIT_MS)
    for kind in PLOTS:
        holder = page.locator(f"#plot-{kind}[data-drawn='true']")
        holder.wait_for(timeout=WAIT_MS)
        assert holder.locator("svg.main-svg, canvas").count() > 0, kind
    # Learning curves: one trace per trial.
    assert page.locator("#plot-intermediate .scatterlayer .trace").count() == 8
    assert page.locator("#plot-timeline .barlayer .point").count() == 8
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard-experiment.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"\nscreenshot of the experiment page: {screenshot}")

    # The trial page: params, curve, a download of the weights.
    ended = client.experiment(experiment_id)
    best, name = ended["best_trial_id"], ended["best_trial"]
    assert name == f"{experiment_id}/{client.trial(best)['number']}"
    link = page.locator(f"#summary a[href='/dashboard/trials/{best}']")
    assert link.inner_text() == f"trial {name}"  # named as the page it opens is titled
    link.click()
    page.locator("h1", has_text=f"Trial {name} of experiment {experiment_id}").wait_for(
        timeout=WAIT_MS
    )
    # One chart per metric it reported (costs and timings aside), each on its own axis.
    reported = {n for m in client.trial(best)["metrics"] for n in m["values"]}
    expected = reported - {"epoch_seconds", "train_seconds", "n_params", "latency_ms"}
    assert {"val_loss", "val_accuracy", "lr"} <= expected
    drawn = page.locator("#trial-curves .metric-curve[data-drawn='true']")
    drawn.nth(len(expected) - 1).wait_for(timeout=WAIT_MS)
    charts = page.locator("#trial-curves .metric-curve")
    assert {charts.nth(i).get_attribute("data-metric") for i in range(charts.count())} == expected
    assert page.locator("#trial-curves .scatterlayer .trace").count() == len(expected)
    assert "val_accuracy" in page.inner_text("main")
    with page.expect_download() as download:
        page.click("#download-weights")
    assert download.value.suggested_filename == f"trial-{name.replace('/', '-')}.pt"

    # Pause and resume from the page; a single-objective experiment has no Pareto front.
    page.goto(f"{server.url}/dashboard/experiments/{waiting}")
    page.click("#action-pause", timeout=WAIT_MS)
    page.locator("#action-resume").wait_for(timeout=WAIT_MS)
    assert client.experiment(waiting)["state"] == "paused"
    page.click("#action-resume")
    page.locator("#action-pause").wait_for(timeout=WAIT_MS)
    assert client.experiment(waiting)["state"] == "running"
    assert "several objectives" in page.inner_text("#plot-pareto")
    assert "no trial has started" in page.inner_text("#plot-timeline")

    # The page follows the sweep without a reload: a worker claims a trial, the page shows it.
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=as_worker) as worker:
        worker_id = worker.post("/workers", json={"name": "watched"}).json()["id"]
        claimed = worker.post(f"/workers/{worker_id}/claim", json={"wait_seconds": 0})
        assert claimed.status_code == 200, claimed.text
        page.locator("#summary td:nth-child(3)", has_text="1").wait_for(timeout=WAIT_MS)
        # Why a trial failed shows in the table, without opening the trial.
        trial = claimed.json()
        failed = worker.post(
            f"/trials/{trial['trial_id']}/fail",
            json={"reason": "diverged", "message": "non-finite loss at epoch 1"},
            headers={"X-Attempt-Token": trial["token"]},
        )
        assert failed.status_code == 200, failed.text
    page.locator("#trials td", has_text="diverged").wait_for(timeout=WAIT_MS)
    page.locator("#plot-timeline[data-drawn='true'] svg.main-svg").first.wait_for(timeout=WAIT_MS)
    assert problems == []

    # A viewer sees the experiment but gets no buttons it could not use.
    viewer = create_in_database(
        role="viewer", name="viewer", settings=Settings(database_url=server.database_url)
    )
    page.click("#token-forget")
    page.fill("#token-input", viewer)
    page.click("text=Use token")
    page.locator("#who", has_text="viewer").wait_for(timeout=WAIT_MS)
    page.locator("#summary .state").wait_for(timeout=WAIT_MS)
    assert page.locator(".actions button").count() == 0
    context.close()
