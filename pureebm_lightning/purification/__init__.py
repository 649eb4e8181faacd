"""Purification: poisoned inputs on disk, the purifier, purified outputs with their manifest."""

from pureebm_lightning.purification.purified_store import PurifiedStore
from pureebm_lightning.purification.purifier import Purifier
from pureebm_lightning.purification.sources import PoisonedDataError, PoisonedSource, open_source

__all__ = ["PoisonedDataError", "PoisonedSource", "PurifiedStore", "Purifier", "open_source"]
