"""Checkpoint and requeue a SLURM job before its time limit, at the same training step on every rank."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class SlurmRequeue(Callback):
    """On the requeue signal (``#SBATCH --signal=SIGUSR1@120``) the ranks save ``<default_root_dir>/hpc_ckpt_N.ckpt``
    together at the end of the current training batch (weights, optimiser, every rank's chains; rank 0
    writes the file), the run stops, and at its end rank 0 requeues the job with ``scontrol requeue``; the
    requeued job resumes from that checkpoint.

    The signal handler only sets a flag: the checkpoint (a collective, since the chain banks are gathered)
    is written at the same step on every rank, never from inside a handler. Lightning's own SLURM handler
    saves from the handler itself, wherever each rank happens to be; registered first, this one replaces it.
    DataLoader workers inherit the handler and ignore the signal.

    Args:
        enabled: arm the handler; None (default) arms it only inside a SLURM job (``SLURMEnvironment.detect()``).
        signum: the signal, SIGUSR1 by default (match ``--signal`` in the sbatch script).
        requeue: run ``scontrol requeue`` on rank 0 after saving (False: only save and stop).
    """

    def __init__(self, enabled: bool | None = None, signum: int = int(signal.SIGUSR1), requeue: bool = True) -> None:
        self.enabled, self.signum, self.requeue = enabled, signum, requeue
        self._pid: int | None = None
        self._received = False
        self._previous: Any = None
        self._requeue_after: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        armed = SLURMEnvironment.detect() if self.enabled is None else self.enabled
        if stage != "fit" or not armed or os.name == "nt":
            return
        self._pid, self._received = os.getpid(), False
        self._previous = signal.signal(self.signum, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if os.getpid() == self._pid:  # not in a forked DataLoader worker
            self._received = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pid is None or not trainer.strategy.reduce_boolean_decision(self._received, all=False):
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank takes part (the chain banks are gathered); rank 0 writes
        rank_zero_info(f"Requeue signal: saved {path} at global step {trainer.global_step}")
        self._received, self._requeue_after = False, path
        trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Requeue only after the run's last collectives (end-of-epoch checkpoints, validation): SLURM then
        signals every task to end, and nothing is left in flight between ranks."""
        path, self._requeue_after = self._requeue_after, None
        if path is None or not self.requeue:
            return
        trainer.strategy.barrier("slurm_requeue")
        if trainer.is_global_zero:
            job = os.environ.get("SLURM_JOB_ID", "")
            if os.environ.get("SLURM_ARRAY_JOB_ID"):
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode != 0:
                rank_zero_warn(f"scontrol requeue {job} failed ({result.stderr.strip()}); resubmit the job to resume from {path}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._pid is not None:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._pid = None
