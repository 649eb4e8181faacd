"""What every training-set defense is: uint8 images in, uint8 images out, and the settings that identify its output."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pureebm_lightning.sources import PoisonedSource


class Defense(ABC):
    """A training-set defense. ``__call__`` maps uint8 (B, C, H, W) images to purified uint8 images on their device;
    noise, if any, is seeded by ``first_index`` (the batch's first source index) and ``epoch``, so that a block gives
    the same output on any device count and after a resume.

    ``settings()`` states everything its output depends on, and nothing else: the manifest of a purified folder,
    the check that a resumed run is the same run, and the cache key of PurifiedDataModule are all derived from it.
    ``record()`` adds facts worth keeping that do not change the output (a checkpoint's path).
    """

    #: the registry name (the module's name), written as the settings' "defense"
    name: str = ""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The identity of this defense's output (JSON values; ``{"defense": name, ...}``)."""

    @abstractmethod
    def __call__(self, images: Tensor, first_index: int = 0, epoch: int = 0) -> Tensor:
        """Purified uint8 copies of uint8 ``images``."""

    def record(self) -> dict[str, Any]:
        """Facts for the manifest that do not change the output."""
        return {}

    def describe(self) -> str:
        """One line for logs: the defense and its main settings."""
        return ", ".join(f"{k} = {v}" for k, v in self.settings().items())

    def check_input(self, shape: tuple[int, int, int], where: str | Path) -> None:
        """Fail before any work if this defense cannot take (C, H, W) images (default: any)."""
        return None

    def fit(self, source: PoisonedSource, state_dir: Path, device: torch.device | str = "cpu") -> None:
        """Learn what the defense needs from the poisoned set before purifying it (default: nothing). Called on one
        process first, then on the others: what it learns is kept under ``state_dir`` (inside the output), so a
        resumed run and the other ranks reuse it instead of learning it again."""
        return None

    def to(self, device: torch.device | str) -> "Defense":
        """Move the defense's networks to ``device`` (default: it has none)."""
        return self


def run_key(identity: dict[str, Any]) -> str:
    """A stable hash of a run's identity (a defense's settings and what else its output depends on)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def require_uint8(images: Tensor) -> Tensor:
    """``images`` if they are uint8 (B, C, H, W) pixels; a clear error otherwise (never a silent rescaling)."""
    from pureebm_lightning.errors import PoisonedDataError

    if not isinstance(images, Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise PoisonedDataError(f"this defense takes uint8 (B, C, H, W) pixels, got {what}")
    return images
