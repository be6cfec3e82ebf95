"""Runs a function program, `def train(trial: sweep.Trial) -> None`, as its own process:

    python -m sweep.run_function mypkg.train:main

The worker starts one per trial, so a crash, a leak or a segfault ends that trial only.
Pruned and Stopped end the process quietly (the worker knows why); any other exception is
printed and exits 1.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

from sweep import sdk


def resolve(target: str) -> Callable[[sdk.Trial], Any]:
    """`package.module:function` (attributes may be dotted: `module:Class.method`)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{target!r} is not module:function")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"{target} is not a function")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sweep.run_function module:function", file=sys.stderr)
        return 2
    sys.path.insert(0, "")  # the worker's directory, as `python -m` has it
    function = resolve(argv[0])
    trial = sdk.trial()
    try:
        function(trial)
    except (sdk.Pruned, sdk.Stopped):
        return 0
    except BaseException as error:  # every failure is the trial's: told, shown, exit 1
        if isinstance(error, SystemExit):
            return error.code if isinstance(error.code, int) else 1
        trial._failed(error)
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
