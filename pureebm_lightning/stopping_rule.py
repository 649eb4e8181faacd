"""A purification that stops each chain on its own: once its energy has entered the range of clean images' chains (below
a quantile of the energies clean held-out images take along the chain, :func:`calibrate`) and stayed there for
``patience`` steps; never beyond ``max_steps``. The user sets no T per attack.

Calibrated along the chain, not on the clean images themselves: the chain's stationary energy sits above that of the
data it starts from (on digits 0.093 vs 0.083), so a threshold from raw clean energies is one that chains never reach.

Deterministic like a fixed T: every step draws the whole block's noise, whether or not a chain has stopped, so an
image's result depends only on the seed, its block and the rule (not on when its neighbours stop)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pureebm_lightning.langevin import LangevinSampler

CALIBRATION_STEPS = 150  # the clean calibration chains' length (PureEBM's T on CIFAR-10)
CALIBRATION_IMAGES = 1000  # at most this many clean images, evenly spread over the calibration data
THRESHOLD_DIGITS = 4  # significant digits kept: every process and rerun then computes the same rule


@dataclass(frozen=True)
class EnergyStop:
    """Stop a chain at the first step (after ``min_steps``) at which its energy has been at most ``threshold`` for
    ``patience`` consecutive steps; at ``max_steps`` at the latest. ``threshold`` is the ``quantile`` of the energies
    clean images take along ``calibration_steps`` of the chain (:func:`calibrate`)."""

    threshold: float
    patience: int = 10
    min_steps: int = 0
    max_steps: int = 1000
    quantile: float | None = None  # what threshold was calibrated as (recorded, not used)
    calibration_steps: int | None = None  # the length of the clean chains it was calibrated on (recorded, not used)
    calibration_data: str | None = None  # the clean images: a folder, digits, or "stored" (an exported EBM's)
    calibration_images: int | None = None  # how many of them

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_steps < 0 or self.max_steps < max(self.min_steps, 1):
            raise ValueError(f"need patience >= 1, 0 <= min_steps <= max_steps, max_steps >= 1; got {self.patience}, "
                             f"{self.min_steps}, {self.max_steps}")

    def settings(self) -> dict[str, Any]:
        return {"rule": "energy", **asdict(self)}


def chain_energies(sampler: LangevinSampler, energy_net: nn.Module, clean: Tensor, steps: int = CALIBRATION_STEPS, seed: int = 0,
                   batch_size: int = 256) -> Tensor:
    """The energies clean images ([-1, 1]) take along ``steps`` steps of the chain, from step ``steps // 2`` to
    ``steps`` (the chain's stationary part: on digits the mean energy is flat from step 50 of 150), pooled into one
    vector; ``steps = 0``: the clean images' own energies. Batch ``i`` draws its noise from a generator on the net's
    device seeded by (``seed``, ``i``), so the result depends on the device (CPU in ``pureebm purify``)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    device = next(energy_net.parameters()).device
    pooled = []
    for i, chunk in enumerate(clean.split(batch_size)):
        state = chunk.to(device).clone(memory_format=sampler.memory_format)
        noise = torch.empty_like(state, memory_format=torch.contiguous_format)
        generator = torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]))
        for t in range(steps + 1):
            energy, grad = sampler.energy_grad(energy_net, state)
            if t >= steps // 2:
                pooled.append(energy.float().cpu())
            if t == steps:
                break
            state.add_(grad, alpha=-sampler.drift).add_(noise.normal_(generator=generator), alpha=sampler.step_size)
            if sampler.clamp is not None:
                state.clamp_(*sampler.clamp)
    return torch.cat(pooled)


def calibrate(sampler: LangevinSampler, energy_net: nn.Module, clean: Tensor, quantile: float = 0.5,
              steps: int = CALIBRATION_STEPS,
              seed: int = 0) -> float:
    """The rule's threshold: the ``quantile`` of :func:`chain_energies` of ``clean`` held-out images, to
    ``THRESHOLD_DIGITS`` significant digits (so that last-bit differences between processes or thread counts do not
    give two rules)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return round_threshold(float(torch.quantile(chain_energies(sampler, energy_net, clean, steps, seed), quantile)))


def round_threshold(value: float) -> float:
    """``value`` to ``THRESHOLD_DIGITS`` significant digits."""
    return float(f"{value:.{THRESHOLD_DIGITS}g}")


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
