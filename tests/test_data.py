"""Data modules on real digits and on small image folders made here; missing data fails at once."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from sklearn.datasets import load_digits

from pureebm_lightning import ConvNetEnergy, EBMModule, LangevinSampler
from pureebm_lightning.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
)


def test_digits_are_real_8bit_images_in_signed_unit_range_with_disjoint_splits():
    dm = DigitsDataModule(image_size=16, val_fraction=0.1, test_fraction=0.2)
    dm.setup()
    x, y = dm.train_set.tensors
    assert x.shape[1:] == (1, 16, 16) and x.min() == -1 and x.max() == 1
    levels = (x + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the 8-bit grid
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sum(sizes) == 1797 and sizes[1:] == [179, 359]
    # the split is a fixed-seed permutation of the indices: test first, then validation, then training
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dm.test_set.tensors[1], torch.as_tensor(load_digits().target)[order[:359]])
    assert torch.equal(dm.train_set.tensors[1], torch.as_tensor(load_digits().target)[order[538:]])
    assert set(y.tolist()) == set(range(10))
    rgb = DigitsDataModule(image_size=8, rgb=True)
    rgb.setup()
    img = rgb.train_set.tensors[0]
    assert img.shape[1:] == (3, 8, 8) and torch.equal(img[:, 0], img[:, 2])


def make_folder(root, size=(12, 12), mode="RGB", classes=("cat", "dog"), per_class=3, prefix="n"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (*size[::-1], 3) if mode == "RGB" else size[::-1]
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{prefix}{i}.png")
        Image.fromarray(np.zeros((*size[::-1], 3), np.uint8)).save(root / c / f"cifar10-train-{c}.png")


def test_image_folder_loads_resizes_filters_and_trains_without_a_validation_split(tmp_path):
    make_folder(tmp_path / "train")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, file_pattern="n*", batch_size=2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 6  # the cifar10-* files are left out
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert dm.val_dataloader() == []
    module = EBMModule(ConvNetEnergy(3, 4, 8), bank_size=4, sampler=LangevinSampler(n_steps=2))
    Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False).fit(module, dm)
    assert module.global_step == 2

    gray = ImageFolderDataModule(str(tmp_path), grayscale=True, batch_size=7, num_workers=0)
    gray.setup()
    assert len(gray.train_set) == 8 and next(iter(gray.train_dataloader()))[0].shape == (7, 1, 12, 12)


def test_image_folder_validation_split(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "valid", per_class=1)
    dm = ImageFolderDataModule(str(tmp_path), val_dir="valid", batch_size=2, num_workers=0)
    dm.setup()
    assert len(dm.val_set) == 4 and dm.val_set.classes == ["cat", "dog"]


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (lambda root: None, {}, r"image folder root not found: .*missing"),
        (lambda root: (root / "train").mkdir(parents=True), {}, r"No usable images under .*train"),
        (lambda root: make_folder(root / "train"), {"val_dir": "valid"}, r"split 'valid' not found"),
    ],
)
def test_image_folder_problems_fail_with_where_the_data_must_be(tmp_path, make, kwargs, match):
    root = tmp_path / "missing"
    make(root)
    with pytest.raises(FileNotFoundError, match=match):
        ImageFolderDataModule(str(root), num_workers=0, **kwargs).setup()


def test_cifar10_missing_root_says_where_and_downloads_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found: .*cifar-10-batches-py.*Nothing is downloaded"):
        CIFAR10DataModule(str(tmp_path)).setup()
    assert list(tmp_path.iterdir()) == []


def test_cifar10_reads_torchvisions_format(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # the real files carry fixed MD5 sums; these small stand-ins do not
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=4, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 20 and len(dm.val_set) == 4
    x, y = next(iter(dm.val_dataloader()))
    raw = pickle.loads((folder / "test_batch").read_bytes())["data"][0].reshape(3, 32, 32)
    assert torch.allclose(x[0], torch.as_tensor(raw, dtype=torch.float32) / 127.5 - 1, atol=1e-6)
    assert y.tolist() == [0, 1, 2, 3]
