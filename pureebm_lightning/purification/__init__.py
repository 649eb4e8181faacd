"""Purification into a folder: the purified store with its manifest, its lock, and the run that fills it."""

from pureebm_lightning.lazy_exports import lazy_exports

_EXPORTS = {
    "PurifiedStore": "pureebm_lightning.purification.purified_store",
    "PurificationRun": "pureebm_lightning.purification.run",
    "PoisonedDataError": "pureebm_lightning.errors",
    "PoisonedSource": "pureebm_lightning.sources",
    "open_source": "pureebm_lightning.sources",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
