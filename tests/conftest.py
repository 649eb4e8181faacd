"""Shared fixtures: paths to the real configs, small energy functions with known gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


class QuadraticEnergy(nn.Module):
    """E(x) = tau * sum((x - mu)^2) / (2 sigma^2) per image, so exp(-E / tau) is N(mu, sigma^2 I)."""

    def __init__(self, mu: float, sigma: float, tau: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu))
        self.sigma, self.tau = sigma, tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tau * ((x - self.mu) ** 2).flatten(1).sum(1) / (2 * self.sigma**2)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
