"""Poisoned training sets on disk (FORMATS.md): ImageFolder trees and the Witches' Brew NumPy pair."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

NUMPY_DATA = "poisoned_training_data.npy"
#: PIL modes read as grey (1 channel) or colour (3 channels); others (16-bit, alpha, CMYK) are refused
GREY_MODES, COLOUR_MODES = ("L", "1"), ("RGB", "P")
NUMPY_LABELS = "poisoned_training_labels.npy"


class PoisonedDataError(ValueError):
    """A poisoned input that cannot be purified; the message names the file and the problem."""


def hwc_to_chw(arr: np.ndarray) -> torch.Tensor:
    """An (H, W) or (H, W, C) uint8 array as a (C, H, W) tensor."""
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def hwc_to_pil(arr: np.ndarray) -> Image.Image:
    """An (H, W, 1) or (H, W, 3) uint8 array as a grey ("L") or RGB PIL image."""
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def chw_to_pil(image: torch.Tensor) -> Image.Image:
    """A (C, H, W) uint8 tensor as a grey or RGB PIL image."""
    return hwc_to_pil(image.permute(1, 2, 0).cpu().numpy())


def read_image(path: Path, mode: str) -> torch.Tensor:
    """The image file at ``path`` in PIL ``mode`` ("L" or "RGB") as a (C, H, W) uint8 tensor."""
    try:
        with Image.open(path) as img:
            return hwc_to_chw(np.array(img.convert(mode)))
    except (OSError, UnidentifiedImageError) as err:
        raise PoisonedDataError(f"{path}: cannot read this image ({err})") from err


@dataclass
class PoisonedSource:
    """The training images of a poisoned set: keys (relative output paths, or indices), labels, one image shape.

    ``kind`` is "image_folder" (``keys`` are paths relative to the output root, e.g. ``train/cat/7.png``)
    or "numpy" (``keys`` are row numbers). ``other_entries`` are siblings of an image folder's ``train/``
    split (``test/``, ``targets/``, ...), copied unchanged into the output: only training data is purified.
    """

    root: Path
    kind: str
    keys: list[str]
    labels: list[int]
    shape: tuple[int, int, int]
    split: str = ""
    other_entries: list[str] = field(default_factory=list)
    classes: list[str] | None = None  # class folder names (label i is classes[i]); None for NumPy sources
    _array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def mode(self) -> str:
        """PIL mode of the images: "L" (grey) or "RGB"."""
        return "L" if self.shape[0] == 1 else "RGB"

    def path(self, i: int) -> Path:
        return self.root / self.keys[i]

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` as a (C, H, W) uint8 tensor."""
        image = hwc_to_chw(np.array(self._array[i])) if self.kind == "numpy" else read_image(self.path(i), self.mode)
        if tuple(image.shape) != self.shape:
            where = f"row {i}" if self.kind == "numpy" else self.path(i)
            raise PoisonedDataError(f"{where}: shape {tuple(image.shape)} differs from the set's {self.shape}")
        return image


class SourceImages(Dataset):
    """(uint8 image, source index) by source index; batches come from a batch sampler of :func:`blocks`."""

    def __init__(self, source: PoisonedSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.source.load(i), i


class BlockBatches(Sampler):
    """A batch sampler that yields the given blocks of indices, in order."""

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = blocks

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)


def blocks(count: int, size: int) -> list[list[int]]:
    """Indices 0..count-1 in fixed consecutive blocks of ``size``: the unit of purification. A block's noise
    depends only on the seed and the block, so results do not depend on device count or on resuming."""
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def open_source(root: str | Path) -> PoisonedSource:
    """Find the poisoned training images under ``root``; fail with a clear message if there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PoisonedDataError(f"{root}: no such folder (expected an ImageFolder tree or {NUMPY_DATA})")
    if (root / NUMPY_DATA).is_file():
        return _open_numpy(root)
    if (root / "train").is_dir():
        others = sorted(p.name for p in root.iterdir() if p.name not in ("train", "manifest.json") and not p.name.startswith("."))
        return _open_image_folder(root, "train", others)
    return _open_image_folder(root, "", [])


def _open_numpy(root: Path) -> PoisonedSource:
    data_path, labels_path = root / NUMPY_DATA, root / NUMPY_LABELS
    try:
        data = np.load(data_path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise PoisonedDataError(f"{data_path}: not a plain NumPy array ({err})") from err
    if data.dtype != np.uint8 or data.ndim not in (3, 4) or (data.ndim == 4 and data.shape[3] not in (1, 3)):
        raise PoisonedDataError(f"{data_path}: expected uint8 N x H x W x 3 (or N x H x W) images, got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise PoisonedDataError(f"{data_path}: holds no images")
    if not labels_path.is_file():
        raise PoisonedDataError(f"{labels_path}: missing (the NumPy pair needs its labels beside the images)")
    labels = np.load(labels_path, allow_pickle=False)
    if len(labels) != len(data):
        raise PoisonedDataError(f"{labels_path}: {len(labels)} labels for {len(data)} images")
    channels = 1 if data.ndim == 3 else data.shape[3]
    others = sorted(p.name for p in root.iterdir()
                    if p.name not in (NUMPY_DATA, NUMPY_LABELS, "manifest.json") and not p.name.startswith("."))
    return PoisonedSource(
        root=root, kind="numpy", keys=[str(i) for i in range(len(data))], labels=[int(v) for v in labels],
        shape=(channels, data.shape[1], data.shape[2]), other_entries=others, _array=data,
    )


def _open_image_folder(root: Path, split: str, others: list[str]) -> PoisonedSource:
    folder = root / split if split else root
    try:
        found = ImageFolder(str(folder), loader=lambda p: p, is_valid_file=lambda p: p.lower().endswith(IMG_EXTENSIONS))
        samples = found.samples
    except FileNotFoundError as err:
        raise PoisonedDataError(f"{folder}: no images found ({err}); expected <class>/<image file> folders") from err
    shape, keys, labels = None, [], []
    for path, label in samples:  # headers only: sizes and channels must agree before any work starts
        try:
            with Image.open(path) as img:
                mode, this = img.mode, (1 if img.mode in GREY_MODES else 3, img.height, img.width)
        except (OSError, UnidentifiedImageError) as err:
            raise PoisonedDataError(f"{path}: cannot read this image ({err})") from err
        if mode not in GREY_MODES + COLOUR_MODES:
            raise PoisonedDataError(
                f"{path}: image mode {mode} is not supported (8-bit grey or RGB only; 16-bit, alpha and CMYK "
                "images would be changed silently): convert the set to 8-bit L or RGB first"
            )
        if shape is None:
            shape, first = this, path
        elif this != shape:
            raise PoisonedDataError(
                f"{path}: {this[0]} channel(s), {this[1]}x{this[2]} pixels, but {first} has {shape[0]}, "
                f"{shape[1]}x{shape[2]}: all images of a set must share one size and channel count"
            )
        keys.append(str(Path(path).relative_to(root)))
        labels.append(label)
    return PoisonedSource(root=root, kind="image_folder", keys=keys, labels=labels, shape=shape, split=split,
                          other_entries=others, classes=list(found.classes))
