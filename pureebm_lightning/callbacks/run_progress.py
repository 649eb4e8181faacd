"""A training progress bar that also shows the whole run: epochs (or steps) done of the total, and time left."""

from __future__ import annotations

import math
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RunProgressBar(TQDMProgressBar):
    """Lightning's bar for the current epoch, described as ``Epoch e/E`` and followed by the run's share done and
    an estimate of the time left (from the steps done so far in this invocation). The run's end is whichever
    of ``max_steps`` and ``max_epochs`` comes first; ``pureebm fit`` uses this bar unless the config names one."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._start_time: float | None = None
        self._start_step = 0

    def total_steps(self, trainer: Trainer) -> int | None:
        """Optimiser steps of the whole run, or None when neither max_steps nor max_epochs bounds it."""
        per_epoch = trainer.num_training_batches
        by_epochs = None
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and per_epoch not in (None, math.inf):
            by_epochs = int(per_epoch) * trainer.max_epochs // max(1, trainer.accumulate_grad_batches)
        by_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        bounds = [b for b in (by_epochs, by_steps) if b is not None]
        return min(bounds) if bounds else None

    def run_summary(self, trainer: Trainer) -> str:
        """``37% of 1000 steps, 4:10 left``, or less where the total or the speed is not known yet."""
        total, done = self.total_steps(trainer), trainer.global_step
        if not total:
            return ""
        text = f"{100 * done / total:.0f}% of {total} steps"
        if self._start_time is not None and done > self._start_step:
            rate = (done - self._start_step) / (time.monotonic() - self._start_time)
            text += f", {_clock((total - done) / rate)} left"
        return text

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_time, self._start_step = time.monotonic(), trainer.global_step

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        if self.train_progress_bar is None:
            return
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        per_epoch = trainer.num_training_batches
        if epochs and trainer.max_steps and trainer.max_steps > 0 and per_epoch not in (None, math.inf, 0):
            epochs = min(epochs, math.ceil(trainer.max_steps * max(1, trainer.accumulate_grad_batches) / per_epoch))
        epoch = trainer.current_epoch + 1
        self.train_progress_bar.set_description(f"Epoch {epoch}/{epochs}" if epochs else f"Epoch {epoch}")

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        summary = self.run_summary(trainer)
        return {"run": summary, **metrics} if summary else metrics
