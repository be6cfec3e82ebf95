"""Sweep as a user installs it: the wheel holds the `sweep` package only, runs its demo in an
empty directory, and sweeps normally from a project that has its own `models`, `service` and
`worker` packages, beside another installed wheel with a top-level `models` package.

The wheel goes into a new virtual environment with `pip install --no-deps`; the packages it
depends on come from this test environment's site-packages (a path file), so nothing is
downloaded and no copy of Sweep other than the wheel's is importable there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.processes

# Imported, any of these would say so: Sweep must only ever import sweep.*.
FOREIGN = 'raise ImportError("the {owner} package {name!r} was imported, not Sweep\'s")\n'


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def build_wheel(source: Path, out: Path) -> Path:
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(source))
    return next(out.glob(f"{source.name}-*.whl"))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sweep's wheel, built from a copy of the checkout (links kept), and another project's
    wheel whose top-level package is `models`."""
    build = tmp_path_factory.mktemp("wheels")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    source = build / "sweep"
    for name in files:
        origin, copy = ROOT / name, source / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            copy.symlink_to(os.readlink(origin))
        elif origin.is_file():
            shutil.copy2(origin, copy)
    other = build / "othermodels"
    (other / "models").mkdir(parents=True)
    (other / "models" / "__init__.py").write_text(FOREIGN.format(owner="other", name="models"))
    (other / "pyproject.toml").write_text(
        '[project]\nname = "othermodels"\nversion = "1.0"\n'
        '[tool.setuptools]\npackages = ["models"]\n'
    )
    dist = build / "dist"
    return {"sweep": build_wheel(source, dist), "other": build_wheel(other, dist)}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Path:
    """A new virtual environment with both wheels installed; its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies, not Sweep: the path of a directory listed in a .pth file is added to
    # sys.path, but the .pth files in it (such as an editable install's) are not read.
    (Path(purelib) / "sweep_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip("--python", str(python), "install", "--no-deps", str(wheels["sweep"]), str(wheels["other"]))
    return root / "bin"


def clean_env(bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_")}
    env.pop("PYTHONPATH", None)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


def run_demo(bin_dir: Path, where: Path, *args: str) -> str:
    """`sweep demo ARGS` run in `where` by the venv's own command; what it printed and logged."""
    demo = subprocess.run(
        [str(bin_dir / "sweep"), "demo", *args],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=240,
        env=clean_env(bin_dir),
    )
    logs = "".join(p.read_text() for p in (where / "sweep-demo").glob("*.log"))
    assert demo.returncode == 0, demo.stdout + demo.stderr + logs
    assert list((where / "sweep-demo").glob("best-trial-*.pt"))
    return demo.stdout + logs


def test_the_wheel_holds_the_sweep_package_only(wheels: dict[str, Path]) -> None:
    names = zipfile.ZipFile(wheels["sweep"]).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"sweep", "sweep-0.1.0.dist-info"}
    for shipped in (
        "sweep/examples/digits-mlp.yaml",
        "sweep/spec_template.yaml",
        "sweep/program_template.yaml",
        "sweep/run_function.py",
        "sweep/service/migrations/env.py",
        "sweep/service/migrations/versions/0001_initial_tables.py",
        "sweep/service/web/static/index.html",
        "sweep/worker/__main__.py",
        "sweep/models/catalog.py",
    ):
        assert shipped in names
    entry_points = zipfile.ZipFile(wheels["sweep"]).read("sweep-0.1.0.dist-info/entry_points.txt")
    assert b"sweep = sweep.cli:run" in entry_points


def test_the_demo_runs_from_the_wheel_in_an_empty_directory(tmp_path: Path, venv: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [str(venv / "python"), "-c", "import sweep; print(sweep.__file__)"],
        cwd=empty,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(venv),
    ).stdout
    assert where.startswith(str(venv.parent)) and str(ROOT) not in where
    assert "best trial" in run_demo(venv, empty, "--trials", "2", "--workers", "1")


def test_a_project_with_packages_named_like_sweeps_sweeps_normally(
    tmp_path: Path, venv: Path
) -> None:
    project = tmp_path / "project"
    for name in ("models", "service", "worker"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(FOREIGN.format(owner="user's", name=name))
    (project / "models" / "datasets.py").write_text("def load_dataset(): ...\n")
    # The demo runs its server and a pool of two worker processes from this directory, which
    # `python -m` puts first on their path.
    said = run_demo(venv, project, "--trials", "4", "--workers", "2")
    assert "was imported, not Sweep's" not in said
    assert "starting it again" not in said  # no process of the pool died


def test_an_editable_install_ignores_the_projects_packages_too(tmp_path: Path) -> None:
    for name in ("models", "service", "worker"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(FOREIGN.format(owner="user's", name=name))
    code = (
        "import sweep.models.datasets, sweep.models.registry, sweep.service.app\n"
        "sweep.service.app.create_app()\n"
        "assert sweep.models.datasets.load_dataset('iris').n_outputs == 3\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, env=env)
    worker = subprocess.run(
        [sys.executable, "-m", "sweep.worker", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert worker.returncode == 0 and "--exit-when-idle" in worker.stdout, worker.stderr
