"""Purified outputs: the input's layout and file names as 8-bit images, a manifest, and resumable writes."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from pureebm_lightning import __version__
from pureebm_lightning.defense import run_key
from pureebm_lightning.errors import PurificationConflict
from pureebm_lightning.images import hwc_to_chw, hwc_to_pil, read_image, to_uint8_pixels
from pureebm_lightning.purification.output_lock import LOCK_FILE, OutputLock
from pureebm_lightning.sources import NUMPY_DATA, NUMPY_LABELS, PoisonedSource, blocks

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy

MANIFEST = "manifest.json"
#: what a manifest from before ``identity`` was recorded meant when it did not state a key (float32 numerics)
LEGACY_DEFAULTS = {"precision": "32-true", "tf32": False}
#: the folder inside an output where a defense keeps what it learned (Defense.fit), until the output is complete
STATE_DIR = ".defense_state"
#: the stopping rule's steps per image: one file per block while running, one file once complete
STEPS_DIR, STEPS_FILE = ".stop_steps", "stop_steps.json"
_PIL_FORMATS = Image.registered_extensions()
#: JPEG cannot be lossless: quality 100 without chroma subsampling keeps it closest (see README)
_LOSSLESS_AS_POSSIBLE = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}


class PurifiedStore:
    """Writes purified images under ``out`` so that each file appears only complete (write, then rename).

    An ImageFolder source is mirrored file by file (other splits copied unchanged when finished); a NumPy
    source is written in chunks under ``out/.chunks`` and assembled into the same NumPy pair at the end.
    ``identity`` is what the output depends on (a defense's ``settings()``, the block size, the numerics); the
    source folder is added to it. What is already in ``out`` from the same identity counts as done. ``record``
    adds facts to the manifest that do not change the output. ``lock`` (:class:`OutputLock` on ``out``) is taken
    by the process that prepares the folder, for the whole run.
    """

    def __init__(self, source: PoisonedSource, out: str | Path, identity: dict[str, Any],
                 record: dict[str, Any] | None = None) -> None:
        self.source, self.out = source, Path(out)
        self.identity = {"source": str(source.root.resolve()), **identity}
        self.record = dict(record or {})
        self.state_dir = self.out / STATE_DIR
        self.chunks = self.out / ".chunks"
        self._purified: np.ndarray | None = None  # the assembled NumPy output, opened by load()
        self.lock = OutputLock(self.out)

    # -- the run's identity ---------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        path = self.out / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def check(self, overwrite: bool) -> None:
        """Refuse an output folder that holds unknown files, or (unless ``overwrite``) another run's output."""
        source = Path(self.identity["source"])
        out = self.out.resolve()
        if out == source or source in out.parents:
            raise PurificationConflict(f"{self.out} is inside the poisoned folder {source}: choose an --out outside it")
        if not self.out.exists():
            return
        manifest = self.read_manifest()
        if manifest is None:
            if any(p.name != LOCK_FILE for p in self.out.iterdir()):
                raise PurificationConflict(f"{self.out} is not empty and has no {MANIFEST} (it is not a purify output): choose another --out")
            return
        if overwrite:
            return
        if "identity" not in manifest:  # written before manifests listed their identity: its unstated numerics
            manifest = {**LEGACY_DEFAULTS, **manifest}
        keys = sorted(set(self.identity) | set(manifest.get("identity", [])))
        different = {k: (manifest.get(k), self.identity.get(k)) for k in keys if manifest.get(k) != self.identity.get(k)}
        if different:
            listed = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in different.items())
            raise PurificationConflict(f"{self.out} holds the output of another purification ({listed}); pass --overwrite to replace it")

    def write_manifest(self, complete: bool, done: int) -> None:
        manifest = {
            **self.identity, **self.record, "identity": sorted(self.identity), "run_key": run_key(self.identity),
            "format": self.source.kind, "split": self.source.split, "count": len(self.source),
            "purified": done, "complete": complete, "copied": self.source.other_entries, "package_version": __version__,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(self.out / MANIFEST, json.dumps(manifest, indent=2).encode())

    def prepare(self, overwrite: bool) -> None:
        """Before any rank writes (call on one process): with ``overwrite`` delete the previous purify output
        (``check`` made sure it is one), remove partial files a killed run left, write an incomplete manifest."""
        if overwrite and self.out.exists():  # everything but the lock file, which this run holds
            for entry in self.out.iterdir():
                if entry.name == LOCK_FILE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if self.out.exists():
            for stale in self.out.rglob(".*.tmp*"):
                stale.unlink(missing_ok=True)
        if not overwrite and (self.read_manifest() or {}).get("complete"):
            return  # finished (by another run while this one was starting): nothing to redo
        self.write_manifest(complete=False, done=len(self.source) - len(self.todo()))

    def claim(self, overwrite: bool) -> None:
        """Take the folder's lock (:class:`OutputLocked` if another run holds it), check the folder again under it
        and :meth:`prepare` it; the lock is released if any of that fails. Call on one process."""
        self.lock.acquire()
        try:
            self.check(overwrite)
            self.prepare(overwrite)
        except BaseException:
            self.lock.release()
            raise

    # -- progress -------------------------------------------------------------------------------------
    def todo(self) -> list[int]:
        """Indices not yet purified by this run."""
        if self.source.kind == "numpy":
            if (self.out / NUMPY_DATA).is_file() and (self.read_manifest() or {}).get("complete"):
                return []
            done = set()
            for chunk in self.chunks.glob("*.npz") if self.chunks.is_dir() else []:
                with np.load(chunk) as z:
                    done.update(z["indices"].tolist())
            return [i for i in range(len(self.source)) if i not in done]
        return [i for i, key in enumerate(self.source.keys) if not (self.out / key).is_file()]

    def todo_blocks(self, block_size: int, missing: list[int] | None = None) -> list[list[int]]:
        """The fixed blocks (see :func:`blocks`) that still hold an image not purified by this run
        (``missing``: a :meth:`todo` result already at hand)."""
        missing = set(self.todo() if missing is None else missing)
        return [b for b in blocks(len(self.source), block_size) if not missing.isdisjoint(b)]

    def write(self, indices: list[int], images: torch.Tensor, rank: int = 0, steps: torch.Tensor | None = None) -> None:
        """Store purified (N, C, H, W) uint8 ``images`` of the source ``indices`` (a block redone after a kill
        only fills in its missing files: the others hold the same result already); ``steps``: the Langevin steps
        each image took under a stopping rule (kept with the block, gathered into ``stop_steps.json`` at the end)."""
        if steps is not None:  # before the images: a block whose images are all there has its steps too
            (self.out / STEPS_DIR).mkdir(parents=True, exist_ok=True)
            taken = {self.key(i): int(n) for i, n in zip(indices, steps.tolist())}
            _atomic_write_bytes(self.out / STEPS_DIR / f"{indices[0]:09d}-{rank}.json", json.dumps(taken).encode())
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        if self.source.kind == "numpy":
            self.chunks.mkdir(parents=True, exist_ok=True)
            path = self.chunks / f"{indices[0]:09d}-{rank}-{len(indices)}.npz"
            _atomic_write(path, lambda f: np.savez(f, indices=np.asarray(indices), images=arrays))
            return
        for i, arr in zip(indices, arrays):
            path = self.out / self.source.keys[i]
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fmt = _PIL_FORMATS.get(path.suffix.lower(), "PNG")
            _atomic_write(path, lambda f, arr=arr, fmt=fmt: hwc_to_pil(arr).save(f, format=fmt, **_LOSSLESS_AS_POSSIBLE.get(fmt, {})))

    def key(self, index: int) -> str:
        """The name of source image ``index`` in per-image records: its relative path, or its row of a NumPy array."""
        return str(index) if self.source.kind == "numpy" else self.source.keys[index]

    def finish(self) -> None:
        """Assemble NumPy chunks, copy the other splits, mark the manifest complete (call once, on one process)."""
        remaining = self.todo()
        if remaining:
            self.write_manifest(complete=False, done=len(self.source) - len(remaining))
            raise RuntimeError(f"{len(remaining)} images of {self.source.root} are not purified yet; run the same command again")
        if (self.out / STEPS_DIR).is_dir():  # every image's steps, in source order, and their summary in the manifest
            taken: dict[str, int] = {}
            for part in sorted((self.out / STEPS_DIR).glob("*.json")):
                taken.update(json.loads(part.read_text()))
            ordered = {self.key(i): taken[self.key(i)] for i in range(len(self.source)) if self.key(i) in taken}
            if len(ordered) < len(self.source):  # blocks written without their steps (not by pureebm purify --stop)
                warnings.warn(f"{self.out / STEPS_FILE}: the steps of {len(self.source) - len(ordered)} of "
                              f"{len(self.source)} images are unknown", stacklevel=2)
            _atomic_write_bytes(self.out / STEPS_FILE, json.dumps(ordered, indent=0).encode())
            values = list(ordered.values())
            self.record["stop_steps"] = {"images": len(values), "mean_steps": sum(values) / max(len(values), 1),
                                         "max_steps": max(values, default=0), "file": STEPS_FILE}
        if self.source.kind == "numpy" and self.chunks.is_dir():
            src = self.source._array
            with _atomic_path(self.out / NUMPY_DATA) as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=src.shape)  # as the input stores pixels
                for chunk in self.chunks.glob("*.npz"):
                    with np.load(chunk) as z:
                        out[z["indices"]] = z["images"].reshape((-1, *src.shape[1:]))
                out.flush()
                del out
            _atomic_copy(self.source.root / NUMPY_LABELS, self.out / NUMPY_LABELS)
        for name in self.source.other_entries:  # each file copied whole or not at all (a full disk leaves no stub)
            src, dst = self.source.root / name, self.out / name
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=_atomic_copy)
            else:
                _atomic_copy(src, dst)
        self.write_manifest(complete=True, done=len(self.source))
        shutil.rmtree(self.chunks, ignore_errors=True)  # after the manifest: a kill here loses nothing
        shutil.rmtree(self.out / STEPS_DIR, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def finish_on_rank_zero(self, strategy: Strategy | None) -> None:
        """Once every rank has written its blocks, global rank 0 runs :meth:`finish`; a failure there is raised
        on every rank, so that none waits for rank 0. ``strategy`` None: a single process."""
        if strategy is None:
            self.finish()
            return
        strategy.barrier("purified")
        error = None
        if strategy.is_global_zero:
            try:
                self.finish()
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
        error = strategy.broadcast(error, src=0)
        strategy.barrier("finished")
        if error is not None:
            raise RuntimeError(f"Finishing the purified output {self.out} failed on rank 0: {error}")

    def load(self, i: int) -> torch.Tensor:
        """Purified image ``i`` as (C, H, W) uint8 (after :meth:`finish` for NumPy sources)."""
        if self.source.kind == "numpy":
            if self._purified is None:
                self._purified = np.load(self.out / NUMPY_DATA, mmap_mode="r")
            return hwc_to_chw(to_uint8_pixels(np.array(self._purified[i])))
        return read_image(self.out / self.source.keys[i], self.source.mode)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write, renamed to ``path`` when the block ends: the file appears
    only complete. A failed write (a full disk, a kill signal) removes the temporary file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """``write(file)`` through :func:`_atomic_path`."""
    with _atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _atomic_copy(src: str | Path, dst: str | Path) -> None:
    """``shutil.copy2`` through a temporary file: ``dst`` appears only complete."""
    dst = Path(dst)

    def copy(f: Any) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f)

    _atomic_write(dst, copy)
    shutil.copystat(src, dst)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))
