"""BadNets (Gu et al. 2017): a small patch pasted on a share of training images, relabelled to the target."""

from __future__ import annotations

import torch

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_signed_unit
from pureebm_lightning.poisoning.attacks import register_attack
from pureebm_lightning.poisoning.budget import choose_rows, poison_count
from pureebm_lightning.poisoning.clean_data import CleanData
from pureebm_lightning.poisoning.poisoned_folder import Poisoning
from pureebm_lightning.splits import Split


def checkerboard(channels: int, size: int) -> torch.Tensor:
    """A ``size`` x ``size`` black-and-white checkerboard (uint8, white top-left), the BadNets pattern."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((rows + cols) % 2 == 0).to(torch.uint8).mul(255).expand(channels, size, size).contiguous()


@register_attack()
def badnets(clean: CleanData, target_class: int = 0, budget: float = 0.1, patch_size: int = 3, seed: int = 0) -> Poisoning:
    """BadNets, a patch backdoor (dirty label).

    Pastes a checkerboard one pixel in from the bottom-right corner of ``budget`` x N training images of other
    classes and relabels them ``target_class``.

    Args:
        target_class: the class the trigger leads to.
        budget: share of the training set poisoned.
        patch_size: side of the checkerboard patch, in pixels.
        seed: seed of the choice of poisoned images.
    """
    train, (channels, height, width) = clean.train, clean.shape
    if not 1 <= patch_size < min(height, width) - 1:
        raise PoisonedDataError(f"--patch_size must be between 1 and {min(height, width) - 2} for {height}x{width} images")
    rows = choose_rows(train.labels, poison_count(budget, len(train)), torch.Generator().manual_seed(seed),
                       not_class=target_class)
    patch, (r, c) = checkerboard(channels, patch_size), (height - patch_size - 1, width - patch_size - 1)
    images, labels = train.images.clone(), train.labels.clone()
    images[rows, :, r : r + patch_size, c : c + patch_size] = patch
    labels[rows] = target_class
    return Poisoning(
        attack="badnets", kind="triggered", train=Split(images, labels, train.ids), test=clean.test,
        poison_ids=train.ids[rows].tolist(), clean_label=False, target_class=target_class,
        trigger=to_signed_unit(patch)[None], trigger_spec={"mode": "patch", "position": [r, c], "magnification": 1.0},
        record={"budget": budget, "patch_size": patch_size},
    )
