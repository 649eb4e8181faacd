"""The classifier LightningModule: trained on (purified or poisoned) images, measured on clean test images."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from pureebm_lightning.ebm_module import _built_by_cli

_INJECTED = ["net", "optimizer", "lr_scheduler"]


class ClassifierModule(LightningModule):
    """Cross-entropy training of ``net`` on images in [-1, 1], normalised by ``mean``/``std`` (of [0, 1] pixels).

    Natural accuracy (torchmetrics) is logged as ``val/accuracy`` and ``test/accuracy``; with a second test
    loader (the poisoned test images of a folder with ``poison.json``, labelled with the attacker's class),
    the share classified as the attacker wanted is ``test/poison_success``.

    Args:
        net: the classifier network (``SmallImageClassifier``, ``SmallCNN``, any module giving logits).
        num_classes: number of classes.
        mean, std: per-channel normalisation of [0, 1] pixels (CIFAR-10's by default; one value for grey).
        optimizer: optimiser factory (default: SGD 0.1, momentum 0.9, weight decay 5e-4, the paper's).
        lr_scheduler: optional scheduler factory (configs: MultiStepLR at 100, 150 x0.1).
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int = 10,
        mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465),
        std: tuple[float, ...] = (0.2470, 0.2435, 0.2616),
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=None if _built_by_cli() else _INJECTED)
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.poison_success = MulticlassAccuracy(num_classes, average="micro")  # accuracy w.r.t. the attacker's labels

    def forward(self, x: Tensor) -> Tensor:
        """Logits of images in [-1, 1]."""
        return self.net(((x + 1) / 2 - self.mean) / self.std)

    def configure_optimizers(self) -> Any:
        params = self.net.parameters()
        if self.optimizer_factory is not None:
            opt = self.optimizer_factory(params)
        else:
            opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"}}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.val_accuracy(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val/accuracy", self.val_accuracy, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch[0], batch[1]
        metric, name = (self.test_accuracy, "test/accuracy") if dataloader_idx == 0 else (self.poison_success, "test/poison_success")
        metric(self(x), y)
        self.log(name, metric, add_dataloader_idx=False)
