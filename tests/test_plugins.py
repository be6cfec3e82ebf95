"""A plugin package (examples/plugin) adds a model and a dataset through entry points. It is
installed into a directory of its own that only the processes given it see: the server and
one worker have it, another worker does not, and trials go only where they can run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import budget, wait_for_end
from tests.processes import serve, start_worker, stop_workers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target = tmp_path_factory.mktemp("plugin")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "plugin"),
        ],
        check=True,
    )
    yield str(target)


def test_the_plugin_joins_the_catalog_where_it_is_installed(plugin_path: str) -> None:
    code = (
        "from sweep.models import catalog, registry\n"
        "from sweep.models.datasets import load_dataset\n"
        "assert 'residual_mlp' in catalog.models() and 'moons' in catalog.datasets()\n"
        "assert catalog.models()['residual_mlp'].hyperparameters['width'].default == 64\n"
        "data = load_dataset('moons')\n"
        "hp = catalog.resolve_hyperparameters('residual_mlp', {'blocks': 3})\n"
        "model = registry.build_model('residual_mlp', data.input_shape, data.n_outputs, hp)\n"
        "assert len(model) == 7  # flatten, linear, 3 blocks, relu, linear\n"
        "assert data.n_outputs == 2\n"
        # A model trained on it loads ready to predict the plugin's labels on raw samples.
        "import torch\n"
        "from sweep.models import bundle\n"
        "from sweep.worker.train import TrialConfig, to_device, train_trial\n"
        "spec = {'name': 'moons', 'val_fraction': 0.2, 'split_seed': 0}\n"
        "hp = catalog.resolve_hyperparameters('residual_mlp', {'epochs': 3, 'width': 16})\n"
        "config = TrialConfig('residual_mlp', spec, hp, 'val_accuracy', 'maximize', 'best', 0)\n"
        "cpu = torch.device('cpu')\n"
        "result = train_trial(config, to_device(data, cpu), cpu, lambda e, m: None)\n"
        "raw = load_dataset('moons', standardize=False)\n"
        "labels = bundle.load(result.model).predict(raw.X_val)\n"
        "assert set(labels) <= {'upper', 'lower'}, labels\n"
        "truth = [('upper', 'lower')[i] for i in raw.y_val]\n"
        "assert abs((labels == truth).mean() - result.value) < 1e-6, result\n"
    )
    env = {**os.environ, "PYTHONPATH": plugin_path}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


@pytest.mark.processes
def test_plugin_trials_go_to_workers_that_have_the_plugin(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path, plugin_path: str
) -> None:
    logs = tmp_path / "logs"
    with_plugin = {"PYTHONPATH": plugin_path}
    server, client = serve(request, sqlite_url, logs, env=with_plugin)
    spec = {
        "name": "moons",
        "model": "residual_mlp",
        "dataset": "moons",
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "search_space": {
            "width": {"type": "int", "low": 8, "high": 64, "log": True},
            "blocks": {"type": "int", "low": 1, "high": 3},
        },
        "fixed": {"epochs": 3},
        "budget": budget(3, 2),
    }
    experiment_id = client.submit(spec)["id"]
    plain = start_worker(server, logs, "plain", "--exit-when-idle", "60")
    workers = [plain]
    try:
        deadline = time.monotonic() + 30
        waiting = (None, "no worker is live")
        while (why := client.experiment(experiment_id)["waiting_for"]) in waiting:
            assert time.monotonic() < deadline, "the plain worker never registered"
            time.sleep(0.2)
        assert "lacks the plugin model 'residual_mlp'" in why
        assert client.experiment(experiment_id)["trials_created"] == 0
        workers.append(
            start_worker(server, logs, "extended", "--exit-when-idle", "60", env=with_plugin)
        )
        done = wait_for_end(client, experiment_id, timeout=120)
    finally:
        stop_workers(workers)
    assert done["state"] == "completed" and done["counts"]["completed"] == 3
    ran = {t["worker_id"] for t in client.trials(experiment_id)["items"]}
    names = {w["id"]: w["name"] for w in client.workers()}
    assert {names[w] for w in ran} == {"extended"}
    assert done["best_value"] > 0.8  # two moons are easy


def test_a_plugin_importing_sweep_models_does_not_break_a_server_start(tmp_path: Path) -> None:
    # Its declarations import the public surface and the catalog while entry points load.
    (tmp_path / "wide_plugin.py").write_text(
        "from sweep.models import Hyperparameter, ModelPlugin\n"
        "from sweep.models.catalog import resolve_hyperparameters\n"
        "import sweep.models.plugins\n"
        "WIDE = ModelPlugin(\n"
        "    build='wide_plugin:build',\n"
        "    hyperparameters={'width': Hyperparameter('int', 8, low=1, high=64)},\n"
        ")\n"
    )
    dist = tmp_path / "wide_plugin-1.0.dist-info"  # what an installed package leaves
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wide-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sweep.models]\nwide = wide_plugin:WIDE\n")
    code = (
        "from fastapi.testclient import TestClient\n"
        "from sweep.service.app import create_app\n"
        "from sweep.service.config import Settings\n"
        f"settings = Settings(database_url='sqlite:///{tmp_path / 'sweep.db'}', auth=False)\n"
        "spec = {'name': 'w', 'model': 'wide', 'dataset': 'iris',\n"
        "        'objective': {'metric': 'val_accuracy', 'direction': 'maximize'},\n"
        "        'search_space': {'width': {'type': 'int', 'low': 2, 'high': 32}},\n"
        "        'budget': {'n_trials': 2}}\n"
        "with TestClient(create_app(settings)) as client:\n"
        "    response = client.post('/api/v1/experiments', json=spec)\n"
        "    assert response.status_code == 201, response.text\n"
        "    assert response.json()['spec']['model'] == 'wide'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
