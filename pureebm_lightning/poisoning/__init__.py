"""Poisoned training sets: the attacks the paper defends against (``pureebm poison --attack``) and importers
for sets other tools made (``pureebm poison --import``), all written as a folder with ``poison.json``."""

from pureebm_lightning.poisoning.clean_data import CleanData, Split, load_clean_data
from pureebm_lightning.poisoning.poisoned_folder import Poisoning, Target, write_poisoned_folder

__all__ = ["CleanData", "Poisoning", "Split", "Target", "load_clean_data", "write_poisoned_folder"]
