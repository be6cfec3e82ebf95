"""A small image project of the kind users bring: its own data (generated here, nothing is
downloaded), its own CNN, augmentation, a focal loss with class weights, and macro-F1.

Shared by the example programs: train_cnn.py (a script), train_fn.py (a function) and
train_ddp.py (torchrun).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CLASSES = ("square", "disc", "cross", "bar")
SIZE = 12


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy SIZE x SIZE images of the four shapes, in unequal numbers (bars are rare)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASSES), size=n, p=[0.35, 0.3, 0.25, 0.1])
    images = np.zeros((n, 1, SIZE, SIZE), dtype=np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i, label in enumerate(labels):
        cy, cx = rng.integers(3, SIZE - 3, size=2)
        r = int(rng.integers(2, 4))
        if label == 0:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif label == 1:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif label == 2:
            mask = ((abs(yy - cy) <= r) & (abs(xx - cx) <= 0)) | (
                (abs(xx - cx) <= r) & (abs(yy - cy) <= 0)
            )
        else:
            mask = (abs(yy - cy) <= 0) & (abs(xx - cx) <= r + 1)
        images[i, 0][mask] = 1.0
    images += rng.normal(0, 0.3, size=images.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random shifts, flips or extra noise, on the batch."""
    if kind == "shift":
        dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if kind == "flip":
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)
    if kind == "noise":
        return x + 0.1 * torch.randn(x.shape, generator=generator)
    return x


class ShapesCNN(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, weights: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy that weighs hard examples up (gamma) and rare classes up (weights)."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-weights[target] * (1 - log_p.exp()) ** gamma * log_p).mean()


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=len(CLASSES)).float()
    return counts.sum() / (len(CLASSES) * counts.clamp(min=1))


def macro_f1(logits: torch.Tensor, target: torch.Tensor) -> float:
    predicted = logits.argmax(1)
    scores = []
    for c in range(len(CLASSES)):
        tp = ((predicted == c) & (target == c)).sum().item()
        fp = ((predicted == c) & (target != c)).sum().item()
        fn = ((predicted != c) & (target == c)).sum().item()
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    return sum(scores) / len(scores)


class Training:
    """Everything one run needs, built from its hyperparameters; `epoch()` trains one epoch
    and returns (train_loss, val_macro_f1)."""

    def __init__(self, params: dict[str, object], seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.x, self.y = make_data(int(params.get("n_train", 480)), seed=1)
        self.val_x, self.val_y = make_data(240, seed=2)
        self.model = ShapesCNN(int(params.get("channels", 8)), float(params.get("dropout", 0.1)))
        self.batch_size = int(params.get("batch_size", 32))
        self.epochs = int(params.get("epochs", 3))
        self.augmentation = str(params.get("augment", "none"))
        self.gamma = float(params.get("focal_gamma", 2.0))
        self.weights = class_weights(self.y)
        lr = float(params.get("lr", 0.01))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        steps = self.epochs * -(-len(self.x) // self.batch_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=lr, total_steps=steps
        )

    def epoch(self) -> tuple[float, float]:
        self.model.train()
        order = torch.randperm(len(self.x), generator=self.generator)
        total = 0.0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            x = augment(self.x[batch], self.augmentation, self.generator)
            loss = focal_loss(self.model(x), self.y[batch], self.gamma, self.weights)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total += loss.item() * len(batch)
        self.model.eval()
        with torch.no_grad():
            f1 = macro_f1(self.model(self.val_x), self.val_y)
        return total / len(self.x), f1

    def state(self, epoch: int) -> dict[str, object]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load(self, state: dict[str, object]) -> int:
        """Continue from a checkpoint; the epoch it was taken after."""
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.scheduler.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        return int(state["epoch"])  # type: ignore[call-overload]
