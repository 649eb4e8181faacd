"""Lightning callbacks of pureebm-lightning."""

from pureebm_lightning.callbacks.chain_images import ChainImageLogger

__all__ = ["ChainImageLogger"]
