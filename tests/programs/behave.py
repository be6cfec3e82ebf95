"""A program that behaves as its --mode says, for the tests of what the worker makes of each
ending. It reports "score" as SWEEP lines on stdout, or through the SDK for modes ending in
_sdk; it needs no torch.

    python behave.py --mode=ok --steps=3 --delay=0 --quality=0.9 [--pidfile=PATH]
    sweep worker --program behave_fn=behave:train      # the function, from this directory

Its score rises from quality/2 to quality at the last step. Mode slow_first waits --delay
after each step in its first attempt only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def line_report(step: int, **metrics: float) -> None:
    print("SWEEP " + json.dumps({"step": step, **metrics}), flush=True)


def wait_to_be_ended() -> None:
    """Hang: only a signal from the worker ends this process (the SDK's SIGTERM handler lets
    one pass, so its SIGKILL follows)."""
    while True:
        signal.pause()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--quality", type=float, default=0.9)
    parser.add_argument("--pidfile", default="")
    args, _ = parser.parse_known_args()
    mode = args.mode
    if args.pidfile and mode != "hang":
        Path(f"{args.pidfile}.{os.environ['SWEEP_TRIAL_NUMBER']}").write_text(str(os.getpid()))
    report = line_report
    trial = None
    if mode.endswith("_sdk"):
        import sweep

        trial = sweep.trial()
        report = trial.report
        mode = mode.removesuffix("_sdk")

    if mode == "silent":
        line_report(1, loss=0.3)
        return 0
    if mode == "exit3":
        line_report(1, score=0.5)
        print("about to exit 3", file=sys.stderr, flush=True)
        return 3
    if mode == "raise":
        report(1, score=0.5)
        raise ValueError("bad batch")
    if mode == "nan":
        report(1, score=0.5)
        report(2, score=float("nan")) if trial else print('SWEEP {"step": 2, "score": NaN}')
        wait_to_be_ended()
        return 0
    if mode == "memory":
        report(1, score=0.5)
        bytearray(1 << 60)  # a real MemoryError
    if mode == "hang":
        grandchild = subprocess.Popen(["sleep", "300"])
        Path(args.pidfile).write_text(f"{os.getpid()} {grandchild.pid}")
        report(1, score=0.5)
        wait_to_be_ended()
    if mode == "hostile":
        sys.stdout.write("x" * (10 << 20) + "\n")
        sys.stdout.buffer.write(bytes(range(256)) * 100 + b"\n")
        for bad in (
            "SWEEP {bad",
            "SWEEP [1, 2]",
            'SWEEP {"score": "high"}',
            "SWEEP ",
            'SWEEP {"": 1}',
        ):
            print(bad)
        sys.stdout.flush()
    if mode == "ignore_term":  # a program that will not stop when asked
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "SWEEP_OUTPUT_DIR" in os.environ:  # kept with the trial
        (Path(os.environ["SWEEP_OUTPUT_DIR"]) / "plots").mkdir(exist_ok=True)
        (Path(os.environ["SWEEP_OUTPUT_DIR"]) / "plots" / "mode.txt").write_text(args.mode)
    for step in range(1, args.steps + 1):
        report(step, score=args.quality * (0.5 + 0.5 * step / args.steps))
        if trial is not None:
            trial.checkpoint({"step": step})
        if mode != "slow_first" or os.environ.get("SWEEP_ATTEMPT") == "1":
            time.sleep(args.delay)
    return 0


def train(trial: Any) -> None:
    """As a function program: `steps` steps of `delay` seconds, each reported and
    checkpointed, resumed from the last checkpoint on a later attempt."""
    steps, delay = int(trial.params["steps"]), float(trial.params["delay"])
    start = trial.restore()["step"] if trial.restore() else 0
    for step in range(start + 1, steps + 1):
        time.sleep(delay)
        trial.report(step, score=float(trial.params["quality"]) * (0.5 + 0.5 * step / steps))
        trial.checkpoint({"step": step})


if __name__ == "__main__":
    sys.exit(main())
