"""The clean data an attack starts from: the victim's training split, its test split, and the attacker's own pool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_uint8
from pureebm_lightning.sources import open_source
from pureebm_lightning.splits import Split


@dataclass
class CleanData:
    """A dataset split for an attack: ``train`` (the victim trains on it, poisoned), ``test`` (clean evaluation),
    ``pool`` (held out of ``train``: the attacker's surrogate data and the defender's disjoint EBM data).
    ``classes`` are the class names, in label order; ``source`` says where the images came from."""

    train: Split
    test: Split
    pool: Split
    classes: list[str]
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def _digits(image_size: int) -> tuple[Split, Split, list[str]]:
    """scikit-learn's digits: the test split is the one ``DigitsDataModule`` (split_seed 0) tests on."""
    from pureebm_lightning.bundled_digits import digits_images

    x, y = digits_images(image_size)
    images = to_uint8(x)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(len(order) * 0.2)
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    return Split(images[train], y[train], train), Split(images[test], y[test], test), [str(c) for c in range(10)]


def _cifar10(root: Path) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import CIFAR10

    def split(train: bool) -> tuple[Split, list[str]]:
        ds = CIFAR10(str(root), train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.as_tensor(ds.targets), torch.arange(len(ds.targets))), ds.classes

    try:
        (train, _), (test, classes) = split(True), split(False)
    except RuntimeError as err:
        raise PoisonedDataError(f"CIFAR-10 under {root} is incomplete or corrupted ({err})") from err
    return train, test, classes


def _folder_split(folder: Path) -> tuple[Split, list[str]]:
    """A ``<class>/<image>`` folder; ids are the file names when they are distinct integers (``1234.png``, as
    this tool and Witches' Brew write), else positions in ImageFolder order."""
    source = open_source(folder)
    images = torch.stack([source.load(i) for i in range(len(source))])
    stems = [Path(key).stem for key in source.keys]
    named = all(stem.isdigit() for stem in stems) and len({int(stem) for stem in stems}) == len(stems)
    ids = torch.as_tensor([int(stem) for stem in stems]) if named else torch.arange(len(source))
    split = Split(images, torch.as_tensor(source.labels), ids)
    return split.subset(torch.argsort(split.ids)), source.classes


def _image_folder(root: Path) -> tuple[Split, Split, list[str]]:
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise PoisonedDataError(f"{root}: expected train/<class>/<image> and test/<class>/<image> folders")
    (train, classes), (test, test_classes) = _folder_split(root / "train"), _folder_split(root / "test")
    if test_classes != classes:
        raise PoisonedDataError(f"{root}: test/ has classes {test_classes}, train/ has {classes}")
    return train, test, classes


def load_clean_splits(data: str, image_size: int = 16) -> tuple[Split, Split, list[str], str]:
    """The dataset's own train and test splits (ids = its indices), its class names, and a description.

    ``data`` is ``digits`` (scikit-learn's, resized to ``image_size``), a CIFAR-10 root in torchvision's
    format (``cifar-10-batches-py`` inside), or a folder with ``train/<class>/<image>`` and ``test/...``.
    """
    if data == "digits":
        train, test, classes = _digits(image_size)
        return train, test, classes, f"digits {image_size}x{image_size}"
    root = Path(data).expanduser()
    if not root.is_dir():
        raise PoisonedDataError(
            f"{root}: no such folder. --data is 'digits', a CIFAR-10 root (cifar-10-batches-py inside, torchvision's "
            "format) or a folder with train/<class>/<image> and test/<class>/<image>; nothing is downloaded here"
        )
    if (root / "cifar-10-batches-py").is_dir():
        train, test, classes = _cifar10(root)
        return train, test, classes, f"CIFAR-10 at {root}"
    train, test, classes = _image_folder(root)
    return train, test, classes, f"image folder {root}"


def load_clean_data(data: str, holdout: float = 0.2, split_seed: int = 0, image_size: int = 16,
                    attacker_data: str | None = None) -> CleanData:
    """The clean data of an attack: ``holdout`` of the training split (drawn with ``split_seed``) becomes the
    pool and leaves the victim's training set, unless ``attacker_data`` (a ``<class>/<image>`` folder with the
    same classes) is the pool instead."""
    if not 0 <= holdout < 1:
        raise PoisonedDataError(f"--holdout must be in [0, 1), got {holdout}")
    train, test, classes, source = load_clean_splits(data, image_size)
    if list(classes) != sorted(classes):  # ImageFolder numbers class folders in sorted order
        raise PoisonedDataError(f"class names {classes} do not sort in label order; rename them so they do")
    if attacker_data is not None:
        pool, pool_classes = _folder_split(Path(attacker_data).expanduser())
        if pool_classes != classes:
            raise PoisonedDataError(f"{attacker_data}: classes {pool_classes}, the data has {classes}")
        if tuple(pool.images.shape[1:]) != tuple(train.images.shape[1:]):
            raise PoisonedDataError(f"{attacker_data}: images of shape {tuple(pool.images.shape[1:])}, the data's are {tuple(train.images.shape[1:])}")
        return CleanData(train, test, pool, classes, source)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
    n_pool = int(round(len(order) * holdout))
    pool, keep = order[:n_pool].sort().values, order[n_pool:].sort().values
    return CleanData(train.subset(keep), test, train.subset(pool), classes, source)
