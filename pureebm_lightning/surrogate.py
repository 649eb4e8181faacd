"""The attacker's own classifier (surrogate), trained with Lightning, and the augmentation attacks optimise through."""

from __future__ import annotations

import copy
import hashlib
import random
import warnings

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pureebm_lightning.classifier_module import ClassifierModule
from pureebm_lightning.classifier_nets import SmallCNN, SmallImageClassifier
from pureebm_lightning.images import to_signed_unit
from pureebm_lightning.splits import Split


class _Augmented(Dataset):
    """(image in [-1, 1], label) with random crops (and flips) applied to the uint8 image."""

    def __init__(self, split: Split, crop_padding: int, hflip: bool) -> None:
        self.split = split
        steps = [v2.RandomCrop(tuple(split.images.shape[2:]), padding=crop_padding)] if crop_padding else []
        self.augment = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if hflip else []))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return to_signed_unit(self.augment(self.split.images[i])), int(self.split.labels[i])


def surrogate_net(shape: tuple[int, int, int], num_classes: int, arch: str = "auto") -> nn.Module:
    """``auto``: the digits SmallCNN for images up to 16x16, ResNet-18 (CIFAR stem) above."""
    if arch == "auto":
        arch = "small_cnn" if shape[1] <= 16 else "resnet18"
    if arch == "small_cnn":
        return SmallCNN(num_classes, in_channels=shape[0])
    return SmallImageClassifier(arch, num_classes, in_channels=shape[0])


def fit(module: ClassifierModule, split: Split, epochs: int, accelerator: str = "auto", hflip: bool = False,
        progress: bool = True) -> ClassifierModule:
    """Train ``module`` on ``split`` with Lightning (random crops, batch 64); returned in eval mode on its device."""
    loader = DataLoader(_Augmented(split, crop_padding(split.images.shape), hflip), batch_size=64,
                        shuffle=True, drop_last=len(split) > 64)
    trainer = Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=progress)
    with warnings.catch_warnings():  # the module's validation_step is for `pureebm fit`; here there is no val set
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`")
        trainer.fit(module.train(), loader)
    return module.to(trainer.strategy.root_device).eval()  # Lightning hands the module back on the CPU


def train_surrogate(split: Split, num_classes: int, epochs: int, seed: int, arch: str = "auto",
                    accelerator: str = "auto", hflip: bool = False, progress: bool = True) -> ClassifierModule:
    """A classifier trained from scratch on ``split`` (SGD 0.05, momentum 0.9, steps at 2/3 and 7/8 of the
    epochs, random crops): the attacker's stand-in for the victim. Its initialisation is drawn from a seed
    derived from ``seed``, so a victim trained with the same seed does not share it.

    Trained once per process for the same split and settings: a later call gets a copy of the same model and the
    random state that training left, so its results do not depend on whether the model came from the memo."""
    digest = hashlib.sha1(split.images.numpy().tobytes())
    digest.update(split.labels.numpy().tobytes())
    key = (digest.hexdigest(), tuple(split.images.shape), num_classes, epochs, seed, arch, accelerator, hflip)
    if key in _TRAINED:
        module, state = _TRAINED[key]
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
        return copy.deepcopy(module)
    seed_everything((10_007 * seed + 1) % 2**32, verbose=False)
    channels = split.images.shape[1]
    milestones = [max(1, int(epochs * 2 / 3)), max(1, int(epochs * 7 / 8))]
    module = ClassifierModule(
        surrogate_net(tuple(split.images.shape[1:]), num_classes, arch), num_classes,
        mean=(0.5,) * channels, std=(0.5,) * channels,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, 0.1),
    )
    module = fit(module, split, epochs, accelerator, hflip, progress)
    _TRAINED.clear()  # one model kept: scenarios that share a surrogate come one after another
    _TRAINED[key] = (copy.deepcopy(module), (torch.get_rng_state(), np.random.get_state(), random.getstate()))
    return module


_TRAINED: dict[tuple, tuple[ClassifierModule, tuple]] = {}


def crop_padding(shape: tuple[int, ...]) -> int:
    """The RandomCrop padding of the training recipes: 2 pixels up to 16x16 (digits), 4 above (CIFAR)."""
    return 2 if shape[-1] <= 16 else 4


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator, hflip: bool = False) -> Tensor:
    """Each image of ``x`` translated by its own draw of up to ``max_shift`` pixels (black fill, like
    RandomCrop's padding) and, with ``hflip``, mirrored with probability 1/2: differentiable in ``x`` (the
    differentiable augmentation of Witches' Brew, and Narcissus' augmented images), so what is crafted
    survives the victim's augmentation."""
    n, _, h, w = x.shape
    if max_shift > 0:
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
        padded = F.pad(x, (max_shift,) * 4, value=-1.0)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    return x
