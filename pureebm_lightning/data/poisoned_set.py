"""A training set on disk as it is (poisoned, or already purified), with its clean test split, for classifiers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import read_image, to_signed_unit
from pureebm_lightning.poison_spec import PoisonSpec
from pureebm_lightning.poisoning.trigger_modes import apply_trigger, uses_trigger_array
from pureebm_lightning.sources import PoisonedSource, open_source


class _Picked:
    """``load`` restricted to ``indices`` (picklable, for loader workers)."""

    def __init__(self, load: Callable[[int], torch.Tensor], indices: list[int]) -> None:
        self.load, self.indices = load, indices

    def __call__(self, j: int) -> torch.Tensor:
        return self.load(self.indices[j])


class _TargetImages:
    """The target images of a targeted attack, read like the test images and checked against their shape."""

    def __init__(self, files: list[Path], mode: str, shape: tuple[int, int, int]) -> None:
        self.files, self.mode, self.shape = files, mode, shape

    def __call__(self, j: int) -> torch.Tensor:
        image = read_image(self.files[j], self.mode)
        if tuple(image.shape) != tuple(self.shape):
            raise PoisonedDataError(f"{self.files[j]}: target image of shape {tuple(image.shape)}, the test images are {self.shape}")
        return image


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
        poison_spec: a ``poison.json`` to test against instead of the one in ``data``: point a model trained
            on clean data at the attack's spec to measure the poison-success floor (docs/method.md).
        magnification: test-time trigger magnification, replacing the spec's (PureGen: 1, Narcissus: 3).
        batch_size, num_workers: for every loader.
        in_memory: decode every training image once and keep them in memory (small sets: faster epochs).
    """

    def __init__(self, data: str, test_data: str | None = None, crop_padding: int = 4, hflip: bool = True,
                 poison_spec: str | None = None, magnification: float | None = None,
                 batch_size: int = 128, num_workers: int = 0, in_memory: bool = False) -> None:
        super().__init__()
        self.data, self.test_data, self.crop_padding, self.hflip = data, test_data, crop_padding, hflip
        self.poison_spec, self.magnification = poison_spec, magnification
        self.batch_size, self.num_workers, self.in_memory = batch_size, num_workers, in_memory
        self.source: PoisonedSource | None = None
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.poison: PoisonSpec | None = None  # the attack tested against
        self.own_poison: PoisonSpec | None = None  # the training folder's own poison.json
        self.poison_test_set: Dataset | None = None
        self.trigger: torch.Tensor | None = None  # a triggered attack's pattern, added to poisoned test images

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
            if not Path(self.data).expanduser().is_dir():
                raise PoisonedDataError(
                    f"{self.data}: no such folder (data.init_args.data). Make it with `pureebm poison --attack badnets "
                    f"--out {self.data}` (or --import FORMAT --source PATH for another tool's poisons), or purify one "
                    f"into it with `pureebm purify --data POISONED_DIR --out {self.data}`")
            self.source = open_source(self.data)
            manifest = self.source.root / "manifest.json"
            if manifest.is_file() and json.loads(manifest.read_text()).get("complete") is False:
                raise FileNotFoundError(f"{self.source.root} is an unfinished purify output: run the same `pureebm purify` again to finish it")
        if stage in (None, "fit") and self.train_set is None:  # `pureebm test` needs no training images
            load = self.training_images(self.source)
            if self.in_memory:
                load = [load(i) for i in range(len(self.source.labels))].__getitem__
            self.train_set = LabelledImages(load, self.source.labels, self._augment(self.source.shape))
        if self.test_set is not None:
            return
        beside = self.source.split == "train" or self.source.kind == "numpy"
        test_root = self.test_data or (self.source.root / "test" if beside else None)
        self.own_poison = PoisonSpec.find(self.source.root)
        self.poison = PoisonSpec.find(Path(self.poison_spec).parent) if self.poison_spec else self.own_poison
        if test_root is not None and Path(test_root).is_dir():
            test = open_source(test_root)
            labels = self._labels_as_in_training(test)
            self.test_set = LabelledImages(test.load, labels)
            if self.poison is not None:
                self.poison_test_set = self._poison_test_set(test, labels)
                if self.poison.kind == "triggered" and uses_trigger_array(self.poison.trigger["mode"]):
                    self.trigger = self.poison.trigger_array()

    def _poison_test_set(self, test: PoisonedSource, labels: list[int]) -> Dataset:
        """Triggered: the clean test images not of the target class, labelled with the target (the trigger is
        added on the device). Targeted: the target images, labelled with the class the attacker intended."""
        spec = self.poison
        if spec.kind == "triggered" and not uses_trigger_array(spec.trigger["mode"]):  # triggered by the attack's own tool
            triggered = open_source(spec.root / spec.trigger["folder"])
            if triggered.shape != test.shape:
                raise PoisonedDataError(f"{triggered.root}: images of shape {triggered.shape}, the test images are {test.shape}")
            return LabelledImages(triggered.load, self._labels_as_in_training(triggered))  # the attacker's labels
        if spec.kind == "triggered":
            source_class = spec.trigger.get("source_class")  # a source-specific trigger: only that class is tested
            keep = [i for i, label in enumerate(labels) if label != spec.target_class and source_class in (None, label)]
            return LabelledImages(_Picked(test.load, keep), [spec.target_class] * len(keep))
        files = [spec.root / t["file"] for t in spec.targets]
        return LabelledImages(_TargetImages(files, test.mode, test.shape), [int(t["intended_class"]) for t in spec.targets])

    def describe(self) -> dict[str, Any]:
        """What a results row needs: the attack (from ``poison.json``) and the defense the training data had."""
        manifest_path = self.source.root / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if manifest.get("defense") == "jpeg":
            defense = f"JPEG q={manifest.get('jpeg_quality')}"
        elif manifest.get("defense") == "pureebm":
            defense = f"PureEBM T={manifest['steps']}"
        elif manifest.get("defense"):  # another registered defense: its name and its settings
            settings = ", ".join(f"{k}={manifest[k]}" for k in manifest.get("identity", [])
                                 if k not in ("defense", "source", "batch_size", "precision", "tf32", "quantised_bits"))
            defense = f"{manifest['defense']} ({settings})" if settings else manifest["defense"]
        elif self.poison is not None and self.own_poison is None:
            defense = "clean training data (floor)"
        else:
            defense = "none"
        spec = self.poison
        attack = spec.attack if spec else "clean"
        if spec is not None and spec.kind == "triggered":
            attack += f" x{self._magnification():g}"
        return {"attack": attack, "kind": spec.kind if spec else "",
                "target_class": spec.target_class if spec else "", "defense": defense,
                "poison_count": len(self.poison_test_set) if self.poison_test_set is not None else ""}

    def _magnification(self) -> float:
        return self.magnification if self.magnification is not None else float(self.poison.trigger.get("magnification", 1.0))

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

    def test_dataloader(self) -> list[DataLoader]:
        """[clean test images] or, for a folder with ``poison.json``, [clean, poisoned test images]."""
        if self.test_set is None:
            raise FileNotFoundError(f"no clean test images: {self.data} has no test/ split and test_data is not set")
        sets = [self.test_set] + ([self.poison_test_set] if self.poison is not None else [])
        return [DataLoader(s, batch_size=self.batch_size, num_workers=self.num_workers) for s in sets]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = batch
        return self._triggered(to_signed_unit(images), dataloader_idx), labels

    def _triggered(self, x: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """Adds the trigger to the poisoned test loader's images (test loader 1 of a triggered attack)."""
        if dataloader_idx != 1 or not self._testing():
            return x
        return self.add_trigger(x)

    def add_trigger(self, x: torch.Tensor, magnification: float | None = None) -> torch.Tensor:
        """Images in [-1, 1] of ``poison_test_set`` as the attack tests them: with the trigger added at ``magnification``
        (default: this module's), or unchanged for targeted attacks and for attacks whose poison test images already
        carry their trigger (mode "images")."""
        if self.trigger is None:
            return x
        t = self.poison.trigger
        return apply_trigger(x, self.trigger, t, self._magnification() if magnification is None else magnification)

    def _testing(self) -> bool:
        return self.trainer is not None and self.trainer.testing
