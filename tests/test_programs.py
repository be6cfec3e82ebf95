"""Programs on the service's side: specs that name one, claims routed to the workers that run
it, reports with the program's own metrics, and the per-attempt time limit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sweep.client import SweepClient
from tests.helpers import (
    API,
    call,
    claim,
    claim_trial,
    register,
    submit,
    wait_for_end,
    wait_until,
)
from tests.processes import ServerProcess, serve, start_worker, stop_workers


def program_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "own-cnn",
        "program": "train_cnn",
        "objective": {"metric": "val_macro_f1", "direction": "maximize"},
        "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
            "augment": {"type": "categorical", "choices": ["none", "flip", "shift"]},
        },
        "fixed": {"epochs": 3, "class_weights": "balanced"},
        "sampler": {"name": "tpe", "seed": 3},
        "budget": {"n_trials": 4, "max_concurrent": 2},
    }
    spec.update(overrides)
    return spec


def test_a_program_spec_takes_its_own_parameters_and_metric(client: Any) -> None:
    experiment_id = submit(client, program_spec())
    stored = client.get(f"{API}/experiments/{experiment_id}").json()["spec"]
    assert stored["program"] == "train_cnn"
    assert "model" not in stored and "dataset" not in stored
    assert stored["objective"]["metric"] == "val_macro_f1"
    assert stored["requirements"]["resources"] == {"processes": None, "gpus": None}

    trial = claim_trial(client, register(client, "w", programs=["train_cnn"]))
    assert trial["program"] == "train_cnn" and trial["model"] is None
    assert trial["processes"] == 1
    assert set(trial["params"]) == {"lr", "focal_gamma", "augment"}
    # The params as the sampler gave them, with the fixed values as they are.
    assert trial["config"] == {**trial["params"], "epochs": 3, "class_weights": "balanced"}
    assert trial["objectives"] == [
        {"metric": "val_macro_f1", "direction": "maximize", "reduce": "best"}
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "mlp"}, "model"),
        ({"dataset": "digits"}, "dataset"),
        ({"program": None}, "program"),
        ({"program": "train cnn"}, "program"),
        ({"fixed": {"lr": 0.1}}, "fixed.lr"),
        (
            {"search_space": {"lr": {"type": "float", "low": 1, "high": 0.1}}},
            "search_space.lr.high",
        ),
        (
            {
                "search_space": {
                    "a": {"type": "categorical", "choices": ["x", "y"]},
                    "b": {
                        "type": "float",
                        "low": 0,
                        "high": 1,
                        "when": {"param": "a", "in": ["z"]},
                    },
                }
            },
            "search_space.b.when.in[0]",
        ),
        ({"requirements": {"resources": {"processes": 0}}}, "requirements.resources.processes"),
        ({"budget": {"n_trials": 2, "trial_timeout_s": 0}}, "budget.trial_timeout_s"),
    ],
)
def test_a_bad_program_spec_names_the_field_and_creates_nothing(
    client: Any, change: dict[str, Any], field: str
) -> None:
    spec = program_spec(**change)
    if spec["program"] is None:
        del spec["program"]
    response = client.post(f"{API}/experiments", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert client.get(f"{API}/experiments").json()["total"] == 0


def test_only_a_worker_that_runs_the_program_claims_its_trials(client: Any) -> None:
    experiment_id = submit(client, program_spec())
    builtin_only = register(client, "stock")
    other_program = register(client, "other", programs=["train_rnn"])
    assert claim(client, builtin_only) is None
    assert claim(client, other_program) is None
    why = client.get(f"{API}/experiments/{experiment_id}").json()["waiting_for"]
    assert "the program 'train_cnn'" in why
    assert "does not run the program 'train_cnn'" in why

    runs_it = register(client, "cnn", programs=["train_rnn", "train_cnn"])
    assert claim_trial(client, runs_it)["experiment_id"] == experiment_id
    assert client.get(f"{API}/experiments/{experiment_id}").json()["waiting_for"] is None


def test_a_trial_that_needs_several_gpus_goes_to_a_worker_that_has_them(client: Any) -> None:
    experiment_id = submit(client, program_spec(requirements={"resources": {"gpus": 2}}))
    one = register(client, "one-gpu", programs=["train_cnn"], gpus=1, device="cuda:0")
    assert claim(client, one) is None
    why = client.get(f"{API}/experiments/{experiment_id}").json()["waiting_for"]
    assert "2 GPUs on one worker" in why and "it has 1 GPU(s)" in why
    two = register(client, "two-gpus", programs=["train_cnn"], gpus=2, device="cuda:0")
    trial = claim_trial(client, two)
    assert trial["processes"] == 2  # one per GPU, unless the spec says otherwise


def test_a_program_sees_the_gpus_of_its_worker_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from sweep.worker.program_run import _visible_devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _visible_devices("cpu", None) == ""
    assert _visible_devices("cuda:1", None) == "1"
    assert _visible_devices("cuda:2", [2, 3]) == "2,3"
    # Numbered within what the worker itself was given.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert _visible_devices("cuda:1", None) == "5"
    assert _visible_devices("cuda:0", [0, 2]) == "4,6"


def test_attempts_of_the_same_trial_id_on_one_host_get_directories_of_their_own(
    tmp_path: Path,
) -> None:
    """Workers of two servers on one host can run each server's trial 1, attempt 1, at the
    same time: each attempt's directory is its own, so one ending (its directory removed)
    takes nothing from the other."""
    from sweep.worker.program_run import attempt_dir

    assignment = {"trial_id": 1, "attempt": 1}
    work_dir = tmp_path / "programs"
    first, second = attempt_dir(work_dir, assignment), attempt_dir(work_dir, assignment)
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == second.parent == work_dir
    assert first.name.startswith("trial-1-1-")


def test_a_program_reports_any_metrics_and_the_objective_when_it_has_it(client: Any) -> None:
    submit(client, program_spec(pruner={"name": "none"}))
    trial = claim_trial(client, register(client, "w", programs=["train_cnn"]))
    assert call(client, trial, "reports", epoch=1, metrics={"train_loss": 2.0}).json() == {
        "action": "continue",
        "reason": None,
    }
    answer = call(
        client, trial, "reports", epoch=2, metrics={"train_loss": 1.0, "val_macro_f1": 0.4}
    )
    assert answer.json()["action"] == "continue"
    done = call(client, trial, "complete", value=0.4, epoch=2)
    assert done.status_code == 200, done.text
    detail = client.get(f"{API}/trials/{trial['trial_id']}").json()
    assert detail["value"] == 0.4 and detail["best_epoch"] == 2
    assert [m["values"] for m in detail["metrics"]] == [
        {"train_loss": 2.0},
        {"train_loss": 1.0, "val_macro_f1": 0.4},
    ]


def test_an_attempt_past_its_time_limit_fails_and_its_worker_is_told_to_stop(
    client: Any,
) -> None:
    experiment_id = submit(client, program_spec(budget={"n_trials": 1, "trial_timeout_s": 0.01}))
    trial = claim_trial(client, register(client, "w", programs=["train_cnn"]))
    assert trial["trial_timeout_s"] == 0.01

    def stopped() -> dict[str, Any] | None:
        answer: dict[str, Any] = call(client, trial, "heartbeat").json()
        return answer if answer["action"] == "stop" else None

    assert "timed out" in wait_until(stopped, 10, "the time limit", poll=0.01)["reason"]
    ended = client.get(f"{API}/trials/{trial['trial_id']}").json()
    assert (ended["state"], ended["failure_reason"]) == ("failed", "error")
    assert "budget.trial_timeout_s" in ended["failure_message"]
    assert client.get(f"{API}/experiments/{experiment_id}").json()["counts"]["failed"] == 1


# --- real servers, real workers, real programs ----------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "programs"
SCRIPT = f"train_cnn={{python}} {EXAMPLES / 'train_cnn.py'} {{args}}"


def cnn_spec(n_trials: int, **overrides: Any) -> dict[str, Any]:
    spec = program_spec(
        search_space={
            "lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
            "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
            "augment": {"type": "categorical", "choices": ["none", "shift", "flip"]},
        },
        fixed={"epochs": 3},
        pruner={"name": "none"},
        budget={"n_trials": n_trials, "max_concurrent": 1},
    )
    spec.update(overrides)
    return spec


@pytest.mark.processes
def test_a_script_and_a_function_program_complete_sweeps_on_their_own_metric(
    server: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    client = SweepClient(server.url, token=server.admin_token)
    request.addfinalizer(client.close)
    # The same project as a script and as a function (examples/programs).
    script = client.submit(cnn_spec(1))
    function = client.submit(cnn_spec(1, program="train_fn"))
    programs = ("--program", SCRIPT, "--program", "train_fn=train_fn:train")
    worker = start_worker(server, tmp_path, "cnn", *programs, "--max-trials", "2", env=ON_PATH)
    try:
        assert worker.wait(timeout=120) == 0
    finally:
        stop_workers([worker])
    trials = [t for e in (script, function) for t in client.all_trials(e["id"])]
    assert [client.experiment(e["id"])["state"] for e in (script, function)] == ["completed"] * 2
    for trial in trials:
        detail = client.trial(trial["id"])
        assert detail["state"] == "completed", detail
        curve = [m["values"] for m in detail["metrics"]]
        assert [c["step"] for c in curve] == [1.0, 2.0, 3.0]
        assert detail["value"] == max(c["val_macro_f1"] for c in curve)
        assert detail["has_weights"]


BEHAVE = Path(__file__).resolve().parent / "programs" / "behave.py"
BEHAVIOUR = f"behave={{python}} {BEHAVE} {{args}}"
# Short leases: heartbeats every second, so a time limit or a takeover shows at once.
QUICK_LEASES = {"SWEEP_LEASE_SECONDS": "4", "SWEEP_LEASE_CHECK_SECONDS": "0.5"}


def behave_spec(modes: list[str], **overrides: Any) -> dict[str, Any]:
    """One trial per mode of tests/programs/behave.py, in grid order."""
    spec = program_spec(
        program="behave",
        objective={"metric": "score", "direction": "maximize"},
        search_space={"mode": {"type": "categorical", "choices": modes}},
        fixed={"steps": 3},
        sampler={"name": "grid", "seed": 0},
        pruner={"name": "none"},
        budget={"n_trials": len(modes), "max_concurrent": 2, "max_consecutive_errors": 0},
    )
    spec.update(overrides)
    return spec


def by_mode(client: SweepClient, experiment_id: int) -> dict[str, dict[str, Any]]:
    return {
        t["params"]["mode"]: dict(client.trial(t["id"])) for t in client.all_trials(experiment_id)
    }


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.processes
def test_every_ending_of_a_program_becomes_the_outcome_it_should(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs", env=QUICK_LEASES)
    pidfile = tmp_path / "hang.pids"
    modes = ["ok", "silent", "exit3", "raise_sdk", "nan", "nan_sdk", "memory", "memory_sdk"]
    modes += ["hang", "hostile"]
    spec = behave_spec(
        modes,
        fixed={"steps": 3, "pidfile": str(pidfile)},
        budget={
            "n_trials": len(modes),
            "max_concurrent": 2,
            "max_consecutive_errors": 0,
            "trial_timeout_s": 4,
        },
    )
    experiment = client.submit(spec)
    workers = [
        start_worker(server, tmp_path, f"w{i}", "--program", BEHAVIOUR, "--grace-seconds", "1")
        for i in range(2)
    ]
    try:
        wait_for_end(client, experiment["id"], timeout=120)
    finally:
        stop_workers(workers)
    trials = by_mode(client, experiment["id"])
    outcome = {mode: (t["state"], t["failure_reason"]) for mode, t in trials.items()}
    assert outcome == {
        "ok": ("completed", None),
        "hostile": ("completed", None),
        "silent": ("failed", "error"),
        "exit3": ("failed", "error"),
        "raise_sdk": ("failed", "error"),
        "nan": ("failed", "diverged"),
        "nan_sdk": ("failed", "diverged"),
        "memory": ("failed", "oom"),
        "memory_sdk": ("failed", "oom"),
        "hang": ("failed", "error"),
    }
    message = {mode: t["failure_message"] or "" for mode, t in trials.items()}
    assert trials["ok"]["value"] == 0.9 and trials["hostile"]["value"] == 0.9
    assert "never reported score" in message["silent"]
    assert "exit code 3" in message["exit3"] and "about to exit 3" in message["exit3"]
    assert "ValueError: bad batch" in message["raise_sdk"]
    assert "score is nan at step 2" in message["nan"]
    assert "MemoryError" in message["memory_sdk"]
    assert "timed out" in message["hang"]
    # The tail of each program's output is kept with its trial, and the CLI shows it.
    assert "about to exit 3" in trials["exit3"]["output"]
    # The files it left in SWEEP_OUTPUT_DIR are kept with the trial too.
    assert trials["ok"]["has_outputs"] and not trials["silent"]["has_outputs"]
    packed = client.download_outputs(trials["ok"]["id"], tmp_path / "ok.tar.gz")
    with tarfile.open(packed) as tar:
        assert tar.extractfile("plots/mode.txt").read() == b"ok"  # type: ignore[union-attr]
    assert 'SWEEP {"step": 3, "score": 0.9}' in trials["ok"]["output"]
    shown = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "trial", str(trials["exit3"]["id"])],
        capture_output=True,
        text=True,
        env={**os.environ, "SWEEP_SERVER": server.url, "SWEEP_TOKEN": server.admin_token},
    )
    assert shown.returncode == 0, shown.stderr
    assert "failed" in shown.stdout and "about to exit 3" in shown.stdout
    # The hung program's own child went with it.
    program, grandchild = (int(pid) for pid in pidfile.read_text().split())
    wait_until(lambda: not running(program) and not running(grandchild), 10, "the group to go")
    # Malformed report lines were passed over; the good ones made the curve.
    assert [m["values"]["score"] for m in trials["hostile"]["metrics"]] == [0.6, 0.75, 0.9]
    logged = "".join(p.read_text(errors="replace") for p in tmp_path.glob("w*.log"))
    assert "ignored a malformed report line" in logged and "cut" in logged


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def reported(client: SweepClient, trial_id: int) -> list[float]:
    return [m["values"]["step"] for m in client.trial(trial_id)["metrics"]]


ON_PATH = {"PYTHONPATH": str(EXAMPLES)}  # a function program is imported from the path


@pytest.mark.processes
def test_a_function_program_resumes_after_its_process_is_killed_and_its_worker_preempted(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs", env=QUICK_LEASES)
    spec = behave_spec([], program="behave_fn", search_space={}, sampler={"name": "random"})
    spec["fixed"] = {"steps": 12, "delay": 0.4, "quality": 0.8}
    spec["budget"] = {"n_trials": 1}
    experiment = client.submit(spec)
    programs = ("--program", "behave_fn=behave:train")
    behave_path = {"PYTHONPATH": str(BEHAVE.parent)}
    worker = start_worker(server, tmp_path, "fn", *programs, env=behave_path)
    stock = start_worker(server, tmp_path, "stock")  # never handed the program's trial
    try:
        trial_id = wait_until(lambda: client.trials(experiment["id"])["items"], 60, "a trial")[0][
            "id"
        ]
        # Killed from outside (as by the out-of-memory killer) after two steps: a retry.
        wait_until(lambda: len(reported(client, trial_id)) >= 2, 60, "two steps")
        (program,) = wait_until(lambda: children(worker.pid), 10, "the program")
        os.kill(program, signal.SIGKILL)
        wait_until(lambda: client.trial(trial_id)["attempt"] == 2, 30, "a second attempt")
        # The worker is told to stop: its program's next report raises, and the trial goes back.
        wait_until(lambda: len(reported(client, trial_id)) >= 4, 60, "four steps")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert client.trial(trial_id)["failure_reason"] == "preempted"
        worker = start_worker(server, tmp_path, "fn-2", *programs, env=behave_path)
        ended = wait_for_end(client, experiment["id"], timeout=120)
    finally:
        stop_workers([worker, stock])
    assert ended["counts"]["completed"] == 1
    trial = client.trial(trial_id)
    assert trial["attempt"] == 3 and trial["retries"] == 1
    assert trial["resumed_from"] >= 3
    # Each attempt went on from the last checkpoint: every step once.
    assert reported(client, trial_id) == [float(step) for step in range(1, 13)]
    assert trial["value"] == 0.8
    logged = (tmp_path / "stock.log").read_text()
    assert f"trial {trial_id}" not in logged


@pytest.mark.processes
def test_pruning_ends_a_program_through_the_sdk_or_by_sigterm(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    pids = tmp_path / "program.pid"
    spec = behave_spec(
        [],
        search_space={
            "mode": {"type": "categorical", "choices": ["slow", "slow_sdk"]},
            "quality": {"type": "categorical", "choices": [0.1, 0.9]},
        },
        fixed={"steps": 6, "delay": 0.3, "pidfile": str(pids)},
        pruner={"name": "threshold", "options": {"lower": 0.3}},
        budget={"n_trials": 4, "max_concurrent": 1},
    )
    experiment = client.submit(spec)
    worker = start_worker(server, tmp_path, "w", "--program", BEHAVIOUR, "--max-trials", "4")
    try:
        assert worker.wait(timeout=120) == 0  # each program ended before the worker did
    finally:
        stop_workers([worker])
    logged = (tmp_path / "w.log").read_text()
    for trial in client.all_trials(experiment["id"]):
        mode, quality = trial["params"]["mode"], trial["params"]["quality"]
        detail = client.trial(trial["id"])
        if quality == 0.9:
            assert (detail["state"], detail["value"]) == ("completed", 0.9)
            continue
        assert detail["state"] == "pruned" and reported(client, trial["id"]) == [1.0]
        pid = int(Path(f"{pids}.{trial['number']}").read_text())
        assert not running(pid)
        ended = re.search(rf"trial {trial['id']}: its program ended \((.*)\)", logged)
        assert ended is not None
        # With the SDK the report raised sweep.Pruned (uncaught: exit 1); without it, SIGTERM
        # ended the script.
        assert ended[1] == ("exit code 1" if mode == "slow_sdk" else "killed by SIGTERM")
    assert "sweep: trial pruned" in logged


DDP = (
    "train_ddp={python} -m torch.distributed.run --standalone --nproc_per_node={processes} "
    f"{EXAMPLES / 'train_ddp.py'} {{args}}"
)


@pytest.mark.processes
def test_a_torchrun_job_of_two_processes_reports_once_and_every_rank_stops_when_pruned(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    two = {"resources": {"processes": 2}}
    completes = client.submit(cnn_spec(1, program="train_ddp", requirements=two))
    # A threshold above which a maximized metric is pruned: every trial, at its first report.
    # Reports are not waited on, so the verdict reaches the ranks a report or two later: with
    # 3 epochs a loaded machine could finish them first; with 100 it never does unpruned.
    pruned = client.submit(
        cnn_spec(
            1,
            program="train_ddp",
            requirements=two,
            pruner={"name": "threshold", "options": {"upper": 0.0}},
            fixed={"epochs": 100},
        )
    )
    # It exits by itself after both trials, once their programs have ended.
    worker = start_worker(server, tmp_path, "ddp", "--program", DDP, "--max-trials", "2")
    try:
        assert worker.wait(timeout=120) == 0
    finally:
        stop_workers([worker])
    (done,) = client.all_trials(completes["id"])
    detail = client.trial(done["id"])
    assert detail["state"] == "completed" and detail["has_weights"]
    # Rank 0's reports only, one per epoch.
    assert reported(client, done["id"]) == [1.0, 2.0, 3.0]
    assert detail["value"] == max(m["values"]["val_macro_f1"] for m in detail["metrics"])
    (stopped,) = client.all_trials(pruned["id"])
    assert client.trial(stopped["id"])["state"] == "pruned"
    assert reported(client, stopped["id"]) == [1.0]
    logged = (tmp_path / "ddp.log").read_text()
    # Both ranks got sweep.Pruned at the same report and returned: the job ended by itself.
    assert "rank 0: pruned" in logged and "rank 1: pruned" in logged
    assert f"trial {stopped['id']}: its program ended (exit code 0)" in logged


@pytest.mark.processes
def test_a_program_whose_attempt_was_taken_over_changes_nothing(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs", env=QUICK_LEASES)
    # Slow in its first attempt only: still running when its worker wakes up.
    spec = behave_spec(["slow_first"], fixed={"steps": 60, "delay": 0.25, "quality": 0.8})
    experiment = client.submit(spec)
    frozen = start_worker(server, tmp_path, "frozen", "--program", BEHAVIOUR)
    taker = None
    try:
        trial_id = wait_until(lambda: client.trials(experiment["id"])["items"], 60, "a trial")[0][
            "id"
        ]
        wait_until(lambda: len(reported(client, trial_id)) >= 2, 60, "two reports")
        # The worker freezes (its program does not): no heartbeat, and the lease runs out.
        frozen.send_signal(signal.SIGSTOP)
        taker = start_worker(server, tmp_path, "taker", "--program", BEHAVIOUR)
        wait_until(lambda: client.trial(trial_id)["attempt"] == 2, 60, "the takeover")
        wait_until(lambda: len(reported(client, trial_id)) >= 2, 60, "the new attempt's reports")
        # Back again: everything it queued meanwhile is refused, and it ends its program.
        frozen.send_signal(signal.SIGCONT)
        ended = wait_for_end(client, experiment["id"], timeout=120)
    finally:
        frozen.send_signal(signal.SIGCONT)
        stop_workers([frozen, *([taker] if taker else [])])
    assert ended["counts"]["completed"] == 1
    trial = client.trial(trial_id)
    assert trial["attempt"] == 2 and trial["value"] == 0.8
    # One report per step, all from the second attempt.
    assert reported(client, trial_id) == [float(step) for step in range(1, 61)]
    logged = (tmp_path / "frozen.log").read_text()
    assert "no longer ours" in logged
    assert f"trial {trial_id}: its program ended (killed by SIGTERM)" in logged


@pytest.mark.processes
def test_optimize_runs_an_experiment_in_this_process(
    server: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import sweep

    calls: list[str] = []

    def train(trial: sweep.Trial) -> None:
        kind = trial.params["kind"]
        calls.append(kind)
        if kind == "boom":
            raise ValueError("no such thing")
        for epoch in range(1, 4):
            trial.report(epoch, quality=trial.params["scale"] * epoch)

    spec = program_spec(
        search_space={
            "kind": {"type": "categorical", "choices": ["fine", "boom"]},
            "scale": {"type": "categorical", "choices": [0.1, 0.2]},
        },
        objective={"metric": "quality", "direction": "maximize"},
        fixed={},
        sampler={"name": "grid", "seed": 0},
        pruner={"name": "none"},
        budget={"n_trials": 4, "max_concurrent": 2, "max_consecutive_errors": 0},
    )
    del spec["program"]  # it is named after the function
    ended = sweep.optimize(spec, train, n_workers=2, server=server.url, token=server.admin_token)
    assert ended["state"] == "completed" and ended["spec"]["program"].endswith("train")
    assert sorted(calls) == ["boom", "boom", "fine", "fine"]
    client = SweepClient(server.url, token=server.admin_token)
    request.addfinalizer(client.close)
    for trial in client.all_trials(ended["id"]):
        detail = client.trial(trial["id"])
        if trial["params"]["kind"] == "boom":
            assert detail["failure_reason"] == "error"
            assert "ValueError: no such thing" in detail["failure_message"]
        else:
            assert detail["value"] == pytest.approx(3 * trial["params"]["scale"])


LIGHTNING = "train_cnn=train_lightning:train"


@pytest.mark.processes
def test_a_lightning_program_reports_through_the_callback_and_stops_when_pruned(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    completes = client.submit(cnn_spec(1))
    pruned = client.submit(cnn_spec(1, pruner={"name": "threshold", "options": {"upper": 0.0}}))
    worker = start_worker(
        server, tmp_path, "pl", "--program", LIGHTNING, "--max-trials", "2", env=ON_PATH
    )
    try:
        assert worker.wait(timeout=180) == 0
    finally:
        stop_workers([worker])
    (done,) = client.all_trials(completes["id"])
    detail = client.trial(done["id"])
    assert detail["state"] == "completed" and detail["has_weights"], detail
    assert reported(client, done["id"]) == [1.0, 2.0, 3.0]
    assert detail["value"] == max(m["values"]["val_macro_f1"] for m in detail["metrics"])
    (stopped,) = client.all_trials(pruned["id"])
    assert client.trial(stopped["id"])["state"] == "pruned"
    assert reported(client, stopped["id"]) == [1.0]
    logged = (tmp_path / "pl.log").read_text()
    # The fit wound down and trainer.fit raised sweep.Pruned: the function ended quietly.
    assert f"trial {stopped['id']}: its program ended (exit code 0)" in logged


def test_the_local_channel_takes_messages_with_the_attempt_secret_only() -> None:
    import json
    import socket

    from sweep.worker.program_run import _Channel

    seen: list[dict[str, Any]] = []

    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        seen.append(message)
        return None if message["op"] == "report" else {"ok": True}

    def call(secret: str, message: dict[str, Any]) -> dict[str, Any] | None:
        with socket.create_connection(address) as conn, conn.makefile("rwb") as stream:
            stream.write(json.dumps({**message, "secret": secret}).encode() + b"\n")
            stream.flush()
            conn.shutdown(socket.SHUT_WR)
            line = stream.readline()
        return json.loads(line) if line else None

    with _Channel("s3cret", answer) as channel:
        host, port = channel.address.rsplit(":", 1)
        address = (host, int(port))
        injected = {"op": "report", "step": 1, "metrics": {"score": 1.0}}
        assert call("guess", injected) == {"refused": "wrong secret", "id": None}
        assert seen == []
        assert call("s3cret", {"op": "hello", "id": 1}) == {"ok": True, "id": 1}
        assert call("s3cret", injected) is None  # a report has no answer
    assert [m["op"] for m in seen] == ["hello", "report"]
