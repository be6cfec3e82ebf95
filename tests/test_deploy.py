"""The deployment files (compose, Dockerfiles, Kubernetes, SLURM) say only what the CLI and the
settings understand. No container engine runs here: each file is parsed, and every `sweep`
command in it is parsed by the CLI itself, flags, arguments and types included."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from sweep.cli import app
from sweep.service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CLI = typer.main.get_command(app)


def subcommands(command: Any) -> dict[str, Any]:
    """A group's commands (typer carries its own copy of click: no isinstance checks)."""
    return dict(getattr(command, "commands", {}))


def cli_envvars() -> set[str]:
    found: set[str] = set()

    def walk(command: Any) -> None:
        for param in command.params:
            names = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            found.update(n for n in names if n)
        for sub in subcommands(command).values():
            walk(sub)

    walk(CLI)
    return found


KNOWN_ENV = {f"SWEEP_{name.upper()}" for name in Settings.model_fields} | cli_envvars()


def check_sweep_command(words: list[str], where: str) -> None:
    """Parse `sweep ...` as the CLI would (shell variables stand for 1)."""
    words = [re.sub(r"\$\{?\w+\}?", "1", w) for w in words]
    assert words[0] == "sweep", where
    command: Any = CLI
    args = words[1:]
    while subcommands(command):
        assert args and args[0] in subcommands(command), f"{where}: no command {args[:1]}"
        command, args = subcommands(command)[args[0]], args[1:]
    try:
        command.make_context(f"sweep {command.name}", list(args))
    except Exception as exc:  # click's UsageError, from typer's copy of click
        if not hasattr(exc, "format_message"):
            raise
        pytest.fail(f"{where}: {' '.join(words)}: {exc.format_message()}")


def check_command(command: list[str], where: str) -> int:
    """A container command: `sweep ...`, or `sh -c "a && exec b"`; returns sweep commands seen."""
    if command[:2] == ["sh", "-c"]:
        seen = 0
        for part in command[2].split("&&"):
            words = shlex.split(part)
            seen += check_command(words[1:] if words[0] == "exec" else words, where)
        return seen
    if command and command[0] == "sweep":
        check_sweep_command(command, where)
        return 1
    return 0


def check_env(names: set[str], where: str) -> None:
    unknown = {n for n in names if n.startswith("SWEEP_")} - KNOWN_ENV
    assert not unknown, f"{where} sets {unknown}, which nothing reads"


def dockerfile_cmd(path: Path) -> list[str]:
    [line] = [line for line in path.read_text().splitlines() if line.startswith("CMD ")]
    return list(json.loads(line.removeprefix("CMD ")))


def test_compose_runs_postgres_a_torch_free_server_and_gpu_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    db, server, worker = (compose["services"][s] for s in ("db", "server", "worker"))
    assert "healthcheck" in db and any("pgdata" in v for v in db["volumes"])
    assert server["depends_on"]["db"]["condition"] == "service_healthy"
    gpus = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["driver"] == "nvidia" and gpus[0]["capabilities"] == ["gpu"]
    assert "replicas" not in worker["deploy"] and "container_name" not in worker  # --scale
    seen = 0
    for name, service in compose["services"].items():
        if "command" in service:
            seen += check_command(service["command"], f"compose {name}")
        check_env(set(service.get("environment", {})), f"compose {name}")
    assert seen == 3  # migrate, server, worker

    server_image = (ROOT / server["build"]["dockerfile"]).read_text()
    installs = [line for line in server_image.splitlines() if "pip install" in line]
    assert installs and not any("worker" in line or "torch" in line for line in installs)
    worker_image = (ROOT / worker["build"]["dockerfile"]).read_text()
    assert any('".[worker]"' in line for line in worker_image.splitlines())
    for image in ("Dockerfile.server", "Dockerfile.worker"):
        assert check_command(dockerfile_cmd(DEPLOY / image), image) >= 1
        copied = {
            line.split()[1]
            for line in (DEPLOY / image).read_text().splitlines()
            if line.startswith("COPY ")
        }
        # The package and the folders its links point to.
        assert {"sweep", "service", "worker", "models"} <= copied, image


def k8s_documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]


def test_kubernetes_manifests_run_the_cli_with_the_secret_they_define() -> None:
    documents = k8s_documents()
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    secret = by_kind[("Secret", "sweep")]["stringData"]
    seen = 0
    for (kind, name), doc in by_kind.items():
        if kind != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            seen += check_command(container["command"] + container.get("args", []), name)
            env = container.get("env", [])
            check_env({e["name"] for e in env}, name)
            for e in env:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "sweep" and ref["key"] in secret, (name, ref)
    assert seen == 3  # migrate, server, worker
    worker = by_kind[("Deployment", "sweep-worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    service = by_kind[("Service", "sweep")]["spec"]
    server = by_kind[("Deployment", "sweep-server")]["spec"]["template"]["spec"]["containers"][0]
    assert service["ports"][0]["targetPort"] == server["ports"][0]["containerPort"]
    assert (
        service["selector"]
        == by_kind[("Deployment", "sweep-server")]["spec"]["selector"]["matchLabels"]
    )


def test_the_slurm_array_runs_one_worker_per_gpu() -> None:
    script = (DEPLOY / "slurm" / "sweep-worker.sbatch").read_text()
    assert "#SBATCH --gres=gpu:1" in script and "--array" in script
    joined = script.replace("\\\n", " ")
    [line] = [line for line in joined.splitlines() if line.startswith("srun ")]
    words = shlex.split(line)
    check_sweep_command(words[words.index("sweep") :], "sweep-worker.sbatch")
    names = set(re.findall(r"export (SWEEP_\w+)=", script))
    names |= set(re.findall(r"\$\{(SWEEP_\w+):\?", script))
    assert names >= {"SWEEP_SERVER", "SWEEP_TOKEN"}
    check_env(names, "sweep-worker.sbatch")


def test_the_checks_catch_a_wrong_flag() -> None:
    with pytest.raises(pytest.fail.Exception, match="No such option"):
        check_sweep_command(["sweep", "worker", "--gpu-count", "2"], "example")
    with pytest.raises(AssertionError, match="nothing reads"):
        check_env({"SWEEP_DATABASE"}, "example")
