"""What asking ahead costs in search quality: TPE with each suggestion asked one claim early
against TPE asked at each claim, on the same objective and seeds, at a large history.

    .venv/bin/python benchmarks/ask_ahead_quality.py [--trials 1300] [--ahead-after 1000]
        [--seeds 0 1 2 3 4]

One sequential worker, plain Optuna (TPE, 5 parameters: claim_latency.py's search space), a
deterministic objective with its optimum inside the space. Both runs share their first
--ahead-after trials exactly; after that, the "ahead" run asks trial n while trial n - 1 still
runs (what SWEEP_ASK_AHEAD_AFTER does to one worker), the other asks it after n - 1 finished.
Printed per seed: the best value after all trials and the mean of the trials past
--ahead-after, for both (higher is better), and their difference; the same over the seeds.
The sampler is reseeded with seed + trial number before each ask, as the service does.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.claim_latency import DISTRIBUTIONS
from sweep.service.search.optimizer import reseed


def objective(params: dict[str, Any]) -> float:
    """Best at lr 1e-2, batch 64, adam, dropout 0.2, 128 hidden units; 1.0 at the optimum."""
    value = 1.0 - 0.1 * (math.log10(params["lr"]) + 2) ** 2
    value -= 0.4 * (params["dropout"] - 0.2) ** 2
    value -= 0.05 * abs(math.log2(params["batch_size"] / 64))
    value -= 0.0 if params["optimizer"] == "adam" else 0.05
    value -= 0.1 * (math.log2(params["hidden_units"] / 128)) ** 2
    return value


def sweep(seed: int, trials: int, ahead_after: int | None) -> list[float]:
    """Values of `trials` sequential trials; from `ahead_after` on, each asked one trial
    early (None: never)."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler())

    def ask(number: int) -> tuple[optuna.Trial, float]:
        reseed(study.sampler, seed + number)
        trial = study.ask(DISTRIBUTIONS)
        return trial, objective(trial.params)

    values: list[float] = []
    running: tuple[optuna.Trial, float] | None = None
    for number in range(trials):
        if ahead_after is not None and number >= ahead_after and running is not None:
            following = ask(number)  # asked while the one before still runs
            study.tell(*running)
            values.append(running[1])
            running = following
            continue
        if running is not None:
            study.tell(*running)
            values.append(running[1])
        running = ask(number)
    assert running is not None
    study.tell(*running)
    values.append(running[1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=1300)
    parser.add_argument("--ahead-after", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cut = args.ahead_after
    print(
        f"TPE, {args.trials} sequential trials; asked ahead from trial {cut} on\n"
        f"{'seed':>4} {'best':>9} {'best ahead':>11} {'mean past':>10} {'ahead':>9} "
        f"{'difference':>11}",
        flush=True,
    )
    gaps = []
    for seed in args.seeds:
        plain, ahead = sweep(seed, args.trials, None), sweep(seed, args.trials, cut)
        assert plain[:cut] == ahead[:cut]  # the same start
        late, late_ahead = statistics.mean(plain[cut:]), statistics.mean(ahead[cut:])
        gaps.append(late_ahead - late)
        print(
            f"{seed:>4} {max(plain):>9.5f} {max(ahead):>11.5f} {late:>10.5f} {late_ahead:>9.5f} "
            f"{late_ahead - late:>+11.5f}",
            flush=True,
        )
    print(
        f"mean difference past trial {cut}: {statistics.mean(gaps):+.5f} "
        f"(seeds' spread {min(gaps):+.5f} .. {max(gaps):+.5f})"
    )


if __name__ == "__main__":
    main()
