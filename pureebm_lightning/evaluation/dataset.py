"""The images an evaluation runs on: the bundled digits as they are, or a stated subset and size of a dataset root."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pureebm_lightning.errors import UsageError
from pureebm_lightning.images import chw_to_pil
from pureebm_lightning.splits import Split


@dataclass
class EvaluationData:
    """Where the clean images come from and how much of them an evaluation uses.

    Args:
        root: ``digits`` (bundled, no download), a CIFAR-10 root in torchvision's format (``cifar-10-batches-py``
            inside) or a folder with ``train/<class>/<image>`` and ``test/<class>/<image>`` (the CIFAR-10 JPEG copy,
            CINIC-10, an ImageFolder export).
        image_size: side the images are resized to (antialiased), or null to keep them (digits: the bundled 16x16).
        train_per_class: training images kept per class (drawn with ``seed``), or null for all of them.
        test_per_class: test images kept per class, or null for all of them.
        holdout: share of the kept training images held out of the victim's split: the EBM's disjoint training data
            and the attacker's own data (the stand-in for the paper's CINIC-10 ImageNet part).
        attacker_data: a ``<class>/<image>`` folder with the same classes as the attacker's own images (surrogates,
            Narcissus' pool) instead of the held-out ones, e.g. the ImageNet part of CINIC-10 for CIFAR-10.
        grayscale: one channel (digits) instead of RGB.
        seed: seed of the per-class draw.
    """

    root: str = "digits"
    image_size: int | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    holdout: float = 0.2
    attacker_data: str | None = None
    grayscale: bool = True
    seed: int = 0

    def describe(self) -> str:
        if self.root == "digits":
            return "scikit-learn's digits (16x16 grey, bundled)"
        size = f"{self.image_size}x{self.image_size}" if self.image_size else "native size"
        keep = lambda n: "all" if n is None else f"{n} per class"  # noqa: E731
        return f"{self.root} ({keep(self.train_per_class)} training, {keep(self.test_per_class)} test images, {size})"

    def poison_flags(self, data: str) -> list[str]:
        """The `pureebm poison` options that select these images (``data``: what :meth:`prepare` returned); none for
        the bundled default, so that its folders keep the names earlier releases gave them."""
        if (data, self.holdout, self.attacker_data) == ("digits", 0.2, None):
            return []
        if self.attacker_data and self.holdout:
            raise UsageError(f"data.attacker_data replaces the holdout as the attacker's data: set data.holdout to 0 (it is {self.holdout})")
        flags = ["--data", data, "--holdout", str(self.holdout)]
        return flags + (["--attacker_data", str(Path(self.attacker_data).expanduser().resolve())] if self.attacker_data else [])

    def prepare(self, out: Path) -> str:
        """The ``--data`` of `pureebm poison` for these settings: ``digits``, or ``out/dataset`` written once (a
        ``train/`` and ``test/`` folder of PNGs named by the images' ids in the root, and ``dataset.json``)."""
        if self.root == "digits":
            if self.image_size not in (None, 16) or self.train_per_class or self.test_per_class or not self.grayscale:
                raise UsageError("data 'digits' is used whole at 16x16 grey: leave image_size, train_per_class, "
                                 "test_per_class unset and grayscale true")
            return "digits"
        if not Path(self.root).expanduser().is_dir():
            raise UsageError(f"data.root {self.root}: no such folder. It is 'digits', a CIFAR-10 root (cifar-10-batches-py "
                             "inside) or a folder with train/<class>/<image> and test/<class>/<image>; nothing is downloaded")
        dest = out / "dataset"
        settings = {"source": str(Path(self.root).expanduser().resolve()), **asdict(self)}
        for key in ("root", "holdout", "attacker_data"):  # the root as resolved (source) names the images, not as typed
            settings.pop(key)
        if (dest / "dataset.json").is_file():
            made = json.loads((dest / "dataset.json").read_text())
            if {k: made.get(k) for k in settings} != settings:
                raise UsageError(f"{dest} was made with other data settings ({made}); use another --out")
            return str(dest)
        from pureebm_lightning.poisoning.clean_data import load_clean_splits

        print(f"Data: reading {self.root}", flush=True)
        train, test, classes, _ = load_clean_splits(self.root)
        tmp = dest.with_name("dataset.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        counts = {}
        for name, split, per_class in (("train", train, self.train_per_class), ("test", test, self.test_per_class)):
            kept = self._subset(split, per_class)
            images = self._resize(kept.images)
            for image, label, index in zip(images, kept.labels.tolist(), kept.ids.tolist()):
                folder = tmp / name / classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                chw_to_pil(image).save(folder / f"{index}.png")
            counts[name] = len(kept)
        (tmp / "dataset.json").write_text(json.dumps({**settings, "classes": classes, "images": counts}, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        print(f"Data: {counts['train']} training and {counts['test']} test images in {dest}", flush=True)
        return str(dest)

    def _subset(self, split: Split, per_class: int | None) -> Split:
        if per_class is None:
            return split
        generator = torch.Generator().manual_seed(self.seed)
        rows = []
        for label in split.labels.unique().tolist():
            of_class = torch.nonzero(split.labels == label).flatten()
            if len(of_class) < per_class:
                raise UsageError(f"{self.root}: class {label} has {len(of_class)} images, fewer than {per_class} per class")
            rows.append(of_class[torch.randperm(len(of_class), generator=generator)[:per_class]])
        return split.subset(torch.cat(rows).sort().values)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if self.grayscale and images.shape[1] == 3:
            from torchvision.transforms.v2.functional import rgb_to_grayscale

            images = rgb_to_grayscale(images)
        if self.image_size is None or images.shape[-1] == self.image_size:
            return images
        from torchvision.transforms.v2.functional import resize

        return resize(images, [self.image_size, self.image_size], antialias=True)
