"""Image conversions every layer uses: uint8 <-> [-1, 1], whole 1/255 steps, PIL and NumPy layouts, reading files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from pureebm_lightning.errors import PoisonedDataError

#: PIL modes read as grey (1 channel) or colour (3 channels); others (16-bit, alpha, CMYK) are refused
GREY_MODES, COLOUR_MODES = ("L", "1"), ("RGB", "P")


def to_signed_unit(images: Tensor) -> Tensor:
    """uint8 images to float in [-1, 1] (ToTensor, then Normalize(0.5, 0.5))."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] images to uint8, clamping first (what saving the release's PIL images does)."""
    return x.clamp(-1.0, 1.0).add_(1.0).mul_(127.5).round_().to(torch.uint8)


def quantise(trigger: Tensor, epsilon: int | None = None) -> Tensor:
    """A trigger in the [-1, 1] image space as whole 1/255 pixel steps (int16), clipped to ``epsilon``: added
    to 8-bit images it stays on their grid, so storing the poisoned set neither erases nor doubles it."""
    steps = (trigger.float() * 127.5).round()
    if epsilon is not None:
        steps = steps.clamp(-epsilon, epsilon)
    return steps.to(torch.int16)


def dequantise(steps: Tensor) -> Tensor:
    """Whole 1/255 pixel steps back in the [-1, 1] image space."""
    return steps.float() / 127.5


def add_steps(images: Tensor, steps: Tensor) -> Tensor:
    """uint8 ``images`` plus int pixel ``steps``, clipped to 0..255."""
    return (images.int() + steps.int()).clamp(0, 255).to(torch.uint8)


def hwc_to_chw(arr: np.ndarray) -> torch.Tensor:
    """An (H, W) or (H, W, C) uint8 array as a (C, H, W) tensor."""
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def hwc_to_pil(arr: np.ndarray) -> Image.Image:
    """An (H, W, 1) or (H, W, 3) uint8 array as a grey ("L") or RGB PIL image."""
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def chw_to_pil(image: torch.Tensor) -> Image.Image:
    """A (C, H, W) uint8 tensor as a grey or RGB PIL image."""
    return hwc_to_pil(image.permute(1, 2, 0).cpu().numpy())


def read_pil(path: str | Path, mode: str = "RGB") -> Image.Image:
    """The image file at ``path`` as a PIL image in ``mode`` (RGB by default: torchvision's ImageFolder loader),
    with an error naming the file when it cannot be read (a truncated or corrupt file)."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, UnidentifiedImageError) as err:
        raise PoisonedDataError(f"{path}: cannot read this image ({err})") from err


def read_image(path: Path, mode: str) -> torch.Tensor:
    """The image file at ``path`` in PIL ``mode`` ("L" or "RGB") as a (C, H, W) uint8 tensor."""
    return hwc_to_chw(np.array(read_pil(path, mode)))


def check_pixel_array(data: np.ndarray, where: Path, chunk: int = 1024) -> None:
    """8-bit pixels: uint8, or a float array (Witches' Brew's NumPy export is float64) of whole numbers in 0..255."""
    if data.dtype == np.uint8:
        return
    if data.dtype.kind != "f":
        raise PoisonedDataError(f"{where}: pixels of type {data.dtype}; expected uint8, or floats that are whole numbers in 0..255")
    for start in range(0, len(data), chunk):  # a memory map: checked in pieces
        part = np.asarray(data[start : start + chunk])
        if not np.isfinite(part).all() or part.min() < 0 or part.max() > 255:
            raise PoisonedDataError(f"{where}: float pixels outside 0..255 (from {part.min():g} to {part.max():g} in rows "
                                    f"{start}..{start + len(part) - 1}); expected 8-bit values: images in [0, 1] or [-1, 1] "
                                    "must be scaled to 0..255 first")
        if not np.array_equal(part, np.round(part)):
            raise PoisonedDataError(f"{where}: float pixels that are not whole numbers (rows {start}..{start + len(part) - 1}); "
                                    "expected 8-bit values 0..255 stored as floats")


def to_uint8_pixels(arr: np.ndarray) -> np.ndarray:
    """An array that :func:`check_pixel_array` accepted, as uint8."""
    return arr if arr.dtype == np.uint8 else np.asarray(arr).astype(np.uint8)
