"""The shapes CNN as a function program: the worker calls `train(trial)` in a new process
for every trial.

    sweep worker --program train_cnn=train_fn:train      # from this directory

or, installed with your package, as an entry point:

    [project.entry-points."sweep.programs"]
    train_cnn = "mypkg.train_fn:train"
"""

from __future__ import annotations

from shapes import Training

import sweep


def train(trial: sweep.Trial) -> None:
    run = Training(trial.params)
    start = run.load(state) if (state := trial.restore()) else 0
    for epoch in range(start + 1, run.epochs + 1):
        loss, f1 = run.epoch()
        trial.report(epoch, train_loss=loss, val_macro_f1=f1)  # raises sweep.Pruned
        trial.checkpoint(run.state(epoch))
    trial.save_model(run.model.state_dict())
