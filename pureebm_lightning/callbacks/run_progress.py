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
        self._total: int | None = None  # the run's optimiser steps, worked out once at the start

    def total_steps(self, trainer: Trainer) -> int | None:
        """Optimiser steps of the whole run (Lightning's estimate from max_steps, max_epochs and the loader), or
        None when nothing bounds it."""
        total = trainer.estimated_stepping_batches
        return None if total in (None, math.inf) else int(total)

    def run_summary(self, trainer: Trainer) -> str:
        """``37% of 1000 steps, 4:10 left``, or less where the total or the speed is not known yet."""
        total, done = self._total, trainer.global_step
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
        self._total = self.total_steps(trainer)

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        if self.train_progress_bar is None:
            return
        total, per_epoch = self._total, trainer.num_training_batches
        epochs = None
        if total and per_epoch not in (None, math.inf, 0):  # the epochs that the run's steps span
            epochs = math.ceil(total * max(1, trainer.accumulate_grad_batches) / per_epoch)
        epoch = trainer.current_epoch + 1
        self.train_progress_bar.set_description(f"Epoch {epoch}/{epochs}" if epochs else f"Epoch {epoch}")

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        summary = self.run_summary(trainer)
        return {"run": summary, **metrics} if summary else metrics
