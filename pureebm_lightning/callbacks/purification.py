"""Callbacks of the purify command: write each purified batch as it comes, and show images per second."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar

from pureebm_lightning.purification.purified_store import PurifiedStore


class PurifiedWriter(BasePredictionWriter):
    """Hands every purified batch to a :class:`PurifiedStore` (each rank writes its own files); when all ranks
    are done, global rank 0 finishes the store (NumPy assembly, copied splits, complete manifest)."""

    def __init__(self, store: PurifiedStore) -> None:
        super().__init__(write_interval="batch")
        self.store = store

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self.store.write(prediction["indices"], prediction["images"], rank=trainer.global_rank)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.store.finish_on_rank_zero(trainer.strategy)


class ImagesPerSecondBar(TQDMProgressBar):
    """The predict progress bar, with images per second over all devices."""

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self._start, self._images = time.perf_counter(), 0
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._images += len(batch[1]) * trainer.world_size
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        elapsed = time.perf_counter() - self._start
        if self.predict_progress_bar is not None and elapsed > 0:
            self.predict_progress_bar.set_postfix({"images/s": f"{self._images / elapsed:.1f}"})
