"""The training sets an evaluation defends: every distinct image purified once, each defended set written as a NumPy pair."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pureebm_lightning.callbacks.speed_options import to_channels_last
from pureebm_lightning.defenses.jpeg import JPEGPurifier
from pureebm_lightning.defenses.pureebm import Purifier
from pureebm_lightning.images import to_signed_unit, to_uint8
from pureebm_lightning.sources import NUMPY_DATA, NUMPY_LABELS, open_source


def load_set(folder: Path) -> tuple[torch.Tensor, list[int], list[str]]:
    """A training set's uint8 images (N, C, H, W), labels and ids (file stems)."""
    source = open_source(folder)
    images = torch.stack([source.load(i) for i in range(len(source))])
    return images, source.labels, [Path(k).stem for k in source.keys]


class DistinctImages:
    """Every distinct image of all sets once, so that an image shared by several sets is purified once."""

    def __init__(self) -> None:
        self.rows: dict[bytes, int] = {}
        self.images: list[torch.Tensor] = []
        self.originals: list[torch.Tensor] = []  # the clean image with the same id (itself when unpoisoned)

    def add(self, images: torch.Tensor, originals: torch.Tensor) -> list[int]:
        out = []
        for image, original in zip(images, originals):
            key = image.numpy().tobytes()
            if key not in self.rows:
                self.rows[key] = len(self.images)
                self.images.append(image)
                self.originals.append(original)
            out.append(self.rows[key])
        return out

    def __len__(self) -> int:
        return len(self.images)


def sweep_purifier(checkpoint: Path, steps: int, channels_last: bool = False) -> Purifier:
    """The purifier of the sweep (seed 0), optionally with the energy net and chains in channels-last layout (the
    same computation in another memory order)."""
    purifier = Purifier.from_checkpoint(checkpoint, steps=steps, seed=0)
    if channels_last:
        to_channels_last(purifier.energy_net, purifier.sampler)
    return purifier


def purify_distinct(purifier: Purifier, images: torch.Tensor, originals: torch.Tensor, snapshots: list[int],
                    curve: list[int], batch_size: int, label: str, first_index: int = 0) -> dict:
    """Psi_T of every image for each T in ``snapshots`` (uint8), and per image the energy, the L2 distance from
    the start and from the clean original at each step of ``curve`` (the paper's Figure 3, per image).

    The chain is :meth:`Purifier.walk` (the steps of ``purifier`` bound the snapshots), its noise seeded per batch
    by the batch's first row (+ ``first_index``), so each snapshot equals ``Purifier(steps=T)`` on the same
    batches (tested)."""
    out = {"snapshots": {t: torch.empty_like(images) for t in snapshots}, "curve": curve,
           "energy": torch.empty(len(images), len(curve)), "l2_start": torch.empty(len(images), len(curve)),
           "l2_clean": torch.empty(len(images), len(curve))}
    bar = tqdm(total=len(images), desc=f"purify {label} (T up to {max(snapshots + curve)})", unit="img", dynamic_ncols=True)
    for first in range(0, len(images), batch_size):
        rows = slice(first, first + batch_size)
        x0, clean = to_signed_unit(images[rows]), to_signed_unit(originals[rows])
        for step, x in purifier.walk(images[rows], first_index + first, snapshots + curve):
            if step in out["snapshots"]:
                out["snapshots"][step][rows] = to_uint8(x.clone())
            if step in curve:
                k = curve.index(step)
                with torch.no_grad():
                    out["energy"][rows, k] = purifier.energy_net(x).float()
                out["l2_start"][rows, k] = (x - x0).flatten(1).norm(dim=1)
                out["l2_clean"][rows, k] = (x - clean).flatten(1).norm(dim=1)
        bar.update(len(x0))
    bar.close()
    return out


def jpeg_distinct(images: torch.Tensor, quality: int) -> torch.Tensor:
    return torch.cat([JPEGPurifier(quality)(images[i : i + 512]) for i in range(0, len(images), 512)])


def digest(*parts) -> str:
    """A short hash of settings and tensors: names the caches, so changed settings never reuse old results."""
    h = hashlib.sha1()
    for part in parts:
        h.update(part.numpy().tobytes() if isinstance(part, torch.Tensor) else repr(part).encode())
    return h.hexdigest()[:10]


def write_defended(folder: Path, images: torch.Tensor, labels: list[int], dest: Path, settings: dict) -> Path:
    """``folder``'s training set replaced by ``images`` as a NumPy pair, its test/, targets/, trigger and
    poison.json beside it (linked), the layout `pureebm purify` reads for NumPy sets; ``settings`` (what made
    the images) go to defense.json."""
    if (dest / NUMPY_LABELS).is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    array = images.permute(0, 2, 3, 1).numpy()
    np.save(tmp / NUMPY_DATA, array[..., 0] if array.shape[-1] == 1 else array)
    for entry in open_source(folder).other_entries:
        (tmp / entry).symlink_to((folder / entry).resolve())
    (tmp / "defense.json").write_text(json.dumps({"source": str(folder), **settings}, indent=1))
    np.save(tmp / NUMPY_LABELS, np.asarray(labels, dtype=np.int64))  # last: its presence marks a finished set
    tmp.rename(dest)
    return dest
