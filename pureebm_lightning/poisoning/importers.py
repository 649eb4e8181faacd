"""Poisoned sets made by other tools (``../shared/design/FORMATS.md``), read into a :class:`Poisoning`.

- Witches' Brew exports: "full" (``train/``, ``test/``, ``targets/`` ImageFolders, file name = dataset
  index), "limited" (``train/`` holds only the poisons, ``targets/``) and the NumPy pair.
- BackdoorBench: ``bd_train_dataset/<label>/<index>.png`` (poisoned samples only), a 0/1 poison indicator,
  and ``bd_test_dataset/<label>/<index>.png`` (triggered test images); clean samples from ``--data``.
- The "Just How Toxic" benchmark's pickles (``poisons.pickle``, ``target.pickle``, ``base_indices.pickle``):
  unpickling runs code, so only with ``trust_pickle``.
(A Narcissus trigger array is imported by :func:`pureebm_lightning.poisoning.narcissus.apply_narcissus_trigger`.)
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from pureebm_lightning.poisoning.clean_data import Split
from pureebm_lightning.poisoning.poisoned_folder import Poisoning, Target, measure
from pureebm_lightning.purification.sources import NUMPY_DATA, NUMPY_LABELS, PoisonedDataError, hwc_to_chw, read_image


def read_indexed_folder(folder: Path, mode: str) -> tuple[Split, list[str]]:
    """``folder/<class>/<index>.<ext>`` as a Split sorted by index (the file names), and the class names."""
    try:  # exports keep a folder for every class, most of them empty (Witches' Brew's targets/)
        found = ImageFolder(str(folder), loader=lambda p: p, is_valid_file=lambda p: p.lower().endswith(IMG_EXTENSIONS),
                            allow_empty=True)
    except FileNotFoundError as err:
        raise PoisonedDataError(f"{folder}: no <class>/<index>.png images ({err})") from err
    if not found.samples:
        raise PoisonedDataError(f"{folder}: no <class>/<index>.png images")
    ids = []
    for path, _ in found.samples:
        stem = Path(path).stem
        if not stem.isdigit():
            raise PoisonedDataError(f"{path}: file names must be dataset indices (like 1234.png)")
        ids.append(int(stem))
    if len(set(ids)) != len(ids):
        raise PoisonedDataError(f"{folder}: the same index appears in two class folders")
    order = np.argsort(ids, kind="stable")
    images = torch.stack([read_image(Path(found.samples[i][0]), mode) for i in order])
    labels = torch.as_tensor([found.samples[i][1] for i in order])
    return Split(images, labels, torch.as_tensor(ids)[order]), list(found.classes)


def _rows_of(split: Split, ids: torch.Tensor, what: str) -> torch.Tensor:
    """Rows of ``split`` holding ``ids``; a clear error for ids the clean data does not have."""
    position = {int(i): r for r, i in enumerate(split.ids.tolist())}
    missing = [int(i) for i in ids.tolist() if int(i) not in position]
    if missing:
        raise PoisonedDataError(f"{what}: indices {missing[:5]}{'...' if len(missing) > 5 else ''} are not in the clean data given by --data")
    return torch.as_tensor([position[int(i)] for i in ids.tolist()], dtype=torch.long)


def _check_shape(split: Split, clean: Split | None, where: Path) -> None:
    """The export's images must have the clean set's channels and size."""
    if clean is not None and tuple(split.images.shape[1:]) != tuple(clean.images.shape[1:]):
        raise PoisonedDataError(f"{where}: images of shape {tuple(split.images.shape[1:])}, the clean set given by --data has "
                                f"{tuple(clean.images.shape[1:])}")


def _check_classes(found: list[str], classes: list[str] | None, where: Path) -> None:
    if classes is not None and not set(found) <= set(classes):
        raise PoisonedDataError(f"{where}: classes {sorted(set(found) - set(classes))} are not classes of --data ({classes})")


def _relabel(split: Split, found: list[str], classes: list[str]) -> Split:
    """Labels numbered by ``classes`` instead of by the folders present."""
    mapping = torch.as_tensor([classes.index(name) for name in found])
    return Split(split.images, mapping[split.labels], split.ids)


def import_witches_brew(source: Path, clean_train: Split | None, clean_test: Split | None, classes: list[str] | None,
                        mode: str, targets: Path | None = None) -> tuple[Poisoning, list[str], Split | None]:
    """A Witches' Brew export; returns the poisoning, the class names and the clean training set it is measured
    against (None without ``--data``: then poison ids are unknown). Poison ids are the indices whose image
    differs from the clean one (full export, NumPy pair) or the file names of a limited export."""
    limited = False
    if (source / NUMPY_DATA).is_file():
        if clean_train is None:
            raise PoisonedDataError("the Witches' Brew NumPy pair needs --data (its test split and class names)")
        data = np.load(source / NUMPY_DATA, allow_pickle=False)
        if not np.array_equal(data, np.round(data)) or data.min() < 0 or data.max() > 255:
            raise PoisonedDataError(f"{source / NUMPY_DATA}: expected 0..255 pixel values")
        labels = torch.as_tensor(np.load(source / NUMPY_LABELS, allow_pickle=False).astype(np.int64)).ravel()
        if len(labels) != len(data) or labels.min() < 0 or labels.max() >= len(classes or []):
            raise PoisonedDataError(f"{source / NUMPY_LABELS}: expected {len(data)} labels in 0..{len(classes or []) - 1}")
        images = torch.stack([hwc_to_chw(a) for a in data.astype(np.uint8)])
        if len(images) != len(clean_train) or images.shape[1:] != clean_train.images.shape[1:]:
            raise PoisonedDataError(f"{source / NUMPY_DATA}: {len(images)} images of shape {tuple(images.shape[1:])}, the clean "
                                    f"training set has {len(clean_train)} of {tuple(clean_train.images.shape[1:])}")
        train = Split(images, labels, clean_train.ids)  # row r is the clean set's r-th image (CIFAR-10: index r)
        reference = clean_train
        test, target_dir = clean_test, targets or source / "targets"
        if not target_dir.is_dir():
            raise PoisonedDataError("the NumPy pair has no target images: pass --targets <export>/targets "
                                    "(the targets/ folder of a 'full' or 'limited' export)")
    else:
        if not (source / "train").is_dir():
            raise PoisonedDataError(f"{source}: not a Witches' Brew export (no train/ folder and no {NUMPY_DATA})")
        train, found = read_indexed_folder(source / "train", mode)
        _check_classes(found, classes, source / "train")
        _check_shape(train, clean_train, source / "train")
        classes = classes or found
        train = _relabel(train, found, classes)
        target_dir = targets or source / "targets"
        limited = not (source / "test").is_dir()
        if limited:  # only the poisons were exported: their file names are the poison ids
            if clean_train is None:
                raise PoisonedDataError(f"{source} is a 'limited' export (only the poisons): --data must give the clean set")
            rows = _rows_of(clean_train, train.ids, str(source / "train"))
            images = clean_train.images.clone()
            images[rows] = train.images
            poison_ids = train.ids.tolist()
            train, reference, test = Split(images, clean_train.labels.clone(), clean_train.ids), clean_train, clean_test
        else:
            test, test_found = read_indexed_folder(source / "test", mode)
            _check_classes(test_found, classes, source / "test")
            test = _relabel(test, test_found, classes)
            reference = None if clean_train is None else clean_train.subset(_rows_of(clean_train, train.ids, str(source / "train")))
    if not limited:  # every image was exported: the poisons are those that differ from the clean ones
        poison_ids = None if reference is None else measure(train, reference)["changed_pixels_ids"]
    target_split, target_found = read_indexed_folder(target_dir, mode)
    _check_classes(target_found, classes, target_dir)
    target_split = _relabel(target_split, target_found, classes)
    if test is clean_test and test is not None:  # the clean test split: the targets leave it, as Witches' Brew does
        test = test.subset((~torch.isin(test.ids, target_split.ids)).nonzero().flatten())
    truth = {} if clean_test is None else dict(zip(clean_test.ids.tolist(), clean_test.labels.tolist()))
    target_list = [Target(img, int(i), truth.get(int(i)), int(c)) for img, c, i in
                   zip(target_split.images, target_split.labels, target_split.ids)]
    clean_label = None if reference is None else bool((train.labels == reference.labels).all())  # unknown without --data
    poisoning = Poisoning(attack="witches_brew", kind="targeted", train=train, test=test, poison_ids=poison_ids,
                          clean_label=clean_label, targets=target_list, record={"imported_from": str(source)})
    return poisoning, classes, reference


def load_torch_file(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only`` (tensors, NumPy arrays, plain containers); anything else only with
    ``trust_pickle``, since unpickling can run code."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed numpy.core; files from NumPy 1 name the old one
    numpy_globals = [np.ndarray, np.dtype] + [type(np.dtype(t)) for t in ("b1", "u1", "i1", "i2", "i4", "i8", "f4", "f8")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        numpy_globals += [(core.multiarray._reconstruct, f"{module}._reconstruct"), (core.multiarray.scalar, f"{module}.scalar")]
    try:
        with torch.serialization.safe_globals(numpy_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise PoisonedDataError(f"{path} holds Python objects beyond tensors and arrays; loading it runs code from the "
                                    f"file. Pass --trust_pickle only if you trust where it came from ({err})") from err
        return torch.load(path, map_location="cpu", weights_only=False)


def _poison_indicator(source: Path, indicator: Path | None, trust_pickle: bool) -> np.ndarray:
    if indicator is None and (source / "poison_indicator.npy").is_file():
        indicator = source / "poison_indicator.npy"
    if indicator is not None:
        if indicator.suffix == ".npy":
            return np.load(indicator, allow_pickle=False)
        return np.asarray(load_torch_file(indicator, trust_pickle))
    result = source / "attack_result.pt"
    if not result.is_file():
        raise PoisonedDataError(f"{source}: no poison indicator (poison_indicator.npy or attack_result.pt); pass --poison_indicator")
    record = load_torch_file(result, trust_pickle)
    try:
        return np.asarray(record["bd_train"]["poison_indicator"])
    except (KeyError, TypeError) as err:
        raise PoisonedDataError(f"{result}: no bd_train.poison_indicator in it") from err


def import_backdoorbench(source: Path, clean_train: Split, clean_test: Split, classes: list[str], mode: str,
                         indicator: Path | None = None, trust_pickle: bool = False,
                         target_class: int | None = None) -> Poisoning:
    """A BackdoorBench record: clean training images from ``--data`` with the indicated ones replaced by the
    record's poisoned samples (and their labels); the triggered test images, if present, are the test."""
    flags = _poison_indicator(source, indicator, trust_pickle).astype(np.int64).ravel()
    if len(flags) != len(clean_train) or not set(np.unique(flags)) <= {0, 1}:
        raise PoisonedDataError(f"the poison indicator has {len(flags)} entries of {sorted(set(np.unique(flags)))}, "
                                f"expected 0/1 for each of the {len(clean_train)} clean training images")
    if not (source / "bd_test_dataset").is_dir():
        raise PoisonedDataError(f"{source}: no bd_test_dataset/ (the triggered test images), so poison success cannot be measured")
    poisoned = _numbered_labels(*read_indexed_folder(source / "bd_train_dataset", mode), len(classes), source / "bd_train_dataset")
    _check_shape(poisoned, clean_train, source / "bd_train_dataset")
    ids = clean_train.ids[torch.as_tensor(flags == 1)]
    rows = _rows_of(poisoned, ids, str(source / "bd_train_dataset"))
    images, labels = clean_train.images.clone(), clean_train.labels.clone()
    where = _rows_of(clean_train, ids, "poison indicator")
    images[where], labels[where] = poisoned.images[rows], poisoned.labels[rows]
    triggered = _numbered_labels(*read_indexed_folder(source / "bd_test_dataset", mode), len(classes), source / "bd_test_dataset")
    _check_shape(triggered, clean_test, source / "bd_test_dataset")
    if target_class is None:
        target_class = Counter(triggered.labels.tolist()).most_common(1)[0][0]
    extra, spec = {"poison_test": triggered}, {"mode": "images", "folder": "poison_test", "magnification": 1.0}
    return Poisoning(attack="backdoorbench", kind="triggered", train=Split(images, labels, clean_train.ids),
                     test=clean_test, poison_ids=ids.tolist(), clean_label=bool((labels == clean_train.labels).all()),
                     target_class=target_class, trigger_spec=spec, extra_folders=extra,
                     record={"imported_from": str(source)})


