"""Lightning callbacks of pureebm-lightning."""

from pureebm_lightning.callbacks.chain_images import ChainImageLogger
from pureebm_lightning.callbacks.results_table import ResultsTable
from pureebm_lightning.callbacks.slurm_requeue import SlurmRequeue
from pureebm_lightning.callbacks.speed_options import SpeedOptions

__all__ = ["ChainImageLogger", "ResultsTable", "SlurmRequeue", "SpeedOptions"]
