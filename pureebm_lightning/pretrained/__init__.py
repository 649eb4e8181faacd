"""Pretrained EBMs: load the authors' published EBM or an exported one (a Hugging Face Hub repo or a folder), and
export a trained EBM as a Hub-ready folder."""

from pureebm_lightning.lazy_exports import lazy_exports

_EXPORTS = {
    "EBMSource": "pureebm_lightning.pretrained.source",
    "parse_source": "pureebm_lightning.pretrained.source",
    "PretrainedEBM": "pureebm_lightning.pretrained.loader",
    "load_pretrained": "pureebm_lightning.pretrained.loader",
    "export_ebm": "pureebm_lightning.pretrained.export",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())  # `pureebm export --help` loads no torch
