"""pureebm-lightning: purify poisoned training images with Langevin dynamics of an energy-based model."""

__version__ = "0.1.0"

from pureebm_lightning.chain_bank import ChainBank
from pureebm_lightning.classifier_module import ClassifierModule
from pureebm_lightning.ebm_module import EBMModule
from pureebm_lightning.energy_nets import ConvNetEnergy, SNGANResNetEnergy
from pureebm_lightning.langevin import LangevinSampler

__all__ = ["ChainBank", "ClassifierModule", "ConvNetEnergy", "EBMModule", "LangevinSampler", "SNGANResNetEnergy", "__version__"]
