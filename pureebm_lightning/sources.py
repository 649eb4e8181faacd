"""Poisoned training sets on disk (``docs/formats.md``): ImageFolder trees and the Witches' Brew NumPy pair."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import (
    COLOUR_MODES,
    GREY_MODES,
    check_pixel_array,
    hwc_to_chw,
    read_image,
    to_uint8_pixels,
)

NUMPY_DATA = "poisoned_training_data.npy"
NUMPY_LABELS = "poisoned_training_labels.npy"


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
        image = hwc_to_chw(to_uint8_pixels(np.array(self._array[i]))) if self.kind == "numpy" else read_image(self.path(i), self.mode)
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


def refuse_link_loops(folder: str | Path) -> Path:
    """``folder``, after checking that no symbolic link in it leads back to a folder above the link: walked, such
    a loop would be followed about 40 levels deep and every image read again at each level."""
    folder = Path(folder)
    stack = [(folder, (os.path.realpath(folder),))]
    while stack:
        path, ancestors = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError as err:
            raise PoisonedDataError(f"{path}: cannot list this folder ({err.strerror})") from err
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                real = os.path.realpath(entry.path)
                if real in ancestors:
                    raise PoisonedDataError(f"{entry.path}: a symbolic link back to {real}, which contains it (a loop): "
                                            "remove the link or replace it with the folder it should point to")
                stack.append((Path(entry.path), (*ancestors, real)))
    return folder


def _refuse_nested_set(root: Path) -> None:
    """A folder whose class folders are themselves poisoned sets (``pureebm poison --out poisoned/digits``, then
    ``--data poisoned/``) would be read as one class holding train/ and test/ images alike."""
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / "train").is_dir() and any(p.is_dir() for p in (child / "train").iterdir()):
            raise PoisonedDataError(f"{root}: its folder {child.name}/ is a whole data set (it holds train/): "
                                    f"pass --data {child} instead")


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
    _refuse_nested_set(root)
    return _open_image_folder(root, "", [])


def _open_numpy(root: Path) -> PoisonedSource:
    data_path, labels_path = root / NUMPY_DATA, root / NUMPY_LABELS
    try:
        data = np.load(data_path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise PoisonedDataError(f"{data_path}: not a plain NumPy array ({err})") from err
    if data.ndim not in (3, 4) or (data.ndim == 4 and data.shape[3] not in (1, 3)):
        raise PoisonedDataError(f"{data_path}: expected N x H x W x 3 (or N x H x W) images, got shape {data.shape}")
    if len(data) == 0:
        raise PoisonedDataError(f"{data_path}: holds no images")
    check_pixel_array(data, data_path)
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
    folder = refuse_link_loops(root / split if split else root)
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
