"""pureebm-lightning: purify poisoned training images with Langevin dynamics of an energy-based model."""

from pureebm_lightning.lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ChainBank": "pureebm_lightning.chain_bank",
    "ClassifierModule": "pureebm_lightning.classifier_module",
    "EBMModule": "pureebm_lightning.ebm_module",
    "ConvNetEnergy": "pureebm_lightning.energy_nets",
    "SNGANResNetEnergy": "pureebm_lightning.energy_nets",
    "LangevinSampler": "pureebm_lightning.langevin",
    "Purifier": "pureebm_lightning.defenses.pureebm",
}
__all__ = [*sorted(_EXPORTS), "__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())  # imported on first use: `pureebm --help` loads no torch
