"""Process-wide settings of a ``pureebm`` run: CPU threads that hold up on a shared machine, and a quiet console."""

from __future__ import annotations

import logging
import os
import time
import warnings

#: the environment variables that, when set, mean the user chose the thread count already
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a cluster scheduler sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_cores(sample_seconds: float = 0.25) -> float | None:
    """How many of the machine's cores were idle over a short sample (None where /proc/stat is not there)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_seconds)
    second = _cpu_times()
    total = second[1] - first[1]
    if total <= 0:
        return None
    return (second[0] - first[0]) / total * (os.cpu_count() or 1)


def default_threads() -> int:
    """Intra-op threads for a run that did not ask: one per core that is idle now, at least 1, at most the
    usable cores. Threads beyond the idle cores wait on each other at every operation (measured: digits EBM
    steps cost 3.1x the CPU time with 2 threads on 2 busy cores than with 1; README "On a shared machine")."""
    cores = usable_cores()
    idle = idle_cores()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op thread count: ``requested`` (for every process of the run), else what
    ``OMP_NUM_THREADS`` says, else :func:`default_threads` (under DDP on CPUs, Lightning then gives each of
    the N processes cores / N). Returns the count in force."""
    import torch

    if requested is not None:
        if requested < 1:
            from pureebm_lightning.errors import UsageError

            raise UsageError(f"--threads must be at least 1, got {requested}")
        torch.set_num_threads(requested)
        os.environ["OMP_NUM_THREADS"] = str(requested)  # so that Lightning's DDP launcher keeps it for every rank
    elif not any(os.environ.get(v) for v in THREAD_VARIABLES):
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()


def quiet_lightning() -> None:
    """No tips or deprecation warnings from the libraries on a normal run (warnings about the run stay)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_TipFilter())
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|lightning|torchvision|jsonargparse)\b")


class _TipFilter(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ...", the litlogger hint)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Tip:" in text or "litlogger" in text or "💡" in text)
