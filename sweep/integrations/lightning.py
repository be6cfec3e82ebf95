"""PyTorch Lightning: a callback that reports what the LightningModule logs, checkpoints with
the trainer, and ends the fit when the service prunes or stops the trial.

    from sweep.integrations.lightning import SweepCallback

    def train(trial: sweep.Trial) -> None:
        callback = SweepCallback(trial)
        trainer = L.Trainer(max_epochs=10, callbacks=[callback], enable_checkpointing=False)
        trainer.fit(model, data, ckpt_path=callback.resume_from())

Each validation's logged scalars (`self.log("val_f1", ...)`) are reported at step = epoch.
A prune or stop sets `trainer.should_stop` (every rank of a DDP job agrees) and, once the fit
has wound down, raises sweep.Pruned or sweep.Stopped from `trainer.fit`.

Works with the `lightning` package (lightning.pytorch) or `pytorch_lightning`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sweep
from sweep.sdk import Pruned, Stopped

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:
    from pytorch_lightning import Callback, LightningModule, Trainer

CHECKPOINT = "lightning.ckpt"


class SweepCallback(Callback):
    def __init__(
        self,
        trial: sweep.Trial | None = None,
        metrics: list[str] | None = None,
        checkpoint: bool = True,
    ) -> None:
        """`metrics`: the logged names to report (default: every scalar); `checkpoint`: save
        the trainer's state after each report, for a retried attempt to resume from."""
        super().__init__()
        self.trial = trial or sweep.trial()
        self.metrics = metrics
        self.checkpoint = checkpoint
        self.ended: Pruned | Stopped | None = None

    def resume_from(self) -> str | None:
        """The checkpoint an earlier attempt left, for `trainer.fit(..., ckpt_path=...)`."""
        restored = self.trial.restore()
        return str(restored) if isinstance(restored, Path) else None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.ended is not None:
            return
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if (self.metrics is None or name in self.metrics) and _scalar(value)
        }
        if not metrics:
            return
        try:
            self.trial.report(trainer.current_epoch + 1, **metrics)
        except (Pruned, Stopped) as ended:
            self.ended = ended
            trainer.should_stop = True
            return
        if self.checkpoint and self.trial.connected:
            path = self.trial._scratch() / CHECKPOINT
            trainer.save_checkpoint(path)  # on every rank; rank 0's is kept
            self.trial.checkpoint(path)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.ended is not None:
            raise self.ended


def _scalar(value: Any) -> bool:
    """A number or a one-element tensor (a non-finite objective makes the trial diverged)."""
    try:
        float(value)
    except (TypeError, ValueError, RuntimeError):  # a tensor of several values
        return False
    return True
