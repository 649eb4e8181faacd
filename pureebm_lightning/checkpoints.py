"""Reading checkpoints with one-line errors: empty, truncated, or written for another model than the one asked for."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from pureebm_lightning.errors import CheckpointError, first_sentence

#: where each of the project's modules keeps its weights in a state dict, and that kind of checkpoint in words
KINDS = {"EBMModule": ("energy_net.", "an EBM checkpoint (`pureebm fit --config configs/ebm*.yaml`)"),
         "ClassifierModule": ("net.", "a classifier checkpoint (`pureebm fit --config configs/classifier*.yaml`)")}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (what a manifest records to tie a result to its weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors and plain containers only: nothing in it runs), or a CheckpointError
    that says what is wrong with the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: an empty file (0 bytes), not a checkpoint (was its run killed while saving it?); "
                              "pass another checkpoint of the run, e.g. its last.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: holds Python objects beyond tensors and settings, so it was not written by "
                              f"pureebm ({first_sentence(err)})") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({size} bytes; truncated, or another kind of "
                              f"file): {first_sentence(err)}") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: a PyTorch file but not a Lightning checkpoint (no state_dict)")
    return ckpt


def kind_of(ckpt: dict[str, Any]) -> str:
    """What a checkpoint is, in words, from the names in its state dict."""
    keys = list(ckpt.get("state_dict", {}))
    for prefix, kind in KINDS.values():
        if keys and all(k.startswith(prefix) for k in keys):
            return kind
    return f"a checkpoint of another model (weights {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"


def require_kind(ckpt: dict[str, Any], module: str, path: str | Path, needed_by: str) -> None:
    """Refuse a checkpoint that is not one of ``module`` (a key of :data:`KINDS`) for ``needed_by``."""
    prefix, kind = KINDS[module]
    if not ckpt["state_dict"] or not all(k.startswith(prefix) for k in ckpt["state_dict"]):
        raise CheckpointError(f"{Path(path).expanduser()}: {kind_of(ckpt)}, but {needed_by} needs {kind}")


def read_ebm_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`read_checkpoint`, refusing anything but an EBM checkpoint written by ``pureebm fit``."""
    ckpt = read_checkpoint(path)
    require_kind(ckpt, "EBMModule", path, "purification")
    return ckpt


def check_matches(ckpt: dict[str, Any], module: torch.nn.Module, path: str | Path) -> None:
    """Refuse a checkpoint whose weights are not those of ``module`` (the model the config builds)."""
    own = module.state_dict()
    have, want = set(ckpt["state_dict"]), set(own)
    if have == want:
        wrong = [k for k in own if tuple(ckpt["state_dict"][k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise CheckpointError(f"{path}: {k} has shape {tuple(ckpt['state_dict'][k].shape)} there and {tuple(own[k].shape)} in "
                                  "the model the config builds: pass the config the checkpoint was trained with")
        return
    if not have & want:
        raise CheckpointError(f"{path}: {kind_of(ckpt)}, but the config builds a {type(module).__name__}: pass the "
                              "config the checkpoint was trained with")
    missing, unexpected = sorted(want - have), sorted(have - want)
    detail = "; ".join(part for part in (f"missing {', '.join(missing[:3])}" if missing else "",
                                         f"unexpected {', '.join(unexpected[:3])}" if unexpected else "") if part)
    raise CheckpointError(f"{path}: its weights do not fit the {type(module).__name__} the config builds ({detail}): "
                          "pass the config the checkpoint was trained with")

