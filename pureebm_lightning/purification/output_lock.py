"""One writer per output folder: an advisory ``fcntl`` lock held for the whole run, released on exit or kill."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pureebm_lightning.errors import OutputLocked

LOCK_FILE = ".pureebm.lock"
__all__ = ["LOCK_FILE", "OutputLock", "OutputLocked"]


class OutputLock:
    """An exclusive lock on ``folder`` (the file ``folder/.pureebm.lock``), taken by :meth:`acquire`.

    The kernel drops the lock when its process ends, however it ends, so a killed run never blocks the
    next one (its lock file stays, unlocked, and is reused). The holder's pid, host, start time and command
    are written into the lock file, so that a second run can say which run it is waiting for or refusing.
    :meth:`release` removes the file.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says about the run that holds (or last held) the lock."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def describe_holder(self) -> str:
        info = self.holder()
        if not info:
            return "another run"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return f"pid {info.get('pid')} on {info.get('host')}, started {started}: {info.get('command')}"

    def _refusal(self) -> OutputLocked:
        return OutputLocked(f"{self.folder} is being written by another run ({self.describe_holder()}); wait for it to "
                            "end or choose another output folder")

    def refuse_if_held(self) -> None:
        """Raise :class:`OutputLocked` if another live process holds the lock now (takes nothing)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file: nobody ever locked this folder
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise self._refusal() from None
        finally:
            os.close(fd)

    def acquire(self, wait: bool = False, on_wait=None) -> "OutputLock":
        """Take the lock; if another process holds it, raise :class:`OutputLocked` naming it, or with ``wait``
        block until it is released (calling ``on_wait(description)`` once first)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        told, deadline = False, time.monotonic() + 1.0  # a moment's grace: another run's refuse_if_held probe
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    raise self._refusal() from None
                if on_wait is not None and not told:
                    on_wait(self.describe_holder())
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if self._still_linked(fd):
                break
            os.close(fd)  # the holder removed the file as it released it: lock the new one
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:  # a full disk: no lock file (and no lock) left behind
            self.release()
            raise
        return self

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file, then release the lock (a run that locked the removed file sees it and retries)."""
        fd, self._fd = self._fd, None  # not held from here on, before another run can take the lock
        if fd is not None:
            try:
                if self._still_linked(fd):
                    self.path.unlink()
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