def _numbered_labels(split: Split, found: list[str], num_classes: int, folder: Path) -> Split:
    """BackdoorBench names label folders by number: labels are those numbers."""
    if not all(name.isdigit() and int(name) < num_classes for name in found):
        raise PoisonedDataError(f"{folder}: label folders must be numbers below {num_classes}, found {found}")
    return Split(split.images, torch.as_tensor([int(name) for name in found])[split.labels], split.ids)


def _unpickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def import_just_how_toxic(source: Path, clean_train: Split, clean_test: Split, mode: str, trust_pickle: bool) -> Poisoning:
    """The "Just How Toxic" benchmark's pickles: ``poisons.pickle`` [(PIL image, label)], ``target.pickle``
    (PIL image, true label), ``base_indices.pickle`` (training indices the poisons replace)."""
    if not trust_pickle:
        raise PoisonedDataError(f"{source}: these are Python pickles, and unpickling runs code from the file. "
                                "Pass --trust_pickle only if you trust where they came from")
    poisons, (target_image, target_label), base = (_unpickle(source / n) for n in
                                                   ("poisons.pickle", "target.pickle", "base_indices.pickle"))
    base = torch.as_tensor(np.asarray(base), dtype=torch.long).ravel()
    if len(base) != len(poisons):
        raise PoisonedDataError(f"{source}: {len(poisons)} poisons but {len(base)} base indices")
    rows = _rows_of(clean_train, base, str(source / "base_indices.pickle"))
    images, labels = clean_train.images.clone(), clean_train.labels.clone()
    stacked = torch.stack([hwc_to_chw(np.array(img.convert(mode))) for img, _ in poisons])
    _check_shape(Split(stacked, labels[rows], base), clean_train, source / "poisons.pickle")
    images[rows] = stacked
    labels[rows] = torch.as_tensor([int(label) for _, label in poisons])
    intended = Counter(int(label) for _, label in poisons).most_common(1)[0][0]
    target = Target(hwc_to_chw(np.array(target_image.convert(mode))), None, int(target_label), intended)
    return Poisoning(attack="just_how_toxic", kind="targeted", train=Split(images, labels, clean_train.ids),
                     test=clean_test, poison_ids=base.tolist(), clean_label=bool((labels == clean_train.labels).all()),
                     targets=[target],
                     record={"imported_from": str(source)})
