"""Blended (Chen et al. 2017): a full-image pattern mixed into a share of training images, relabelled to the target."""

from __future__ import annotations

import torch

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_signed_unit
from pureebm_lightning.poisoning.attacks import register_attack
from pureebm_lightning.poisoning.budget import choose_rows, poison_count
from pureebm_lightning.poisoning.clean_data import CleanData
from pureebm_lightning.poisoning.poisoned_folder import Poisoning
from pureebm_lightning.splits import Split


@register_attack()
def blended(clean: CleanData, target_class: int = 0, budget: float = 0.1, alpha: float = 0.2, seed: int = 0) -> Poisoning:
    """Blended, a full-image blend backdoor (dirty label).

    Mixes a fixed uniform-noise image (drawn from ``seed``; the Blended paper's random pattern) into ``budget`` x N
    training images of other classes, ``(1 - alpha) x + alpha pattern`` stored as 8 bits, and relabels them
    ``target_class``.

    Args:
        target_class: the class the trigger leads to.
        budget: share of the training set poisoned.
        alpha: blend ratio of the pattern, in (0, 1).
        seed: seed of the pattern and of the choice of poisoned images.
    """
    if not 0 < alpha < 1:
        raise PoisonedDataError(f"--alpha must be in (0, 1), got {alpha}")
    train, generator = clean.train, torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, 256, clean.shape, generator=generator, dtype=torch.uint8)
    rows = choose_rows(train.labels, poison_count(budget, len(train)), generator, not_class=target_class)
    images, labels = train.images.clone(), train.labels.clone()
    mixed = (1 - alpha) * images[rows].float() + alpha * pattern.float()
    images[rows] = mixed.round().clamp(0, 255).to(torch.uint8)
    labels[rows] = target_class
    return Poisoning(
        attack="blended", kind="triggered", train=Split(images, labels, train.ids), test=clean.test,
        poison_ids=train.ids[rows].tolist(), clean_label=False, target_class=target_class,
        trigger=to_signed_unit(pattern)[None], trigger_spec={"mode": "blend", "alpha": alpha, "magnification": 1.0},
        record={"budget": budget, "alpha": alpha},
    )
