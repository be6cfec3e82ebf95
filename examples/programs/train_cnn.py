"""Train the shapes CNN with its own loop: a plain argparse script. Run it alone,

    python train_cnn.py --lr=0.01 --focal_gamma=2 --augment=shift

or let Sweep run it:

    sweep worker --program train_cnn='python train_cnn.py {args}'

The lines marked "Sweep" are all it takes: the trial (its params arrive as the arguments),
a report per epoch (which raises sweep.Pruned when the service prunes), and a checkpoint
to resume from when the attempt dies.
"""

from __future__ import annotations

import argparse

from shapes import Training

import sweep  # Sweep


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--focal_gamma", type=float, default=2.0)
    parser.add_argument("--augment", choices=["none", "shift", "flip", "noise"], default="none")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args, _ = parser.parse_known_args()

    trial = sweep.trial()  # Sweep
    run = Training(vars(args))
    start = run.load(state) if (state := trial.restore()) else 0  # Sweep: resume
    for epoch in range(start + 1, run.epochs + 1):
        loss, f1 = run.epoch()
        print(f"epoch {epoch}: train_loss {loss:.4f} val_macro_f1 {f1:.4f}")
        trial.report(epoch, train_loss=loss, val_macro_f1=f1)  # Sweep
        trial.checkpoint(run.state(epoch))  # Sweep: resume
    trial.save_model(run.model.state_dict())


if __name__ == "__main__":
    main()
