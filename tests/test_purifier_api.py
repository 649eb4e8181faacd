"""The Python API: `from pureebm_lightning import Purifier`, then purify a batch in three lines."""

from __future__ import annotations

import pytest
import torch

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_signed_unit

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_three_lines_purify_uint8_or_floats_on_any_device(grey_ebm, device):
    from pureebm_lightning import Purifier

    purifier = Purifier.from_checkpoint(grey_ebm, steps=5)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, device=device)
    purified = purifier(images)
    assert purified.dtype == torch.uint8 and purified.shape == images.shape and purified.device == images.device
    assert not torch.equal(purified, images)
    # floats in [-1, 1]: the same chain (the same noise, first_index 0), answered in the same space
    as_floats = purifier(to_signed_unit(images))
    assert as_floats.dtype == torch.float32 and torch.equal(as_floats, to_signed_unit(purified))
    assert torch.equal(purifier(images, first_index=0), purified) and not torch.equal(purifier(images, first_index=4), purified)


def test_anything_else_is_refused_never_rescaled(grey_ebm):
    from pureebm_lightning import Purifier

    purifier = Purifier.from_checkpoint(grey_ebm, steps=2)
    with pytest.raises(PoisonedDataError, match=r"must lie in \[-1, 1\].*span"):
        purifier(torch.rand(2, 1, 8, 8) * 255)
    with pytest.raises(PoisonedDataError, match="int64"):
        purifier(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(PoisonedDataError, match=r"\[-1, 1\]"):
        purifier(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(PoisonedDataError, match="B, C, H, W"):
        purifier(torch.zeros(1, 8, 8, dtype=torch.uint8))
