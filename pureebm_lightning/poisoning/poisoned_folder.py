"""Write an attack's result as a poisoned folder: ``train/``, ``test/``, ``targets/``, the trigger and ``poison.json``."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pureebm_lightning import __version__
from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import chw_to_pil
from pureebm_lightning.poison_spec import POISON_SPEC
from pureebm_lightning.splits import Split

TRIGGER_FILE = "trigger.npy"


@dataclass
class Target:
    """A targeted attack's target: a test image the attacker wants classified as ``intended_class``."""

    image: Tensor
    id: int | None  # its index in the test split, when known (also its file name)
    true_class: int | None
    intended_class: int


@dataclass
class Poisoning:
    """What an attack made: the victim's training set after it, which ids it poisoned, and how to test it.

    ``train`` has the clean training set's rows and ids; ``trigger`` (float, [-1, 1] space: (1, C, H, W), or
    BadNets' (1, C, p, p) patch, or WaNet's (1, H, W, 2) sampling grid) and ``trigger_spec`` (mode, magnification, ...) are for triggered attacks,
    ``targets`` for targeted ones; ``extra_folders`` are written beside ``train/`` (an imported BackdoorBench
    record's triggered test images, ``poison_test/``).
    ``record`` holds attack-specific facts for ``poison.json`` (parameters, objective before/after, ...).
    """

    attack: str
    kind: str
    train: Split
    test: Split
    poison_ids: list[int] | None
    clean_label: bool | None  # None: unknown (an import without the clean set)
    target_class: int | None = None
    trigger: Tensor | None = None
    trigger_spec: dict[str, Any] | None = None
    targets: list[Target] = field(default_factory=list)
    extra_folders: dict[str, Split] = field(default_factory=dict)  # e.g. BackdoorBench's triggered test images
    record: dict[str, Any] = field(default_factory=dict)


def measure(poisoned: Split, clean: Split) -> dict[str, Any]:
    """Compare a poisoned training set with the clean one it came from, row by row (same ids).

    Returns the ids whose pixels changed, whose labels changed, and the largest pixel change (l_inf, in 1/255).
    """
    if not torch.equal(poisoned.ids, clean.ids) or poisoned.images.shape != clean.images.shape:
        raise PoisonedDataError("the poisoned and clean training sets do not have the same images in the same order")
    diff = (poisoned.images.int() - clean.images.int()).abs().flatten(1).amax(1)
    return {
        "changed_pixels_ids": poisoned.ids[diff > 0].tolist(),
        "relabelled_ids": poisoned.ids[poisoned.labels != clean.labels].tolist(),
        "linf_255": int(diff.max()) if len(diff) else 0,
    }


def _compact_lists(text: str) -> str:
    """JSON with lists of numbers on one line (poison indices would otherwise take a line each)."""
    return re.sub(r"\[[-\d.e,\s]*\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]", text)


def _write_split(folder: Path, split: Split, classes: list[str]) -> None:
    for label in set(split.labels.tolist()):  # only classes with images: ImageFolder refuses empty class folders
        (folder / classes[label]).mkdir(parents=True, exist_ok=True)
    for image, label, i in zip(split.images, split.labels.tolist(), split.ids.tolist()):
        chw_to_pil(image).save(folder / classes[label] / f"{i}.png")


def check_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as an absolute path, if it may be written: new, or (with ``overwrite``) a poisoned folder this tool
    wrote. Checked before an attack runs, so a refusal does not throw its work away."""
    out = Path(out).expanduser().resolve()
    if out.exists():
        if not overwrite:
            raise PoisonedDataError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
        if not _written_here(out):
            raise PoisonedDataError(f"{out} exists and is not a poisoned folder written by `pureebm poison` (no {POISON_SPEC} "
                                    "with its command and version, or a purify output): not replacing it")
    return out


def _written_here(folder: Path) -> bool:
    """A folder `pureebm poison` wrote: its poison.json records the command and version, and it is not a purify
    output (which carries a copy of poison.json beside its own manifest.json)."""
    try:
        spec = json.loads((folder / POISON_SPEC).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and "command" in spec and "version" in spec and not (folder / "manifest.json").exists()


def write_poisoned_folder(out: str | Path, result: Poisoning, classes: list[str], clean_train: Split | None,
                          facts: dict[str, Any], overwrite: bool = False) -> dict[str, Any]:
    """Write ``result`` under ``out`` and return the ``poison.json`` written.

    The folder is built in a hidden folder beside ``out`` and renamed into place at the end (a replaced
    folder is moved aside first and deleted last), so an interrupted or failed run leaves the old folder or
    the new one, never a half-written one. ``clean_train`` (when known) is compared with the poisoned set:
    the measured l_inf, changed and relabelled ids go into ``poison.json``; ``facts`` (data source,
    parameters, ...) too.
    """
    out = check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; a dataset folder follows the umask
    old = None
    try:
        spec = _write(partial, result, classes, clean_train, facts)
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{partial.name[-8:]}")
            out.rename(old)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            old.rename(out)  # the old folder back in place
        raise
    if old is not None:
        shutil.rmtree(old)
    return spec


def _write(partial: Path, result: Poisoning, classes: list[str], clean_train: Split | None, facts: dict[str, Any]) -> dict[str, Any]:
    _write_split(partial / "train", result.train, classes)
    _write_split(partial / "test", result.test, classes)
    for name, split in result.extra_folders.items():
        _write_split(partial / name, split, classes)
    spec: dict[str, Any] = {"attack": result.attack, "kind": result.kind, "clean_label": result.clean_label}
    if result.kind == "triggered":
        spec["target_class"] = result.target_class
        spec["target_class_name"] = None if result.target_class is None else classes[result.target_class]
        spec["trigger"] = dict(result.trigger_spec or {})
        if result.trigger is not None:
            np.save(partial / TRIGGER_FILE, result.trigger.float().numpy().astype(np.float32))
            spec["trigger"]["file"] = TRIGGER_FILE
    elif result.kind == "targeted":
        spec["targets"] = []
        for k, t in enumerate(result.targets):
            file = Path("targets") / classes[t.intended_class] / (f"{t.id}.png" if t.id is not None else f"target{k}.png")
            (partial / file).parent.mkdir(parents=True, exist_ok=True)
            chw_to_pil(t.image).save(partial / file)
            spec["targets"].append({"file": str(file), "id": t.id, "true_class": t.true_class,
                                    "intended_class": t.intended_class})
    n_train = len(result.train)
    spec.update({
        "train_count": n_train,
        "poison_count": None if result.poison_ids is None else len(result.poison_ids),
        "poison_share": None if result.poison_ids is None else len(result.poison_ids) / n_train,
        "poison_indices": result.poison_ids,
    })
    if clean_train is not None:
        measured = measure(result.train, clean_train)
        # the attack's own guarantees, checked on what is written (a failure here is a bug, not a user error)
        if result.poison_ids is not None and not set(measured["changed_pixels_ids"]) <= set(result.poison_ids):
            raise AssertionError("the attack changed images outside its poison set")
        bound = result.record.get("epsilon_255")
        if bound is not None and measured["linf_255"] > bound:
            raise AssertionError(f"measured l_inf {measured['linf_255']}/255 exceeds the bound {bound}/255")
        spec.update(measured)
    spec.update({"classes": classes, **facts, **result.record, "version": __version__,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    (partial / POISON_SPEC).write_text(_compact_lists(json.dumps(spec, indent=1)) + "\n")
    return spec
