"""A purification that stops each chain on its own: once its energy has entered the range of clean images (below a
quantile of their energies, calibrated on clean held-out data) and stayed there for ``patience`` steps; never beyond
``max_steps``. The user sets no T per attack.

Deterministic like a fixed T: every step draws the whole block's noise, whether or not a chain has stopped, so an
image's result depends only on the seed, its block and the rule (not on when its neighbours stop)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pureebm_lightning.langevin import LangevinSampler


@dataclass(frozen=True)
class EnergyStop:
    """Stop a chain at the first step (after ``min_steps``) at which its energy has been at most ``threshold`` for
    ``patience`` consecutive steps; at ``max_steps`` at the latest. ``threshold`` is the ``quantile`` of clean images'
    energies (:func:`calibrate`)."""

    threshold: float
    patience: int = 10
    min_steps: int = 0
    max_steps: int = 1000
    quantile: float | None = None  # what threshold was calibrated as (recorded, not used)

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_steps < 0 or self.max_steps < max(self.min_steps, 1):
            raise ValueError(f"need patience >= 1, 0 <= min_steps <= max_steps, max_steps >= 1; got {self.patience}, "
                             f"{self.min_steps}, {self.max_steps}")

    def settings(self) -> dict[str, Any]:
        return {"rule": "energy", **asdict(self)}


@torch.no_grad()
def calibrate(energy_net: nn.Module, clean: Tensor, quantile: float = 0.5, batch_size: int = 256) -> float:
    """The ``quantile`` of the energies of ``clean`` images ([-1, 1]): the rule's threshold."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    device = next(energy_net.parameters()).device
    energies = torch.cat([energy_net(chunk.to(device)).float().cpu() for chunk in clean.split(batch_size)])
    return float(torch.quantile(energies, quantile))


def sample_until(sampler: LangevinSampler, energy_net: nn.Module, x: Tensor, rule: EnergyStop,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The chains of :meth:`LangevinSampler.sample` from ``x``, each stopped by ``rule``; returns the final states and
    the number of steps each image took. Only running chains are computed (a step costs what is still moving)."""
    state = x.detach().clone(memory_format=sampler.memory_format)
    noise = torch.empty_like(state, memory_format=torch.contiguous_format)
    steps = torch.zeros(len(x), dtype=torch.long, device=x.device)
    below = torch.zeros(len(x), dtype=torch.long, device=x.device)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(rule.max_steps):
        running = active.nonzero().squeeze(1)
        if len(running) == 0:
            break
        everyone = len(running) == len(x)  # the whole block: exactly sample()'s computation
        energy, grad = sampler.energy_grad(energy_net, state if everyone else state[running])
        moved_yet = steps[running] > 0  # the start image's own energy does not count: only states the chain reached
        count = torch.where((energy.float() <= rule.threshold) & moved_yet, below[running] + 1, torch.zeros_like(running))
        below[running] = count
        stops = (steps[running] >= rule.min_steps) & (count >= rule.patience)
        active[running[stops]] = False
        noise.normal_(generator=generator)  # drawn for every chain, stopped or not: an image's path is its own
        go = running[~stops]
        if len(go) == 0:
            break
        if everyone and not bool(stops.any()):
            state.add_(grad, alpha=-sampler.drift).add_(noise, alpha=sampler.step_size)  # sample()'s step, in place
            if sampler.clamp is not None:
                state.clamp_(*sampler.clamp)
        else:
            moved = state[go].add_(grad[~stops], alpha=-sampler.drift).add_(noise[go], alpha=sampler.step_size)
            state[go] = moved.clamp(*sampler.clamp) if sampler.clamp is not None else moved
        steps[go] += 1
    return state, steps
