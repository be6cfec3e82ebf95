"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against a
real server with a finished sweep trained by a real worker process."""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sweep.client import SweepClient
from sweep.service.config import Settings
from sweep.service.search.plots import PLOTS
from sweep.service.tokens import create_in_database
from tests import seeding
from tests.helpers import budget, make_spec, wait_for_end, wait_until
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

    # Without a token the page asks for one, and says so when the server refuses it.
    page.goto(f"{server.url}/dashboard/")
    page.locator("#sign-in", has_text="Enter an API token").wait_for(timeout=WAIT_MS)
    assert "sweep token create" in page.inner_text("#sign-in")
    page.fill("#token-input", "not-a-token")
    page.click("#token-use")
    page.locator("#token-refused").wait_for(timeout=WAIT_MS)
    problems.clear()  # the refused requests are logged by the browser as errors
    page.fill("#token-input", server.admin_token)
    page.click("#token-use")
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
    # Log axes on request.
    page.check("#plot-history-log-y")
    axis = "document.getElementById('plot-history')._fullLayout.yaxis.type"
    page.wait_for_function(f"{axis} === 'log'", timeout=WAIT_MS)
    page.uncheck("#plot-history-log-y")
    page.wait_for_function(f"{axis} !== 'log'", timeout=WAIT_MS)

    # The trials table: a metric column chosen, sorted by it on the server.
    page.click("#trial-columns summary")
    page.check("#trial-columns input[data-column='val_loss']")
    by_loss = page.locator("#trials th[data-sort='metric:val_loss']")
    by_loss.click(timeout=WAIT_MS)
    page.locator("#trials th[data-sort='metric:val_loss']", has_text="▲").wait_for(timeout=WAIT_MS)
    lowest = client.trials(experiment_id, sort="metric:val_loss", limit=1)["items"][0]
    first_row = page.locator("#trials tbody tr").first
    assert first_row.locator("a").inner_text() == lowest["name"]
    loss = (lowest["last_metrics"] or {})["val_loss"]
    assert f"{loss:.5g}"[:5] in first_row.inner_text()
    # Filtered on a parameter's range, on the server.
    lrs = sorted(t["params"]["lr"] for t in client.all_trials(experiment_id))
    page.fill("#trial-filters input[data-param='lr'][data-op='<=']", repr(lrs[3]))
    page.click("#trial-filter-apply")
    page.locator("#trials-range", has_text="of 4 trial(s)").wait_for(timeout=WAIT_MS)
    page.click("#trial-filter-clear")
    page.locator("#trials-range", has_text="of 8 trial(s)").wait_for(timeout=WAIT_MS)

    # Compare: two trials selected, their curves of any metric overlaid, named in a legend.
    picks = page.locator("#trials input.pick")
    picks.nth(0).check()
    picks.nth(1).check()
    names = [page.locator("#trials tbody tr").nth(i).locator("a").inner_text() for i in (0, 1)]
    compare = page.locator("#compare-plot[data-drawn='true']")
    compare.wait_for(timeout=WAIT_MS)
    page.wait_for_function(
        "document.querySelectorAll('#compare-plot .scatterlayer .trace').length === 2",
        timeout=WAIT_MS,
    )
    legend = page.locator("#compare-plot .legend").text_content() or ""
    assert all(name in legend for name in names), legend
    page.select_option("#compare-metric", "val_accuracy")
    page.locator("#compare-plot .gtitle", has_text="val_accuracy").wait_for(timeout=WAIT_MS)

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
    loss_axis = "document.getElementById('curve-val_loss')._fullLayout.yaxis.type"
    page.check("#curve-val_loss-log-y")
    page.wait_for_function(f"{loss_axis} === 'log'", timeout=WAIT_MS)
    config = page.inner_text("#trial-config")
    assert all(name in config for name in client.trial(best)["config"])  # the full config
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

    # The budget, a queued trial and the experiment's deletion, from the page.
    page.fill("#budget-n-trials", "6")
    page.click("#budget-form button")
    wait_until(lambda: client.experiment(waiting)["n_trials"] == 6, 30, "the new budget")
    page.fill("#enqueue-form input[data-param='lr']", "0.01")
    page.select_option("#enqueue-form select[data-param='optimizer']", label="adam")
    page.click("#enqueue-form button")
    page.locator("#enqueue-done", has_text="queued").wait_for(timeout=WAIT_MS)
    queued = client.trials(waiting, state="queued")["items"]
    assert [t["params"] for t in queued] == [{"lr": 0.01, "optimizer": "adam"}]
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#action-delete")
    page.wait_for_url(f"{server.url}/dashboard/", timeout=WAIT_MS)
    assert "trial(s), their metrics, weights and checkpoints" in dialogs[0]
    assert waiting not in [e["id"] for e in client.experiments()["items"]]
    assert problems == []

    # An outlier does not squeeze a Pareto front into a corner: the axes fit the rest.
    outlier = pareto_with_an_outlier(client, server)
    page.goto(f"{server.url}/dashboard/experiments/{outlier}")
    page.locator("#plot-pareto[data-drawn='true']").wait_for(timeout=WAIT_MS)
    assert page.get_attribute("#plot-pareto", "data-outliers") == "1"
    top = page.evaluate("document.getElementById('plot-pareto')._fullLayout.yaxis.range[1]")
    assert top < 10_000, top
    page.uncheck("#plot-pareto-fit")
    page.wait_for_function(
        "document.getElementById('plot-pareto')._fullLayout.yaxis.range[1] > 1e6",
        timeout=WAIT_MS,
    )

    # A viewer sees the experiment but gets no buttons it could not use.
    viewer = create_in_database(
        role="viewer", name="viewer", settings=Settings(database_url=server.database_url)
    )
    page.click("#token-forget")
    page.fill("#token-input", viewer)
    page.click("#token-use")
    page.locator("#who", has_text="viewer").wait_for(timeout=WAIT_MS)
    page.locator("#summary .state").wait_for(timeout=WAIT_MS)
    assert page.locator(".actions button").count() == 0
    assert page.locator("#budget-form, #enqueue-form").count() == 0
    context.close()


def test_an_experiment_of_10000_trials_opens_at_once_and_pages_on_the_server(
    chromium: Any, request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> None:
    """10,000 finished trials of 20 epochs each: the page paints its summary and first page of
    trials at once, pages, sorts and filters on the server, and draws every plot from a
    sample or a band (each saying so). The times are printed: speed is measured, not
    asserted."""
    n_trials, epochs = 10_000, 20
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    spec = make_spec(
        name="ten-thousand",
        search_space=seeding.SPACE,
        fixed={"epochs": epochs},
        budget=budget(n_trials),
    )
    experiment_id = client.submit(spec)["id"]
    seeding.finished_trials(server.database_url, experiment_id, n_trials, epochs)
    problems: list[str] = []
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(f"sessionStorage.setItem('sweep-token', '{server.admin_token}')")
    page = context.new_page()
    page.on("pageerror", lambda e: problems.append(str(e)))

    # While the page loads, another client reads the experiment: how long it waits says
    # whether drawing the plots stalls the server.
    waits: list[float] = []
    loaded = threading.Event()

    def probe() -> None:
        as_admin = {"Authorization": f"Bearer {server.admin_token}"}
        with httpx.Client(base_url=server.url, headers=as_admin) as other:
            while not loaded.is_set():
                began = time.perf_counter()
                other.get(f"/api/v1/experiments/{experiment_id}").raise_for_status()
                waits.append(time.perf_counter() - began)
                loaded.wait(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    page.goto(f"{server.url}/dashboard/experiments/{experiment_id}")
    page.locator("#trials-range", has_text=f"1-50 of {n_trials}").wait_for(timeout=WAIT_MS)
    assert page.locator("#trials tbody tr").count() == 50
    try:
        for kind in PLOTS:
            plotted(page, kind).wait_for(timeout=120_000)
    finally:
        loaded.set()
        prober.join()
    timings = page.evaluate("window.sweepTimings")
    paint = page.evaluate(
        "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"
    )
    # The band and sample notes say what a plot shows of so many trials.
    assert "the 100 best of" in page.inner_text("#plot-intermediate")
    assert "others at random" in page.inner_text("#plot-parallel")

    # Paging, sorting by a metric and filtering happen on the server.
    page.click("#trials-next")
    page.locator("#trials-range", has_text=f"51-100 of {n_trials}").wait_for(timeout=WAIT_MS)
    page.click("#trials th[data-sort='param:lr']")
    page.locator("#trials th[data-sort='param:lr']", has_text="▲").wait_for(timeout=WAIT_MS)
    page.locator("#trials-range", has_text="1-50").wait_for(timeout=WAIT_MS)
    smallest = client.trials(experiment_id, sort="param:lr", limit=1)["items"][0]["name"]
    assert page.locator("#trials tbody tr").first.locator("a").inner_text() == smallest
    page.fill("#trial-filters input[data-param='lr'][data-op='>=']", "0.1")
    page.click("#trial-filter-apply")
    wanted = client.trials(experiment_id, where=["lr>=0.1"], limit=1)["total"]
    page.locator("#trials-range", has_text=f"of {wanted} trial(s)").wait_for(timeout=WAIT_MS)
    assert 0 < wanted < n_trials

    # Opened again, every plot comes from what the first visit drew.
    again = context.new_page()
    again.goto(f"{server.url}/dashboard/experiments/{experiment_id}")
    for kind in PLOTS:
        plotted(again, kind).wait_for(timeout=WAIT_MS)
    cached = again.evaluate("window.sweepTimings")
    print(
        f"\n{n_trials:,} trials x {epochs} epochs: first contentful paint {paint:.0f} ms, "
        f"summary {timings['summary']:.0f} ms, first page of trials {timings['trials']:.0f} ms, "
        f"every plot {timings['plots']:.0f} ms; opened again: trials "
        f"{cached['trials']:.0f} ms, every plot {cached['plots']:.0f} ms; another client's "
        f"reads meanwhile: median {statistics.median(waits) * 1000:.0f} ms, longest "
        f"{max(waits) * 1000:.0f} ms ({len(waits)} reads)"
    )
    assert problems == []
    context.close()


def pareto_with_an_outlier(client: SweepClient, server: ServerProcess) -> int:
    """A two-objective experiment of 10 finished trials, one of them with 1,000 times the
    others' n_params."""
    spec = make_spec(
        name="pareto-outlier",
        objectives=[
            {"metric": "val_accuracy", "direction": "maximize"},
            {"metric": "n_params", "direction": "minimize"},
        ],
        budget=budget(10),
    )
    del spec["objective"], spec["pruner"]
    experiment_id = client.submit(spec)["id"]
    as_worker = {"Authorization": f"Bearer {server.worker_token}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=as_worker) as worker:
        worker_id = worker.post("/workers", json={"name": "pareto"}).json()["id"]
        for i in range(10):
            trial = worker.post(f"/workers/{worker_id}/claim", json={"wait_seconds": 0}).json()
            attempt = {"X-Attempt-Token": trial["token"]}
            accuracy, size = 0.5 + i / 25, (9 - i) * 100 + 1000 + (5_000_000 if i == 4 else 0)
            metrics = {"val_accuracy": accuracy, "n_params": size}
            url = f"/trials/{trial['trial_id']}"
            reported = worker.post(
                f"{url}/reports", json={"epoch": 1, "metrics": metrics}, headers=attempt
            )
            assert reported.status_code == 200, reported.text
            done = worker.post(f"{url}/complete", json={"value": accuracy}, headers=attempt)
            assert done.status_code == 200, done.text
    return experiment_id


def plotted(page: Any, kind: str) -> Any:
    """Plot `kind` drawn, or its note saying why it cannot be."""
    return page.locator(f"#plot-{kind}[data-drawn='true'], #plot-{kind} .note:not(.loading)")
