"""The EBM's validation measure: energy of clean images vs the same images under a random sign perturbation."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sign_perturbed(x: Tensor, perturbation: float, seed: int) -> Tensor:
    """``x`` (in [-1, 1]) plus a random +-``perturbation`` (in 8-bit units /255) on every pixel, clamped; the signs come
    from a generator seeded by ``seed`` on ``x``'s device."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=g, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
    return (x + signs * (2 * perturbation)).clamp_(-1, 1)  # [-1, 1] images: 1/255 is 2/255 here


def energy_gap(energy_net: nn.Module, x: Tensor, perturbation: float, seed: int) -> tuple[Tensor, Tensor]:
    """Per-image energies of ``x`` and of :func:`sign_perturbed` ``x`` (float32); a good EBM gives the latter higher."""
    return energy_net(x).float(), energy_net(sign_perturbed(x, perturbation, seed)).float()
