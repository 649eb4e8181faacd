"""The progress bar of the purify command, with images per second."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


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
