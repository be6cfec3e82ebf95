"""Programs a worker runs: the user's own training code, registered on the worker (never in a
spec), each trial in its own process group.

Two kinds, registered as NAME=VALUE with `sweep worker --program` or as entry points in the
"sweep.programs" group:

- a function, `mypkg.train:main`, called as `main(trial)` in a new process;
- a command, `python train.py {args}`, split like a shell would but never run by one: a
  parameter's value is one argument whatever it holds.

Placeholders in a command: {args} (--name=value for every parameter, as separate
arguments), {args_json}, {args_json_file}, {processes}, {trial_id}, {number}, {attempt},
{checkpoint_dir}, {output_dir}, {python} (this interpreter); {{ and }} are literal braces.
"""

from __future__ import annotations

import json
import re
import shlex
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

ENTRY_POINTS = "sweep.programs"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
PLACEHOLDERS = (
    "args",
    "args_json",
    "args_json_file",
    "processes",
    "trial_id",
    "number",
    "attempt",
    "checkpoint_dir",
    "output_dir",
    "python",
)


class ProgramError(ValueError):
    """A program registration that cannot work, named with what is wrong."""


@dataclass(frozen=True)
class Program:
    name: str
    function: str | None = None  # module:function
    command: tuple[str, ...] = ()  # the command's template, split into arguments
    # A function called in the worker's own process (sweep.optimize): no process of its own.
    call: Callable[[Any], Any] | None = None

    def argv(self, values: Attempt) -> list[str]:
        """The process to start for one attempt."""
        if self.function is not None:
            return [sys.executable, "-m", "sweep.run_function", self.function]
        fields = values.fields()
        argv: list[str] = []
        for part in self.command:
            if part == "{args}":
                argv += values.flags()
            else:
                argv.append(part.format_map(fields))
        return argv


@dataclass(frozen=True)
class Attempt:
    """What a program's placeholders and environment say about the attempt it runs."""

    trial_id: int
    number: int
    attempt: int
    config: dict[str, Any]
    processes: int
    checkpoint_dir: Path
    output_dir: Path
    params_file: Path

    def flags(self) -> list[str]:
        return [f"--{name}={value}" for name, value in self.config.items()]

    def fields(self) -> dict[str, str]:
        return {
            "args": " ".join(shlex.quote(flag) for flag in self.flags()),
            "args_json": json.dumps(self.config),
            "args_json_file": str(self.params_file),
            "processes": str(self.processes),
            "trial_id": str(self.trial_id),
            "number": str(self.number),
            "attempt": str(self.attempt),
            "checkpoint_dir": str(self.checkpoint_dir),
            "output_dir": str(self.output_dir),
            "python": sys.executable,
        }


def parse(option: str) -> Program:
    """NAME=module:function or NAME=command, as given to --program."""
    name, equals, value = option.partition("=")
    if not equals or not value.strip():
        raise ProgramError(f"--program {option!r}: give NAME=module:function or NAME='command'")
    return make(name.strip(), value.strip())


def make(name: str, value: str) -> Program:
    if not NAME.match(name):
        raise ProgramError(
            f"program name {name!r}: use 1-64 letters, digits and _ . - (a spec names it)"
        )
    if FUNCTION.match(value):
        return Program(name, function=value)
    try:
        command = tuple(shlex.split(value))
    except ValueError as exc:
        raise ProgramError(f"program {name!r}: cannot split {value!r}: {exc}") from exc
    for part in command:
        for _, field, _, _ in string.Formatter().parse(part):
            if field is not None and field not in PLACEHOLDERS:
                raise ProgramError(
                    f"program {name!r}: unknown placeholder {{{field}}}; "
                    f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )
    return Program(name, command=command)


def installed(options: list[str] | tuple[str, ...] = ()) -> dict[str, Program]:
    """The programs of the sweep.programs entry points, then those of --program (which win)."""
    found: dict[str, Program] = {}
    for point in entry_points(group=ENTRY_POINTS):
        found[point.name] = make(point.name, point.value)
    for option in options:
        program = parse(option)
        found[program.name] = program
    return found
