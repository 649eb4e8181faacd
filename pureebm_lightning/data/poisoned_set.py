"""A training set on disk as it is (poisoned, or already purified), with its clean test split, for classifiers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pureebm_lightning.purification.purifier import to_signed_unit
from pureebm_lightning.purification.sources import PoisonedSource, open_source


class LabelledImages(Dataset):
    """(uint8 image, label, index) from a loader of images by index, with an optional uint8 transform."""

    def __init__(self, load: Callable[[int], torch.Tensor], labels: list[int], transform: Callable | None = None) -> None:
        self.load, self.labels, self.transform = load, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = self.load(i)
        return (self.transform(image) if self.transform else image), self.labels[i], i


class PoisonedSetDataModule(LightningDataModule):
    """Batches of (image in [-1, 1], label) from a training set in any layout ``pureebm purify`` reads.

    Training images are used as they are on disk: point ``data`` at a poisoned folder (no defense) or at
    its ``pureebm purify`` output (purified offline; an unfinished one is refused). Validation and test
    both use the clean images of ``test_data``, by default the ``test/`` split beside ``train/`` (a purify
    output copies it unchanged): ``val/accuracy`` is test accuracy, so do not select checkpoints on it.

    Args:
        data: the training set's folder.
        test_data: folder of clean test images (``<class>/<file>``); default ``<data>/test`` when present.
        crop_padding: RandomCrop(size, padding) for training (paper: 4); 0 turns it off.
        hflip: random horizontal flips for training (paper: on; off for digits).
        batch_size, num_workers: for every loader.
    """

    def __init__(self, data: str, test_data: str | None = None, crop_padding: int = 4, hflip: bool = True,
                 batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__()
        self.data, self.test_data, self.crop_padding, self.hflip = data, test_data, crop_padding, hflip
        self.batch_size, self.num_workers = batch_size, num_workers
        self.source: PoisonedSource | None = None
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _augment(self, shape: tuple[int, int, int]) -> v2.Compose | None:
        steps = []
        if self.crop_padding:
            steps.append(v2.RandomCrop(shape[1:], padding=self.crop_padding))
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps) if steps else None

    def training_images(self, source: PoisonedSource) -> Callable[[int], torch.Tensor]:
        """How a training image is read (subclasses read purified copies instead)."""
        return source.load

    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source = open_source(self.data)
            manifest = self.source.root / "manifest.json"
            if manifest.is_file() and json.loads(manifest.read_text()).get("complete") is False:
                raise FileNotFoundError(f"{self.source.root} is an unfinished purify output: run the same `pureebm purify` again to finish it")
        if stage in (None, "fit") and self.train_set is None:  # `pureebm test` needs no training images
            self.train_set = LabelledImages(self.training_images(self.source), self.source.labels, self._augment(self.source.shape))
        if self.test_set is not None:
            return
        test_root = self.test_data or (self.source.root / "test" if self.source.split == "train" else None)
        if test_root is not None and Path(test_root).is_dir():
            test = open_source(test_root)
            self.test_set = LabelledImages(test.load, self._labels_as_in_training(test))

    def _labels_as_in_training(self, test: PoisonedSource) -> list[int]:
        """Test labels by class name, so a test split missing a class does not shift the others."""
        if test.classes is None or self.source.classes is None:
            return test.labels
        index = {name: i for i, name in enumerate(self.source.classes)}
        unknown = sorted(set(test.classes) - set(index))
        if unknown:
            raise FileNotFoundError(f"{test.root} has classes the training set lacks: {unknown}")
        return [index[test.classes[label]] for label in test.labels]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.test_set is None:
            return []
        return DataLoader(self.test_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise FileNotFoundError(f"no clean test images: {self.data} has no test/ split and test_data is not set")
        return DataLoader(self.test_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = batch
        return to_signed_unit(images), labels
