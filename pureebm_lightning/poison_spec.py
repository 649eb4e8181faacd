"""``poison.json``: what an attack did to a training folder, and how to test whether it worked.

Written by the attack tools beside ``train/`` and ``test/`` (``pureebm purify`` copies it unchanged, so a
purified folder is evaluated against the same attack). Two kinds:

- ``triggered`` (BadNets, Blended, Narcissus): ``target_class`` and a ``trigger`` with ``file`` (a .npy
  array, (C, H, W) or (1, C, H, W), in the [-1, 1] image space), ``mode`` ("additive": x + m * trigger;
  "patch": the trigger pasted at ``position`` [row, col]; "blend": (1 - alpha) x + alpha * trigger),
  ``magnification`` m (additive; the paper tests at 1, Narcissus' paper at 3) and ``alpha`` (blend); the
  modes are those of ``pureebm_lightning.poisoning.trigger_modes`` (WaNet adds "warp").
  Poison success: share of clean test images whose class is not the target that, triggered, are
  classified as the target (only those of ``trigger.source_class`` when a trigger is meant for one class). Mode "images" has no trigger array: ``folder`` holds test images already
  triggered by the attack's own tool (BackdoorBench's ``bd_test_dataset``), each under the class the
  attack wants it classified as, all counted; ``target_class`` is null when that class differs per image
  (BackdoorBench's all2all).
- ``targeted`` (Gradient Matching, Bullseye Polytope): ``targets``, a list of {``file``: image path
  relative to the folder, ``intended_class``}. Poison success: share of targets classified as intended.

``clean``: the attack "none" (the same split, unpoisoned): treated as a folder without ``poison.json``.

Other keys (``attack``, ``budget``, ``epsilon``, ``poison_indices``, ...) are recorded, not interpreted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

POISON_SPEC = "poison.json"


@dataclass
class PoisonSpec:
    """A parsed ``poison.json``; ``root`` is the folder it lies in."""

    root: Path
    attack: str
    kind: str
    target_class: int | None = None
    trigger: dict[str, Any] | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def find(cls, folder: str | Path) -> "PoisonSpec | None":
        """The spec in ``folder`` (a poisoned folder or its purified copy), or None for a clean folder."""
        path = Path(folder) / POISON_SPEC
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        kind = raw.get("kind")
        if kind == "clean":  # `pureebm poison --attack none`: the same split, nothing poisoned
            return None
        if kind not in ("triggered", "targeted"):
            raise ValueError(f"{path}: 'kind' must be 'triggered' or 'targeted', got {kind!r}")
        images_mode = (raw.get("trigger") or {}).get("mode") == "images"  # all2all: each image its own target
        if kind == "triggered" and (not raw.get("trigger") or (raw.get("target_class") is None and not images_mode)):
            raise ValueError(f"{path}: a triggered attack needs 'target_class' and 'trigger'")
        if kind == "targeted" and not raw.get("targets"):
            raise ValueError(f"{path}: a targeted attack needs 'targets'")
        return cls(Path(folder), raw.get("attack", "unknown"), kind, raw.get("target_class"), raw.get("trigger"),
                   raw.get("targets", []), raw)

    def trigger_array(self) -> Tensor:
        """The trigger as a float tensor: (C, H, W) for images and patches, (H, W, 2) for a "warp" grid."""
        array = np.load(self.root / self.trigger["file"], allow_pickle=False)
        return torch.as_tensor(array, dtype=torch.float32).reshape(array.shape[-3:])
