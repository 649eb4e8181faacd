"""One purification of a poisoned source into a :class:`PurifiedStore` by a defense: the claim of the folder, the
defense's fit, this process's blocks, each block's purification and write, the finish. ``pureebm purify`` drives it
from Lightning's predict loop (:class:`PurifyModule`); :class:`PurifiedDataModule` calls :meth:`run`."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pureebm_lightning.defense import Defense
from pureebm_lightning.errors import OutputLocked, UsageError
from pureebm_lightning.purification.purified_store import PurifiedStore
from pureebm_lightning.rank_zero import run_on_rank_zero
from pureebm_lightning.sources import BlockBatches, SourceImages

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy


class PurificationRun:
    """``defense`` purifying ``store``'s source in fixed blocks of ``batch_size`` (the unit of noise seeding and of
    resuming); ``diagnostic_points`` (PureEBM only) sums energies and distances along the chain at those steps."""

    def __init__(self, defense: Defense, store: PurifiedStore, batch_size: int, num_workers: int = 0,
                 diagnostic_points: list[int] | None = None) -> None:
        self.defense, self.store, self.batch_size, self.num_workers = defense, store, batch_size, num_workers
        self.points = diagnostic_points
        self.sums: torch.Tensor | None = None  # energy, distance, count at each point, over this process's blocks

    def claim(self, strategy: Strategy | None, overwrite: bool = False, wait: bool = False, poll_seconds: float = 5.0) -> None:
        """Global rank 0 takes the folder's lock, checks and prepares it (``wait``: while another run holds the lock,
        poll, with short collectives so that no rank times out; otherwise :class:`OutputLocked`); then the defense
        learns from the poisoned set, if it does and work remains (one process only: a defense that learns is refused
        under several); the lock is released if any of that fails. A failure on rank 0 is raised on every rank."""

        def take() -> bool:
            try:
                self.store.claim(overwrite)
            except OutputLocked:
                if not wait:
                    raise
                return False
            return True

        told = False
        while not run_on_rank_zero(strategy, take):
            if not told:
                rank_zero_info(f"Waiting for {self.store.lock.describe_holder()}, which is filling {self.store.out}")
                told = True
            time.sleep(poll_seconds)
        try:
            if not run_on_rank_zero(strategy, self.store.todo):
                return  # complete already: nothing to learn or purify
            if learns(self.defense):
                if strategy is not None and strategy.world_size > 1:
                    raise UsageError(f"{self.defense.name} learns from the poisoned set before purifying, which runs on one "
                                     "process only: purify on one device (--trainer.devices 1), then train on the output")
                device = strategy.root_device if strategy is not None else torch.device("cpu")
                self.defense.fit(self.store.source, self.store.state_dir, device)
        except BaseException:
            self.store.lock.release()
            raise
        if strategy is not None:
            strategy.barrier("purification-claimed")

    def blocks(self, rank: int = 0, world: int = 1) -> list[list[int]]:
        """This process's share of the blocks that still hold an image to purify."""
        return self.store.todo_blocks(self.batch_size)[rank::world]

    def loader(self, rank: int = 0, world: int = 1, blocks: list[list[int]] | None = None) -> DataLoader:
        """(uint8 images, source indices) of ``blocks`` (default: :meth:`blocks`), one block per batch."""
        warnings.filterwarnings("ignore", message=".*custom batch sampler `BlockBatches`.*")  # it returns every index
        return DataLoader(SourceImages(self.store.source), batch_sampler=BlockBatches(self.blocks(rank, world) if blocks is None else blocks),
                          num_workers=self.num_workers)

    def step(self, images: torch.Tensor, indices: torch.Tensor | list[int], rank: int = 0) -> None:
        """Purify one block and write it."""
        indices = [int(i) for i in indices]
        if self.points:
            purified, energy, dist = self.defense.trace(images, indices[0], self.points)
            sums = torch.stack([energy, dist, torch.full_like(energy, len(images))])
            self.sums = sums if self.sums is None else self.sums + sums
        else:
            purified = self.defense(images, indices[0])
        taken = getattr(self.defense, "last_steps", None) if getattr(self.defense, "stop", None) is not None else None
        self.store.write(indices, purified, rank=rank, steps=taken)  # a stopping rule's steps are kept with the block

    def finish(self, strategy: Strategy | None) -> None:
        """Once every rank has written its blocks, rank 0 assembles and completes the output."""
        self.store.finish_on_rank_zero(strategy)

    def run(self, device: torch.device, strategy: Strategy | None = None, overwrite: bool = False, wait: bool = True,
            progress: bool = True) -> int:
        """The whole purification on this process (claim, this rank's blocks, finish); returns the images it purified."""
        rank, world = (strategy.global_rank, strategy.world_size) if strategy is not None else (0, 1)
        try:
            self.claim(strategy, overwrite, wait)
            self.defense.to(device)
            mine = self.blocks(rank, world)
            loader = self.loader(blocks=mine)
            for images, indices in tqdm(loader, desc=f"Purifying ({self.defense.describe()})", disable=rank != 0 or not mine or not progress):
                self.step(images.to(device), indices, rank)
            self.finish(strategy)
        finally:
            self.store.lock.release()
        return sum(len(b) for b in mine)

    def describe_start(self) -> str:
        missing = self.store.todo()
        source = self.store.source
        return (f"Purifying {len(missing)} of {len(source)} images of {source.root} ({len(source) - len(missing)} already "
                f"done) with {self.defense.describe()} into {self.store.out}")


def learns(defense: Defense) -> bool:
    """Whether ``defense`` learns from the poisoned set before purifying it (it overrides :meth:`Defense.fit`)."""
    return type(defense).fit is not Defense.fit


def diagnostics_of(sums: torch.Tensor, points: list[int]) -> dict[str, Any]:
    """Means over every image of the summed energies and distances (``sums`` reduced over every rank)."""
    count = sums[2].clamp(min=1)
    return {"step": list(points), "mean_energy": (sums[0] / count).tolist(),
            "mean_l2_from_start": (sums[1] / count).tolist(), "images": int(sums[2, 0].item())}
