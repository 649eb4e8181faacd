"""The LightningModule that runs a :class:`PurificationRun` in Trainer.predict (one device or many, each its own blocks)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from pureebm_lightning.purification.run import PurificationRun, diagnostics_of


class PurifyModule(LightningModule):
    """Purifies the blocks of ``run``'s store that are not done yet; needs ``Trainer(inference_mode=False,
    use_distributed_sampler=False)``: rank r takes every world_size-th missing block.

    In ``setup`` (process group up, before any image is read) global rank 0 claims the output folder (its lock is
    held until the process ends or ``run.store.lock.release()``) and the defense fits; every rank then waits for it.
    Each predict step purifies and writes one block; at the end rank 0 completes the output. With diagnostic points,
    ``diagnostics`` then holds the means of energies and L2 distances over the images of every rank.
    """

    def __init__(self, run: PurificationRun, overwrite: bool = False) -> None:
        super().__init__()
        self.run, self.overwrite = run, overwrite
        self.energy_net = getattr(run.defense, "energy_net", None)  # registered, so Lightning moves it to the device
        self.diagnostics: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        self.run.claim(self.trainer.strategy, self.overwrite)

    def predict_dataloader(self) -> DataLoader:
        rank_zero_info(self.run.describe_start())
        self.run.defense.to(self.trainer.strategy.root_device)
        return self.run.loader(self.trainer.global_rank, self.trainer.world_size)

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        images, indices = batch
        self.run.step(images, indices, rank=self.trainer.global_rank)
        return indices  # written already; returned so that Lightning does not take None for a mistake

    def on_predict_end(self) -> None:
        self.run.finish(self.trainer.strategy)

    def on_predict_epoch_end(self) -> None:
        if not self.run.points:
            return
        sums = self.run.sums if self.run.sums is not None else torch.zeros(3, len(self.run.points), device=self.device)
        self.diagnostics = diagnostics_of(self.trainer.strategy.reduce(sums, reduce_op="sum"), self.run.points)
