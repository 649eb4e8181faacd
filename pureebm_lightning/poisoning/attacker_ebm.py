"""The EBM a defense-aware attacker holds: the defender's own (white-box) or one trained on other data (grey-box),
with the purification settings it assumes, as the pieces its optimisation needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pureebm_lightning.chain_gradient import DifferentiablePurification
from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.langevin import LangevinSampler

#: how a defense-aware attack takes the defense into account
Awareness = Literal["bpda", "exact", "energy"]


@dataclass
class AttackerEBM:
    """An EBM loaded for an attacker, with the T it assumes the defender uses, on ``device``."""

    energy_net: nn.Module
    sampler: LangevinSampler
    chain_steps: int
    purification: DifferentiablePurification | None  # None: an energy-only attack, which never runs the chain
    record: dict[str, Any]
    energy_scale: float = 1.0  # std of the EBM's energies on the images the attack starts from
    generator: torch.Generator | None = None  # the chain's noise (the defender's own draws are unknown to the attacker)

    def chain(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Psi_T of ``x`` with the chosen gradient; noise from ``generator`` (default: a fresh draw of the attack's own)."""
        return self.purification(x, self.generator if generator is None else generator)

    def expected(self, objective: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """EOT: ``objective`` of Psi_T(``x``) averaged over the attack's ``eot`` draws of the chain's noise."""
        return self.purification.expectation(objective, x, self.generator)

    @property
    def eot(self) -> int:
        return self.purification.eot if self.purification is not None else 1

    @torch.no_grad()
    def purified(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The value of Psi_T(``x``) under the attacker's EBM (for measuring what a trigger keeps, whatever the awareness)."""
        generator = self.generator if generator is None else generator
        return self.sampler.sample(self.energy_net, x, self.chain_steps, generator=generator).samples.clamp(-1, 1)

    def twin_generators(self, seed: int) -> tuple[torch.Generator, torch.Generator]:
        """Two generators in the same state: chains from two images with the same noise (common random numbers), so
        that their difference is what the images' difference makes, not the noise's."""
        device = self.generator.device if self.generator is not None else "cpu"
        return tuple(torch.Generator(device=device).manual_seed(seed) for _ in range(2))

    def energy_penalty(self, x: Tensor, reference: Tensor) -> Tensor:
        """The mean energy of ``x`` above that of the images ``reference``, in standard deviations of clean energies."""
        return (self.energy_net(x).mean() - self.energy_net(reference).mean()) / self.energy_scale


def load_attacker_ebm(ebm_path: str | None, awareness: Awareness, chain_steps: int, eot: int, images: Tensor,
                      device: torch.device | str = "cpu", seed: int = 0) -> AttackerEBM:
    """The EBM at ``ebm_path`` (a checkpoint, a pretrained folder or ``hf://owner/name``) for an attack that is
    ``awareness``-aware of a defense running ``chain_steps`` Langevin steps; ``images`` ([-1, 1]) set the energy scale."""
    from pureebm_lightning.defenses.pureebm import Purifier

    if not ebm_path:
        raise PoisonedDataError("a defense-aware attack needs the EBM it attacks: --ebm_path (the defender's EBM for a "
                                "white-box attack, another EBM for a grey-box one)")
    if chain_steps < 0 or eot < 1:
        raise PoisonedDataError(f"--chain_steps must be at least 0 and --eot at least 1, got {chain_steps} and {eot}")
    if awareness not in ("bpda", "exact", "energy"):
        raise PoisonedDataError(f"--gradient must be bpda, exact or energy, got {awareness!r}")
    purifier = Purifier.from_source(ebm_path, steps=chain_steps)
    purifier.check_input(tuple(images.shape[1:]), "the attacked images")
    net = purifier.energy_net.to(device).requires_grad_(False)
    with torch.no_grad():
        energies = torch.cat([net(chunk.to(device)) for chunk in images[:512].split(128)])
    scale = float(energies.std()) if len(energies) > 1 and float(energies.std()) > 0 else 1.0
    chain = None if awareness == "energy" else DifferentiablePurification(net, purifier.sampler, chain_steps, awareness, eot)
    record = {"ebm": purifier.checkpoint, "ebm_sha256": purifier.checkpoint_sha256 or (purifier.pretrained or {}).get("weights_sha256"),
              "awareness": awareness, "chain_steps": chain_steps, "eot": eot if chain is not None else None,
              "step_size": purifier.sampler.step_size, "temperature": purifier.sampler.temperature, "energy_scale": scale}
    return AttackerEBM(net, purifier.sampler, chain_steps, chain, record, scale,
                       torch.Generator(device=device).manual_seed(seed + 7919))
