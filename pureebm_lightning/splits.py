"""A labelled set of uint8 images with their dataset ids: what attacks change and surrogates train on."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Split:
    """uint8 images (N, C, H, W), their labels, and their ids (the dataset's own indices, used as file names)."""

    images: Tensor
    labels: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: Tensor) -> "Split":
        return Split(self.images[rows], self.labels[rows], self.ids[rows])
