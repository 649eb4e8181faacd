"""The persistent bank of Langevin chains that supplies EBM negatives on one device."""

from __future__ import annotations

import torch
from torch import Tensor


class ChainBank:
    """Persistent Langevin chains of one device, held as a plain tensor (never a registered buffer).

    A buffer would be broadcast from rank 0 on every DDP forward and every rank would end up with rank 0's
    chains; as a plain attribute each rank keeps its own. The EBM module moves it between devices and
    writes it into checkpoints.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"bank size must be positive, got {size}")
        self.size = size
        self.chains: Tensor | None = None

    @property
    def initialized(self) -> bool:
        return self.chains is not None

    def _require(self) -> Tensor:
        if self.chains is None:
            raise RuntimeError("the chain bank is not initialised: call init_from_data/init_uniform or load()")
        return self.chains

    def init_from_data(self, images: Tensor, noise_std: float, generator: torch.Generator | None = None) -> None:
        """Fill the bank with ``images`` (cycled if fewer than ``size``) plus Gaussian noise of std ``noise_std``."""
        if images.shape[0] == 0:
            raise ValueError("cannot initialise the chain bank from an empty set of images")
        reps = -(-self.size // images.shape[0])
        chains = images.detach().repeat(reps, *([1] * (images.dim() - 1)))[: self.size].clone()
        noise = torch.randn(chains.shape, generator=generator, device=chains.device, dtype=chains.dtype)
        self.chains = chains.add_(noise, alpha=noise_std)

    def init_uniform(self, shape: tuple[int, ...], device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> None:
        """Fill the bank with U(-1, 1) noise images of ``shape`` (C, H, W); ``generator`` lives on ``device``."""
        self.chains = torch.rand((self.size, *shape), generator=generator, device=device).mul_(2).sub_(1)

    def load(self, chains: Tensor) -> None:
        """Replace the chains (e.g. from a checkpoint); the bank takes the size of ``chains``."""
        self.chains = chains.detach().clone()
        self.size = chains.shape[0]

    def to(self, device: torch.device | str) -> "ChainBank":
        if self.chains is not None:
            self.chains = self.chains.to(device)
        return self

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` distinct chains chosen uniformly at random (``generator`` on the CPU): their indices and a copy of their states."""
        chains = self._require()
        if n > self.size:
            raise ValueError(f"cannot draw {n} chains from a bank of {self.size}: raise bank_size or lower the batch size")
        idx = torch.randperm(self.size, generator=generator, device="cpu")[:n].to(chains.device)
        return idx, chains[idx]

    def write(
        self,
        idx: Tensor,
        states: Tensor,
        fresh: Tensor,
        rejuvenation_prob: float,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Write ``states`` back at ``idx``, each replaced by the matching ``fresh`` image with probability
        ``rejuvenation_prob`` (``generator`` on the CPU). Returns the share rejuvenated (a 0-dim tensor, no host sync)."""
        chains = self._require()
        if fresh.shape != states.shape:
            raise ValueError(f"fresh images {tuple(fresh.shape)} must match the chain states {tuple(states.shape)}")
        u = torch.rand(states.shape[0], generator=generator, device="cpu").to(states.device)
        mask = u < rejuvenation_prob
        chains[idx] = torch.where(mask.view(-1, *([1] * (states.dim() - 1))), fresh, states).to(chains.dtype)
        return mask.float().mean()
