"""The project's error types (each message names the file and the fix), and one line for the user from any of them."""

from __future__ import annotations

import re


class PoisonedDataError(ValueError):
    """A poisoned input that cannot be purified or trained on; the message names the file and the problem."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what it was passed to (empty, truncated, or of another model)."""


class PretrainedError(CheckpointError):
    """A pretrained EBM (a Hub repo or a folder) that cannot be reached or read, or is not an EBM of a known layout."""


class NonFiniteError(RuntimeError):
    """Energies or chains stopped being finite during EBM training (the message says what to change)."""


class PurificationConflict(RuntimeError):
    """The output folder holds another run's output."""


class OutputLocked(RuntimeError):
    """Another live process holds the output folder's lock; the message names it."""


class UsageError(ValueError):
    """Command-line arguments that cannot work together or are out of range (checked before any loading)."""


_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback", re.M)
_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt|Locked|Conflict)):\s?(.*)$")


def first_sentence(err: BaseException) -> str:
    """The first sentence of ``err``'s message (libraries append paragraphs of advice), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line. An error raised in a DataLoader worker arrives wrapped in the worker's
    whole traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): its cause is the
    traceback's last line, which is what is returned."""
    text = str(err).strip()
    if _WORKER.search(text):
        lines = [line for line in text.splitlines() if line.strip()]
        match = _LAST_LINE.match(lines[-1].strip()) if lines else None
        text = match.group(2) if match else lines[-1].strip()
        text = f"{text} (in a data-loading worker)"
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(text.split()) or type(err).__name__


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the input's or the machine's fault, not the program's: shown as one line, no traceback.
    (Lightning's configuration errors count; checking them imports nothing that is not loaded already.)"""
    import sys

    mine = (PoisonedDataError, CheckpointError, UsageError, NonFiniteError, PurificationConflict, OutputLocked, OSError)
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    return isinstance(err, mine) or (lightning is not None and isinstance(err, lightning.MisconfigurationException))
