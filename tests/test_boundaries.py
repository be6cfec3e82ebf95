"""Architecture rules: one import name, the service never loads torch, one package imports
optuna, and the worker reaches the service only over HTTP."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from mypy import api as mypy

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "worker", "models")  # the repository's folders, sweep.* when imported


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def importers(folder: str, module_prefix: str) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for path in (ROOT / folder).rglob("*.py")
        if any(
            m == module_prefix or m.startswith(module_prefix + ".") for m in imported_modules(path)
        )
    }


def python_files() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in tracked]


def assert_loads_none(code: str, packages: tuple[str, ...]) -> None:
    """Run `code` in a new interpreter; none of `packages` may have been imported after it."""
    check = f"import sys\n{code}\n" + (
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {packages!r})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, cwd=ROOT)


def test_nothing_imports_the_folders_by_their_own_names() -> None:
    # `import models` would load a module a second time beside sweep.models, or a user's.
    offending = {
        (str(path.relative_to(ROOT)), module)
        for path in python_files()
        for module in imported_modules(path)
        if module.split(".")[0] in PACKAGES
    }
    assert offending == set()


def test_the_app_loads_each_module_once_under_its_sweep_name() -> None:
    code = (
        "import sweep.cli, sweep.demo, sweep.service.app, sweep.worker.loop\n"
        "sweep.service.app.create_app()"
    )
    assert_loads_none(code, PACKAGES)


def test_mypy_sees_into_each_package(tmp_path: Path) -> None:
    # Were sweep.* imports unresolved, their names would be Any and these errors unseen.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from sweep.models.plugins import ModelPlugin\n"
        "from sweep.service.states import TrialState\n"
        "from sweep.worker.client import OUTPUT_LIMIT\n"
        "a: int = TrialState.RUNNING\n"
        "b: str = OUTPUT_LIMIT\n"
        'c: int = ModelPlugin(build="pkg:build").build\n'
    )
    config, cache = str(ROOT / "pyproject.toml"), str(ROOT / ".mypy_cache")
    out, _, status = mypy.run(["--config-file", config, "--cache-dir", cache, str(probe)])
    assert status == 1, out
    assert out.count("Incompatible types in assignment") == 3, out


def test_the_service_runs_without_torch() -> None:
    code = "import sweep, sweep.cli, sweep.demo, sweep.service.app\nsweep.service.app.create_app()"
    assert_loads_none(code, ("torch", "sklearn"))


def test_the_client_needs_neither_torch_nor_the_server() -> None:
    server = ("torch", "fastapi", "starlette", "sqlalchemy", "uvicorn", "optuna", "pydantic")
    assert_loads_none("from sweep import SweepClient", server)


def test_a_program_that_reports_loads_nothing_but_the_sdk() -> None:
    heavy = ("torch", "numpy", "httpx", "yaml", "fastapi", "sqlalchemy", "optuna", "pydantic")
    assert_loads_none("import sweep\nsweep.trial().report(1, loss=0.5)", heavy)


def test_only_the_search_package_imports_optuna() -> None:
    # On the server: samplers, pruners, suggestions, plots, the study export. On the user's
    # side, the client and CLI build and read Optuna studies (to_optuna_study, export, import).
    found = importers("service", "optuna")
    assert found and all(path.startswith("service/search/") for path in found), found
    assert importers("sweep", "optuna") == {"sweep/client.py", "sweep/cli.py"}


def test_worker_talks_to_the_service_only_over_http() -> None:
    # The modules they share are the logging setup and the SDK (whose protocol the worker
    # speaks with its programs), which need nothing but the stdlib.
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not [a for a in node.names if a.name.startswith("sweep.service")], path
            elif isinstance(node, ast.ImportFrom) and node.module == "sweep":
                assert [a.name for a in node.names] in (["logs"], ["cli"], ["sdk"]), path
            elif isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("sweep.service"), path
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert {m.split(".")[0] for m in imported_modules(ROOT / "sweep" / "logs.py")} <= stdlib
    # The SDK imports torch only to save or load an object, or in a distributed job.
    sdk = {m.split(".")[0] for m in imported_modules(ROOT / "sweep" / "sdk.py")}
    assert sdk <= stdlib | {"torch"}
    assert importers("models", "sweep.service") == set()
    assert importers("worker", "sqlalchemy") == set()


def test_the_catalog_needs_no_training_stack() -> None:
    # The declarations (catalog, plugins, each bundled model's) import no torch or numpy...
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    declarations = ["__init__.py", "catalog.py", "plugins.py", "mlp/__init__.py", "cnn/__init__.py"]
    for name in declarations:
        found = {m.split(".")[0] for m in imported_modules(ROOT / "models" / name)}
        assert found <= stdlib | {"sweep"}, name
    # ...and building the whole catalog loads none of the training stack either.
    code = (
        "from sweep.models import catalog\n"
        "assert {'mlp', 'cnn'} <= set(catalog.models()) and 'digits' in catalog.datasets()"
    )
    assert_loads_none(code, ("torch", "sklearn", "numpy"))


def test_torch_stays_in_the_worker_and_models() -> None:
    assert importers("service", "torch") == set()
    # The CLI starts workers, importing them lazily inside the `sweep worker` command, and
    # sweep.optimize runs them inside its call.
    assert importers("service", "sweep.worker") == set()
    assert importers("sweep", "sweep.worker") == {"sweep/cli.py", "sweep/optimize.py"}
