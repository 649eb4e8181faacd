"""Image grids of the persistent chains and of the data, sent to the configured logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from pureebm_lightning.ebm_module import batch_images


class ChainImageLogger(Callback):
    """Every ``every_n_steps`` training steps, logs a grid of ``num_images`` bank chains and one of data images.

    TensorBoard gets ``add_image``; loggers with ``log_image`` (W&B, ...) get that; any other logger, or
    none, gets PNG files under ``<log_dir>/chain_images/``.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 64) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.num_images = num_images

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        bank = getattr(pl_module, "bank", None)
        if bank is None or not bank.initialized or self.every_n_steps <= 0 or step % self.every_n_steps != 0:
            return
        grids = {
            "chains": self._grid(bank.chains[: self.num_images]),
            "data": self._grid(batch_images(batch)[: self.num_images]),
        }
        for name, grid in grids.items():
            self._log(trainer, f"images/{name}", grid, step)

    @staticmethod
    def _grid(images: torch.Tensor) -> torch.Tensor:
        images = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
        return make_grid(images, nrow=int(len(images) ** 0.5) or 1, padding=1)

    @staticmethod
    def _log(trainer: Trainer, tag: str, grid: torch.Tensor, step: int) -> None:
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, global_step=step)
                logged = True
            elif hasattr(logger, "log_image"):
                logger.log_image(key=tag, images=[grid], step=step)
                logged = True
        if not logged:
            out = Path(trainer.log_dir or trainer.default_root_dir) / "chain_images"
            out.mkdir(parents=True, exist_ok=True)
            save_image(grid, out / f"{tag.split('/')[-1]}_step{step:07d}.png")
