"""CIFAR-10 from a local root in torchvision's on-disk format (never downloaded)."""

from __future__ import annotations

from torchvision.datasets import CIFAR10

from pureebm_lightning.data.base import TO_SIGNED_UNIT, ImageDataModule, require_dir


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 train (training) and test (validation) splits from ``root/cifar-10-batches-py``."""

    def __init__(self, root: str = "data", batch_size: int = 128, num_workers: int = 4) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.root = root

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hint = (
            "Put CIFAR-10 in torchvision's format there (cifar-10-batches-py/data_batch_1 ... test_batch), e.g. "
            "by running torchvision.datasets.CIFAR10(root, download=True) on a machine with internet access, "
            "and pass --data.init_args.root ROOT. Nothing is downloaded here."
        )
        root = require_dir(self.root, "CIFAR-10 root", hint)
        require_dir(root / CIFAR10.base_folder, "CIFAR-10", hint)
        try:
            self.train_set = CIFAR10(str(root), train=True, transform=TO_SIGNED_UNIT, download=False)
            self.val_set = CIFAR10(str(root), train=False, transform=TO_SIGNED_UNIT, download=False)
        except RuntimeError as err:  # torchvision's integrity check
            raise FileNotFoundError(f"CIFAR-10 under {root} is incomplete or corrupted ({err}). {hint}") from err
        self.test_set = self.val_set
