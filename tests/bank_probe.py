"""A test-only callback that saves each rank's chain bank before the first step and at the end of training."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback


class BankProbe(Callback):
    def __init__(self, out_dir: str, tag: str) -> None:
        self.out_dir, self.tag = Path(out_dir), tag

    def _dump(self, trainer, pl_module, when: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.bank.chains.cpu(), self.out_dir / f"{self.tag}_{when}_rank{trainer.global_rank}.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not getattr(self, "started", False):  # before the first step of this run (after the module's on_train_start)
            self.started = True
            self._dump(trainer, pl_module, "start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "end")
