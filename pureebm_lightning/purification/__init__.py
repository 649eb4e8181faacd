"""Purification: poisoned inputs on disk, the purifier, purified outputs with their manifest."""

from pureebm_lightning.lazy_exports import lazy_exports

_EXPORTS = {
    "PurifiedStore": "pureebm_lightning.purification.purified_store",
    "Purifier": "pureebm_lightning.purification.purifier",
    "PoisonedDataError": "pureebm_lightning.errors",
    "PoisonedSource": "pureebm_lightning.purification.sources",
    "open_source": "pureebm_lightning.purification.sources",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
