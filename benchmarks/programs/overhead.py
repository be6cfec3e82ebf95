"""The program benchmarks/program_overhead.py times, alone and under Sweep: `epochs` epochs of
a fixed amount of numpy work, each followed by a report (--report=1) or not. It writes how
long its loop took to --result (JSON), and prints when its first step ended.

Usable as a command (`python overhead.py {args}`) and as a function (`overhead:train`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def epoch(work: int) -> float:
    a = np.random.default_rng(0).standard_normal((120, 120))
    for _ in range(work):
        a = np.tanh(a @ a.T / 120)
    return float(a.mean())


def run(params: dict[str, Any], report: Any) -> None:
    started = time.perf_counter()
    first = None
    reporting = 0.0  # seconds spent inside report()
    for step in range(1, int(params["epochs"]) + 1):
        value = epoch(int(params["work"]))
        if int(params["report"]):
            before = time.perf_counter()
            report(step, score=value + step, loss=1.0 / step)
            reporting += time.perf_counter() - before
        if first is None:
            first = time.time()
    loop = time.perf_counter() - started
    if params.get("result"):
        # Under Sweep, one file per trial.
        suffix = f".{os.environ['SWEEP_TRIAL_ID']}" if "SWEEP_TRIAL_ID" in os.environ else ""
        path = Path(f"{params['result']}{suffix}")
        path.write_text(json.dumps({"loop": loop, "first_step": first, "reporting": reporting}))


def train(trial: Any) -> None:
    run(trial.params, trial.report)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("epochs", "work", "report"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--result", default="")
    parser.add_argument("--sdk", type=int, default=1)
    args, _ = parser.parse_known_args()
    params = vars(args)
    if args.sdk:
        import sweep

        report = sweep.trial().report
    else:

        def report(step: int, **metrics: float) -> None:
            print("SWEEP " + json.dumps({"step": step, **metrics}), flush=True)

    run(params, report)


if __name__ == "__main__":
    main()
