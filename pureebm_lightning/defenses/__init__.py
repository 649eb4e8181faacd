"""Training-set defenses (``pureebm purify --defense NAME``, :class:`~pureebm_lightning.data.PurifiedDataModule`):
one module each, defining a :class:`~pureebm_lightning.defense.Defense` registered with
``@register_defense()`` (named after its module). A defense takes uint8 images and returns uint8 images of the
same shape; its ``settings()`` is the whole identity of its output (manifests, resume and cache keys derive from it).
"""

from pureebm_lightning.lazy_exports import lazy_exports
from pureebm_lightning.registry import Registry

DEFENSES = Registry("defense", ("pureebm_lightning.defenses",), by_module=True)
register_defense = DEFENSES.register

_EXPORTS = {
    "Defense": "pureebm_lightning.defense",
    "FriendlyNoise": "pureebm_lightning.defenses.friendly_noise",
    "JPEGPurifier": "pureebm_lightning.defenses.jpeg",
    "Purifier": "pureebm_lightning.defenses.pureebm",
}
__all__ = ["DEFENSES", "register_defense", *sorted(_EXPORTS)]
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
