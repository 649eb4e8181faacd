"""PurifiedDataModule: train on a poisoned set purified on the training device, without a separate step."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.purification.output_lock import OutputLocked
from pureebm_lightning.purification.purified_store import PurifiedStore, run_on_rank_zero
from pureebm_lightning.purification.purifier import Purifier, to_signed_unit
from pureebm_lightning.purification.sources import BlockBatches, PoisonedSource, SourceImages


class PurifiedDataModule(PoisonedSetDataModule):
    """Batches of (purified image in [-1, 1], label) from a poisoned set (any layout ``pureebm purify`` reads),
    purified on the training device; clean test images as in :class:`PoisonedSetDataModule`.

    Default: each image is purified once, on the training device in batches, before training starts, and
    cached under ``cache_dir/<checkpoint hash>-<source hash>-T<steps>-seed<seed>-B<purify_batch_size>/`` in
    the ``pureebm purify`` layout, so
    later epochs and later runs read it back. Under DDP each rank purifies its own share of what is not
    cached yet. ``every_epoch=True`` instead purifies each training batch after transfer to the device, with
    fresh noise every epoch (nothing cached; augmentation then comes before purification).

    Args:
        data: the poisoned folder.
        ckpt_path: EBM checkpoint written by ``pureebm fit``.
        steps: T (paper: 150). seed: noise seed.
        cache_dir: where purified copies live (default: ``<data>_purify_cache`` beside the input).
        every_epoch: re-purify every epoch instead of once.
        purify_batch_size: batch (and noise block) size of the up-front purification.
        test_data, crop_padding, hflip, poison_spec, magnification, batch_size, num_workers: as in
            :class:`PoisonedSetDataModule`.
    """

    def __init__(
        self,
        data: str,
        ckpt_path: str,
        steps: int = 150,
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
    ) -> None:
        super().__init__(data, test_data, crop_padding, hflip, poison_spec, magnification, batch_size, num_workers)
        self.ckpt_path, self.steps, self.seed = ckpt_path, steps, seed
        self.cache_dir, self.every_epoch, self.purify_batch_size = cache_dir, every_epoch, purify_batch_size
        self.purifier: Purifier | None = None
        self.purified_now = 0  # images this process purified in setup (0 when all came from the cache)

    def _device_rank_world(self) -> tuple[torch.device, int, int]:
        if self.trainer is None:
            return torch.device("cpu"), 0, 1
        return self.trainer.strategy.root_device, self.trainer.global_rank, self.trainer.world_size

    def _barrier(self, name: str) -> None:
        if self.trainer is not None:
            self.trainer.strategy.barrier(name)

    def training_images(self, source: PoisonedSource) -> Callable[[int], torch.Tensor]:
        self.purifier = Purifier.from_checkpoint(self.ckpt_path, steps=self.steps, seed=self.seed)
        self.purifier.check_input(source.shape, source.root)
        device, rank, world = self._device_rank_world()
        self.purifier.energy_net.to(device)
        if self.every_epoch:
            return source.load  # purified batch by batch in on_after_batch_transfer
        return self._purify_into_cache(source, device, rank, world).load

    def _purify_into_cache(self, source: PoisonedSource, device: torch.device, rank: int, world: int) -> PurifiedStore:
        root = Path(self.cache_dir) if self.cache_dir else source.root.with_name(source.root.name + "_purify_cache")
        source_key = hashlib.sha256(str(source.root.resolve()).encode()).hexdigest()[:8]
        key = f"{self.purifier.checkpoint_sha256[:12]}-{source_key}-T{self.steps}-seed{self.seed}-B{self.purify_batch_size}"
        store = PurifiedStore(source, root / key, {**self.purifier.settings(), "batch_size": self.purify_batch_size})
        store.check(overwrite=False)  # every rank, on the same untouched folder: all refuse together
        self._barrier("purify-cache-checked")  # no rank checks while rank 0 is already preparing
        self._lock_and_prepare(store)
        try:
            self._barrier("purify-cache-prepared")  # every rank lists what is missing only after rank 0 prepared
            mine = store.todo_blocks(self.purify_batch_size)[rank::world]
            loader = DataLoader(SourceImages(source), batch_sampler=BlockBatches(mine), num_workers=self.num_workers)
            for images, indices in tqdm(loader, desc=f"Purifying (T = {self.steps})", disable=rank != 0 or not mine):
                store.write(indices.tolist(), self.purifier(images.to(device), int(indices[0])), rank=rank)
            self.purified_now = sum(len(b) for b in mine)
            store.finish_on_rank_zero(self.trainer.strategy if self.trainer is not None else None)
        finally:
            store.lock.release()
        return store

    def _lock_and_prepare(self, store: PurifiedStore, poll_seconds: float = 5.0) -> None:
        """Rank 0 claims the cache (another run filling it: wait, polling, so that every collective returns at once
        and no rank times out); a failure there is raised on every rank."""
        strategy = self.trainer.strategy if self.trainer is not None else None

        def claim() -> bool:
            try:
                store.claim(overwrite=False)
            except OutputLocked:
                return False
            return True

        told = False
        while not run_on_rank_zero(strategy, claim):
            if not told:
                rank_zero_info(f"Waiting for {store.lock.describe_holder()}, which is filling the cache {store.out}")
                told = True
            time.sleep(poll_seconds)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, indices = batch
        if self.every_epoch and self.trainer is not None and self.trainer.training:  # training batches only
            images = self.purifier(images, int(indices[0]), epoch=self.trainer.current_epoch + 1)
        return self._triggered(to_signed_unit(images), dataloader_idx), labels

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "defense": f"PureEBM T={self.steps} (on the fly)"}
