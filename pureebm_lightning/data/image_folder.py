"""Any ImageFolder tree: CINIC-10, Tiny-ImageNet, a user's own images."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from pureebm_lightning.data.base import TO_SIGNED_UNIT, ImageDataModule, require_dir
from pureebm_lightning.images import read_pil
from pureebm_lightning.sources import refuse_link_loops


class ImageFolderDataModule(ImageDataModule):
    """Images under ``root/train_dir/<class>/...`` (and optionally ``root/val_dir/<class>/...``).

    Args:
        root: dataset root.
        train_dir: training split folder under ``root`` ("" for ``root`` itself).
        val_dir: optional validation split folder (CINIC-10: "valid").
        image_size: resize to this square size; None keeps the files' size.
        grayscale: load one channel instead of RGB.
        file_pattern: keep only files whose name matches this glob; ``"n*"`` selects the ImageNet part
            of CINIC-10, which the paper trains its EBM on.
    """

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str | None = None,
        image_size: int | None = None,
        grayscale: bool = False,
        file_pattern: str | None = None,
        batch_size: int = 128,
        num_workers: int = 4,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.root, self.train_dir, self.val_dir = root, train_dir, val_dir
        self.image_size, self.grayscale, self.file_pattern = image_size, grayscale, file_pattern

    def _transform(self) -> v2.Compose:
        steps = [v2.ToImage()]
        if self.grayscale:
            steps.append(v2.Grayscale())
        if self.image_size is not None:
            steps.append(v2.Resize((self.image_size, self.image_size), antialias=True))
        return v2.Compose([*steps, TO_SIGNED_UNIT])

    def _split(self, name: str) -> ImageFolder:
        hint = f"Expected an ImageFolder tree {Path(self.root) / name}/<class_name>/<image file>."
        folder = require_dir(Path(self.root) / name, f"image folder split {name!r}", hint)
        pattern = self.file_pattern
        kept = None if pattern is None else (lambda p: fnmatch(Path(p).name, pattern) and p.lower().endswith(IMG_EXTENSIONS))
        try:
            return ImageFolder(str(refuse_link_loops(folder)), transform=self._transform(), is_valid_file=kept, loader=read_pil)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"No usable images under {folder} ({err}). {hint}") from err

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        require_dir(self.root, "image folder root", "Pass --data.init_args.root pointing at your images.")
        self.train_set = self._split(self.train_dir)
        if self.val_dir is not None:
            self.val_set = self._split(self.val_dir)
