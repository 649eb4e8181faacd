"""Test-only LightningModule that trains a linear probe and records every batch it sees (images, labels)."""

from __future__ import annotations

import json
import sys

import torch
from lightning.pytorch import LightningModule, Trainer


class RecordingModule(LightningModule):
    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.probe = torch.nn.Linear(features, 10)  # 8x8 grey images (192: 8x8 RGB)
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, x.detach().cpu(), y.cpu()))
        return torch.nn.functional.cross_entropy(self.probe(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":  # 2-process DDP: each rank reports how many images it purified
    from pureebm_lightning.data import PurifiedDataModule

    data, ckpt, report = sys.argv[1:4]
    dm = PurifiedDataModule(data, ckpt, steps=5, batch_size=4, purify_batch_size=4, crop_padding=0, hflip=False)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(RecordingModule(), dm)
    with open(f"{report}.rank{trainer.global_rank}", "w") as f:
        json.dump({"purified_now": dm.purified_now, "batches": len(trainer.lightning_module.seen)}, f)
    torch.distributed.destroy_process_group()  # a live gloo group can abort the interpreter at exit
