"""The attack "none": the same split, unpoisoned (the clean reference, and the floor's training set)."""

from __future__ import annotations

from pureebm_lightning.poisoning.attacks import register_attack
from pureebm_lightning.poisoning.clean_data import CleanData
from pureebm_lightning.poisoning.poisoned_folder import Poisoning


@register_attack()
def none(clean: CleanData) -> Poisoning:
    """No attack: writes the victim's split as it is, with the same holdout, so that it pairs with the attacked sets."""
    return Poisoning("none", "clean", clean.train, clean.test, poison_ids=[], clean_label=True)
