"""The shapes CNN as a LightningModule, trained by a function program with Sweep's callback:

sweep worker --program train_cnn=train_lightning:train      # from this directory
"""

from __future__ import annotations

import torch
from shapes import ShapesCNN, class_weights, focal_loss, macro_f1, make_data
from torch.utils.data import DataLoader, TensorDataset

import sweep
from sweep.integrations.lightning import SweepCallback

try:
    import lightning.pytorch as L
except ImportError:
    import pytorch_lightning as L


class ShapesModule(L.LightningModule):  # type: ignore[misc]
    def __init__(self, params: dict[str, object], weights: torch.Tensor) -> None:
        super().__init__()
        self.net = ShapesCNN(int(params.get("channels", 8)), float(params.get("dropout", 0.1)))
        self.lr = float(params.get("lr", 0.01))
        self.gamma = float(params.get("focal_gamma", 2.0))
        self.register_buffer("weights", weights)

    def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        loss = focal_loss(self.net(x), y, self.gamma, self.weights)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: list[torch.Tensor], index: int) -> None:
        x, y = batch
        self.log("val_macro_f1", macro_f1(self.net(x), y), batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def train(trial: sweep.Trial) -> None:
    torch.manual_seed(0)
    x, y = make_data(int(trial.params.get("n_train", 480)), seed=1)
    val_x, val_y = make_data(240, seed=2)
    batch_size = int(trial.params.get("batch_size", 32))
    model = ShapesModule(trial.params, class_weights(y))
    callback = SweepCallback(trial)  # reports val_macro_f1 each epoch; prunes end the fit
    trainer = L.Trainer(
        max_epochs=int(trial.params.get("epochs", 3)),
        callbacks=[callback],
        accelerator="auto",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(val_x, val_y), batch_size=240),
        ckpt_path=callback.resume_from(),
    )
    trial.save_model(model.net.state_dict())
