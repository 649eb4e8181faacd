"""The Langevin sampler shared by EBM training and purification."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class LangevinResult(NamedTuple):
    """Final states of a Langevin run and, when tracked, the mean per-image norm of grad_x[E(x) / tau] over its steps."""

    samples: Tensor
    grad_norm: Tensor | None


class LangevinSampler:
    """Unadjusted Langevin dynamics: x <- x - (eps^2 / 2) * grad_x[E(x) / tau] + eps * N(0, I).

    Only the input gradient is computed (``torch.autograd.grad`` w.r.t. ``x``): no parameter gradients are
    formed or accumulated, so the sampler can run inside ``training_step`` without touching ``.grad``. It
    enables gradients itself, so it also works in ``predict_step`` under ``Trainer(inference_mode=False)``.

    Args:
        step_size: eps, the noise scale of a step (paper: 1.25e-2 for images in [-1, 1]).
        temperature: tau, dividing the energy (paper: 1e-4).
        n_steps: default number of steps of :meth:`sample` (paper: K = 100 for training).
        clamp: optional (low, high) applied after every step; the paper does not clamp inside the chain.
    """

    def __init__(
        self,
        step_size: float = 1.25e-2,
        temperature: float = 1e-4,
        n_steps: int = 100,
        clamp: tuple[float, float] | None = None,
    ) -> None:
        if step_size <= 0 or temperature <= 0 or n_steps < 0:
            raise ValueError(f"need step_size > 0, temperature > 0, n_steps >= 0; got {step_size}, {temperature}, {n_steps}")
        self.step_size = step_size
        self.temperature = temperature
        self.n_steps = n_steps
        self.clamp = tuple(clamp) if clamp is not None else None
        #: layout of the chains (``SpeedOptions(channels_last=True)`` sets ``torch.channels_last``)
        self.memory_format = torch.preserve_format

    @property
    def drift(self) -> float:
        """Coefficient of grad_x E(x) in a step: eps^2 / (2 tau)."""
        return self.step_size**2 / (2 * self.temperature)

    def __repr__(self) -> str:
        return (
            f"LangevinSampler(step_size={self.step_size}, temperature={self.temperature}, "
            f"n_steps={self.n_steps}, clamp={self.clamp})"
        )

    @staticmethod
    def energy_grad(energy_net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image energies E(x) (detached) and grad_x of sum E(x), computed without parameter gradients."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            energy = energy_net(x)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach(), grad

    def sample(
        self,
        energy_net: nn.Module,
        x: Tensor,
        n_steps: int | None = None,
        generator: torch.Generator | None = None,
        track_grad_norm: bool = False,
    ) -> LangevinResult:
        """Run ``n_steps`` (default ``self.n_steps``) steps from ``x``; ``x`` itself is left unchanged.

        The state and the noise buffer are allocated once; each step updates them in place.
        ``track_grad_norm`` also returns the mean per-image norm of grad_x[E / tau] (one reduction a step).
        """
        n_steps = self.n_steps if n_steps is None else n_steps
        state = x.detach().clone(memory_format=self.memory_format)
        noise = torch.empty_like(state, memory_format=torch.contiguous_format)  # drawn in NCHW order in any layout
        grad_norm_sum = torch.zeros((), device=state.device, dtype=torch.float32) if track_grad_norm else None
        drift, eps = self.drift, self.step_size
        for _ in range(n_steps):
            _, grad = self.energy_grad(energy_net, state)
            if grad_norm_sum is not None:
                grad_norm_sum += grad.flatten(1).norm(dim=1).mean()
            state.add_(grad, alpha=-drift).add_(noise.normal_(generator=generator), alpha=eps)
            if self.clamp is not None:
                state.clamp_(*self.clamp)
        if grad_norm_sum is not None:
            grad_norm_sum /= max(n_steps, 1) * self.temperature
        return LangevinResult(state, grad_norm_sum)
