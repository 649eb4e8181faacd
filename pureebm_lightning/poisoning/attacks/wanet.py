"""WaNet (Nguyen and Tran, ICLR 2021): a backdoor whose trigger is a smooth random warp of the whole image.

As the authors' code makes it: a k x k field of uniform noise in [-1, 1], scaled to mean |value| 1, upsampled
bicubically (align_corners) to the image size, and added, times ``strength / H``, to the identity sampling grid
(clamped to [-1, 1]); images are resampled through it with ``grid_sample(..., align_corners=True)``. Poisoned
images (``budget`` x N, of other classes) are warped and relabelled to the target; "noise mode" images
(``cross_ratio`` times as many, of any class) are warped through the grid plus fresh uniform noise of 1/H and keep
their labels, so that a model learns the exact warp, not any warp. The authors pick poisons per batch at every
epoch; here, as in BackdoorBench's exported sets, they are one fixed set written to disk. The test-time trigger is
the trigger mode "warp" (the grid is ``trigger.npy``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_signed_unit, to_uint8
from pureebm_lightning.poisoning.attacks import register_attack
from pureebm_lightning.poisoning.budget import choose_rows, poison_count
from pureebm_lightning.poisoning.clean_data import CleanData
from pureebm_lightning.poisoning.poisoned_folder import Poisoning
from pureebm_lightning.poisoning.trigger_modes import register_trigger_mode
from pureebm_lightning.splits import Split


def warp_grid(height: int, width: int, k: int = 4, strength: float = 0.5, grid_rescale: float = 1.0,
              generator: torch.Generator | None = None) -> Tensor:
    """The WaNet sampling grid, (1, H, W, 2) in [-1, 1] (x, y order, as ``grid_sample`` takes it)."""
    ins = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    identity = torch.stack((cols, rows), 2)[None]
    return ((identity + strength * noise / height) * grid_rescale).clamp(-1, 1)


@register_trigger_mode("warp")
def warp(x: Tensor, grid: Tensor, spec: dict, magnification: float) -> Tensor:
    """Images in [-1, 1] resampled through the WaNet ``grid`` ((1, H, W, 2) or (H, W, 2)); no magnification."""
    grid = grid.to(x).reshape(1, *x.shape[-2:], 2).expand(len(x), -1, -1, -1)
    return F.grid_sample(x, grid, align_corners=True)


@register_attack()
def wanet(clean: CleanData, target_class: int = 0, budget: float = 0.1, cross_ratio: float = 2.0, k: int = 4,
          strength: float = 0.5, grid_rescale: float = 1.0, seed: int = 0) -> Poisoning:
    """WaNet, a warping backdoor (dirty label).

    Warps ``budget`` x N training images of other classes with one fixed smooth field and relabels them
    ``target_class``; warps ``cross_ratio`` times as many others with the field plus noise, labels kept.

    Args:
        target_class: the class the warp leads to.
        budget: share of the training set poisoned (the authors' pc: 0.1).
        cross_ratio: noise-mode images per poisoned image (the authors': 2; 0 turns noise mode off).
        k: side of the control grid of the warp field (the authors': 4).
        strength: s, the warp's strength (the authors': 0.5; the field moves pixels by about s/2 pixels).
        grid_rescale: scale of the warped grid (the authors': 1).
        seed: seed of the field, the noise and the choice of images.
    """
    if k < 2 or strength <= 0 or cross_ratio < 0 or grid_rescale <= 0:
        raise PoisonedDataError("WaNet needs --k >= 2, --strength > 0, --grid_rescale > 0 and --cross_ratio >= 0")
    train, (_, height, width) = clean.train, clean.shape
    generator = torch.Generator().manual_seed(seed)
    grid = warp_grid(height, width, k, strength, grid_rescale, generator)
    rows = choose_rows(train.labels, poison_count(budget, len(train)), generator, not_class=target_class)
    others = torch.ones(len(train), dtype=torch.bool)
    others[rows] = False
    free = others.nonzero().flatten()
    count = min(round(cross_ratio * len(rows)), len(free))
    cross = free[torch.randperm(len(free), generator=generator)[:count]].sort().values
    images, labels = train.images.clone(), train.labels.clone()
    images[rows] = to_uint8(warp(to_signed_unit(images[rows]), grid, {}, 1.0))
    if count:
        jitter = (torch.rand(count, height, width, 2, generator=generator) * 2 - 1) / height
        noisy = (grid + jitter).clamp(-1, 1)
        images[cross] = to_uint8(F.grid_sample(to_signed_unit(images[cross]), noisy, align_corners=True))
    labels[rows] = target_class
    changed = torch.cat([rows, cross]).sort().values
    return Poisoning(
        attack="wanet", kind="triggered", train=Split(images, labels, train.ids), test=clean.test,
        poison_ids=train.ids[changed].tolist(), clean_label=False, target_class=target_class, trigger=grid,
        trigger_spec={"mode": "warp", "magnification": 1.0},
        record={"budget": budget, "cross_ratio": cross_ratio, "k": k, "strength": strength, "grid_rescale": grid_rescale,
                "backdoor_ids": train.ids[rows].tolist(), "noise_mode_ids": train.ids[cross].tolist()},
    )
