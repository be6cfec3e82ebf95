"""Architecture rules: the service never loads torch, one module imports optuna, and the
worker reaches the service only over HTTP."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def importers(package: str, module_prefix: str) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for path in (ROOT / package).rglob("*.py")
        if any(
            m == module_prefix or m.startswith(module_prefix + ".") for m in imported_modules(path)
        )
    }


def test_service_runs_without_torch() -> None:
    code = (
        "import sys\n"
        "import service.app, service.cli, service.demo\n"
        "service.app.create_app()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_only_the_optuna_adapters_import_optuna() -> None:
    # On the server: suggestions and pruning, plots, the study export. On the user's side, the
    # client and CLI build and read Optuna studies (to_optuna_study, export, import).
    assert importers("service", "optuna") == {
        "service/optimizer.py",
        "service/search.py",
        "service/plots.py",
        "service/interop.py",
        "service/client.py",
        "service/cli.py",
    }


def test_worker_talks_to_the_service_only_over_http() -> None:
    # The one module they share is the logging setup, which needs nothing but the stdlib.
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not [a for a in node.names if a.name.split(".")[0] == "service"], path
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service"):
                assert (node.module, [a.name for a in node.names]) == ("service", ["logs"]), path
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert {m.split(".")[0] for m in imported_modules(ROOT / "service" / "logs.py")} <= stdlib
    assert importers("models", "service") == set()
    assert importers("worker", "sqlalchemy") == set()


def test_the_catalog_needs_no_training_stack() -> None:
    # models (for models.plugins, which finds plugin declarations by their entry points)
    assert imported_modules(ROOT / "models" / "catalog.py") <= {
        "__future__",
        "dataclasses",
        "typing",
        "models",
    }
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert {m.split(".")[0] for m in imported_modules(ROOT / "models" / "plugins.py")} <= stdlib | {
        "models"
    }


def test_torch_stays_in_the_worker_and_models() -> None:
    assert importers("service", "torch") == set()
    # The CLI starts workers, importing them lazily inside the `sweep worker` command.
    assert importers("service", "worker") == {"service/cli.py"}
