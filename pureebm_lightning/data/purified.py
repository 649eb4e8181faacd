"""PurifiedDataModule: train on a poisoned set purified on the training device, without a separate step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.defense import Defense, run_key
from pureebm_lightning.defenses.pureebm import Purifier
from pureebm_lightning.errors import UsageError
from pureebm_lightning.images import to_signed_unit
from pureebm_lightning.pretrained.hub import prefetch
from pureebm_lightning.purification.purified_store import PurifiedStore
from pureebm_lightning.purification.run import PurificationRun, learns
from pureebm_lightning.sources import PoisonedSource


class PurifiedDataModule(PoisonedSetDataModule):
    """Batches of (purified image in [-1, 1], label) from a poisoned set (any layout ``pureebm purify`` reads),
    purified on the training device; clean test images as in :class:`PoisonedSetDataModule`.

    The defense is PureEBM from ``ckpt_path`` (T = ``steps``, noise ``seed``), or any ``defense`` object (e.g.
    ``class_path: pureebm_lightning.defenses.FriendlyNoise`` in YAML). Default: each image is purified once, on the
    training device in batches, before training starts, and cached under ``cache_dir/<defense>-<run key>/`` (the
    key hashes the defense's settings, the source and the block size) in the ``pureebm purify`` layout, so
    later epochs and later runs read it back. Under DDP each rank purifies its own share of what is not
    cached yet. ``every_epoch=True`` instead purifies each training batch after transfer to the device, with
    fresh noise every epoch (nothing cached; augmentation then comes before purification).

    Args:
        data: the poisoned folder.
        ckpt_path: the EBM (PureEBM): a checkpoint written by ``pureebm fit``, a pretrained folder, or a Hugging Face
            Hub repo ``hf://owner/name[@revision]``.
        steps: T (default: the T a pretrained EBM's config recommends, else 150, the paper's). seed: noise seed.
        defense: another defense, instead of ``ckpt_path``.
        cache_dir: where purified copies live (default: ``<data>_purify_cache`` beside the input).
        every_epoch: re-purify every epoch instead of once.
        purify_batch_size: batch (and noise block) size of the up-front purification.
        test_data, crop_padding, hflip, poison_spec, magnification, batch_size, num_workers: as in
            :class:`PoisonedSetDataModule`.
    """

    def __init__(
        self,
        data: str,
        ckpt_path: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        every_epoch: bool = False,
        purify_batch_size: int = 256,
        test_data: str | None = None,
        crop_padding: int = 4,
        hflip: bool = True,
        poison_spec: str | None = None,
        magnification: float | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        defense: Defense | None = None,
    ) -> None:
        super().__init__(data, test_data, crop_padding, hflip, poison_spec, magnification, batch_size, num_workers)
        if (ckpt_path is None) == (defense is None):
            raise ValueError("PurifiedDataModule needs either ckpt_path (PureEBM) or defense")
        self.ckpt_path, self.steps, self.seed, self.defense = ckpt_path, steps, seed, defense
        self.cache_dir, self.every_epoch, self.purify_batch_size = cache_dir, every_epoch, purify_batch_size
        self.purifier: Defense | None = None
        self.purified_now = 0  # images this process purified in setup (0 when all came from the cache)

    def training_images(self, source: PoisonedSource) -> Callable[[int], torch.Tensor]:
        strategy = self.trainer.strategy if self.trainer is not None else None
        if self.defense is None:
            prefetch(self.ckpt_path, strategy)  # under DDP rank 0 downloads a Hub repo, then every rank reads the cache
            self.defense = Purifier.from_source(self.ckpt_path, steps=self.steps, seed=self.seed)
        self.purifier = self.defense
        self.purifier.check_input(source.shape, source.root)
        device = strategy.root_device if strategy is not None else torch.device("cpu")
        if self.every_epoch:  # purified batch by batch in on_after_batch_transfer
            if learns(self.purifier):
                raise UsageError(f"every_epoch re-purifies each batch; {self.purifier.name} learns from the poisoned set "
                                 "first, so it runs cached only (every_epoch: false)")
            self.purifier.to(device)
            return source.load
        store = self._store(source)
        store.check(overwrite=False)  # every rank, on the same untouched folder: all refuse together
        if strategy is not None:
            strategy.barrier("purify-cache-checked")  # no rank checks while rank 0 is already preparing
        run = PurificationRun(self.purifier, store, self.purify_batch_size, self.num_workers)
        self.purified_now = run.run(device, strategy, wait=True, progress=True)
        return store.load

    def _store(self, source: PoisonedSource) -> PurifiedStore:
        root = Path(self.cache_dir) if self.cache_dir else source.root.with_name(source.root.name + "_purify_cache")
        identity = {**self.purifier.settings(), "batch_size": self.purify_batch_size}
        key = run_key({"source": str(source.root.resolve()), **identity})
        return PurifiedStore(source, root / f"{self.purifier.name}-{key[:16]}", identity, self.purifier.record())

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, indices = batch
        if self.every_epoch and self.trainer is not None and self.trainer.training:  # training batches only
            images = self.purifier(images, int(indices[0]), epoch=self.trainer.current_epoch + 1)
        return self._triggered(to_signed_unit(images), dataloader_idx), labels

    def describe(self) -> dict[str, Any]:
        defense = self.defense
        if defense is None or isinstance(defense, Purifier):
            steps = defense.steps if defense is not None else self.steps if self.steps is not None else "recommended"
            name = f"PureEBM T={steps}"
        else:
            name = defense.describe()
        return {**super().describe(), "defense": f"{name} (on the fly)"}
