"""Image data modules for EBM training: every image in [-1, 1], batches of (image, label)."""

from pureebm_lightning.data.base import ImageDataModule
from pureebm_lightning.data.cifar10 import CIFAR10DataModule
from pureebm_lightning.data.digits import DigitsDataModule
from pureebm_lightning.data.image_folder import ImageFolderDataModule
from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.data.purified import PurifiedDataModule

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "ImageDataModule", "ImageFolderDataModule", "PoisonedSetDataModule", "PurifiedDataModule"]
