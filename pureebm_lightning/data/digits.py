"""scikit-learn's bundled handwritten digits: real images that need no download."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from pureebm_lightning.bundled_digits import digits_images
from pureebm_lightning.data.base import ImageDataModule


class DigitsDataModule(ImageDataModule):
    """The 8x8 digits of scikit-learn, resized to ``image_size``, split by a fixed seed into train/val/test.

    Decoded once into memory; ``rgb`` repeats the grey channel three times.
    """

    def __init__(
        self,
        image_size: int = 16,
        rgb: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction and test_fraction must be in [0, 1) and leave training data; got {val_fraction}, {test_fraction}")
        self.image_size, self.rgb = image_size, rgb
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = digits_images(self.image_size, self.rgb)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        n_test, n_val = int(len(order) * self.test_fraction), int(len(order) * self.val_fraction)
        test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(images[test], labels[test])
