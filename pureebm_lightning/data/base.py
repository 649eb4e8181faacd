"""Shared loaders of the image data modules."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

#: ToTensor then Normalize(0.5, 0.5): 8-bit images to [-1, 1], as in the paper.
TO_SIGNED_UNIT = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])


def require_dir(path: str | Path, what: str, hint: str) -> Path:
    """``path`` as a Path if it is a directory, else a FileNotFoundError saying what belongs there."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory. {hint}")
    return path


class ImageDataModule(LightningDataModule):
    """Base for the data modules: subclasses set ``train_set`` and ``val_set`` (and optionally ``test_set``) in ``setup``."""

    def __init__(self, batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no such split; call setup() first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,  # every training step draws a full batch of chains
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, train=False)  # []: no validation

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set if self.test_set is not None else self.val_set, train=False)
