"""Poisoned training sets: the attacks the paper defends against (``pureebm poison --attack``) and importers
for sets other tools made (``pureebm poison --import``), all written as a folder with ``poison.json``."""

from pureebm_lightning.lazy_exports import lazy_exports

_EXPORTS = {
    "CleanData": "pureebm_lightning.poisoning.clean_data",
    "Split": "pureebm_lightning.splits",
    "load_clean_data": "pureebm_lightning.poisoning.clean_data",
    "Poisoning": "pureebm_lightning.poisoning.poisoned_folder",
    "Target": "pureebm_lightning.poisoning.poisoned_folder",
    "write_poisoned_folder": "pureebm_lightning.poisoning.poisoned_folder",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
