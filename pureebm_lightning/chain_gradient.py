"""PureEBM's Psi_T as a differentiable function of its start images: what an attacker who knows the EBM and the
purification settings optimises through (defense-aware attacks).

Three gradients of the same forward chain (the defender's: T Langevin steps, the sampler's eps and tau, then the
clamp to [-1, 1]): ``exact`` backpropagates through every step (second derivatives of the energy; with
``checkpoint`` each step's graph is recomputed in the backward pass instead of kept, so memory does not grow with T),
``bpda`` takes the chain as the identity in the backward pass (straight-through, Athalye et al. 2018). For either,
:meth:`DifferentiablePurification.expectation` averages an attacker's objective over ``eot`` draws of the chain's noise
(expectation over transformation: the mean of the objective, not the objective of the mean image).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute

from pureebm_lightning.langevin import LangevinSampler

Gradient = Literal["exact", "bpda"]


class DifferentiablePurification:
    """``steps`` Langevin steps of ``energy_net`` from images ``x`` (floats in [-1, 1]), clamped to [-1, 1], with the
    gradient ``gradient`` with respect to ``x``: :meth:`__call__` is one chain (one noise draw), :meth:`expectation` an
    objective's mean over ``eot`` draws.

    With the same generator state, the forward values equal :meth:`LangevinSampler.sample` followed by the clamp
    (the 8-bit rounding of the stored images is left out: it moves a pixel by at most 1/255)."""

    def __init__(self, energy_net: nn.Module, sampler: LangevinSampler, steps: int, gradient: Gradient = "bpda",
                 eot: int = 1, checkpoint: bool = True) -> None:
        if gradient not in ("exact", "bpda"):
            raise ValueError(f"gradient must be exact or bpda, got {gradient!r}")
        if steps < 0 or eot < 1:
            raise ValueError(f"need steps >= 0 and eot >= 1, got {steps} and {eot}")
        self.energy_net, self.sampler, self.steps = energy_net, sampler, steps
        self.gradient, self.eot, self.checkpoint = gradient, eot, checkpoint

    def expectation(self, objective: Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """EOT: the mean of ``objective(Psi_T(x))`` over ``eot`` chains from ``x``, each with fresh noise from ``generator``."""
        return sum(objective(self(x, generator)) for _ in range(self.eot)) / self.eot

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One chain from ``x`` (one noise draw)."""
        if self.gradient == "bpda":
            with torch.no_grad():
                end = self.sampler.sample(self.energy_net, x.detach(), self.steps, generator=generator).samples
            return end.clamp(-1, 1) + (x - x.detach())  # the value of the chain, the gradient of the identity
        state = x
        for _ in range(self.steps):
            noise = torch.empty_like(x, memory_format=torch.contiguous_format).normal_(generator=generator)
            state = recompute(self._step, state, noise, use_reentrant=False) if self.checkpoint else self._step(state, noise)
        return state.clamp(-1, 1)

    def _step(self, state: Tensor, noise: Tensor) -> Tensor:
        """x - eps^2 / (2 tau) grad_x E(x) + eps noise, keeping the graph of grad_x E for the backward pass."""
        with torch.enable_grad():
            if not state.requires_grad:  # a start image the caller does not differentiate
                state = state.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy_net(state).sum(), state, create_graph=True)
        out = state - self.sampler.drift * grad + self.sampler.step_size * noise
        return out.clamp(*self.sampler.clamp) if self.sampler.clamp is not None else out
