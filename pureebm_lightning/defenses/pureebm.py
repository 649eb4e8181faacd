"""PureEBM's Psi_T: T Langevin steps of a trained EBM from each image, clamped to [-1, 1] and quantised to 8 bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pureebm_lightning.checkpoints import file_sha256, read_ebm_checkpoint
from pureebm_lightning.defense import Defense
from pureebm_lightning.defenses import register_defense
from pureebm_lightning.errors import CheckpointError, PoisonedDataError
from pureebm_lightning.images import to_signed_unit, to_uint8
from pureebm_lightning.langevin import LangevinSampler
from pureebm_lightning.stopping_rule import EnergyStop, sample_until


@register_defense()
class Purifier(Defense):
    """PureEBM: purifies batches of images with an energy network and the training sampler's eps and tau.

    In Python::

        purifier = Purifier.from_checkpoint("runs/ebm_digits/checkpoints/last.ckpt", steps=150)
        # or a published EBM: Purifier.from_pretrained("hf://SunayBhat1/puregen-ebm-cinic10-imagenet")
        purified = purifier(images)  # uint8 (B, C, H, W), or floats in [-1, 1]; on any device

    Noise comes from a generator seeded by ``seed``, the epoch and the block's first source index, so a
    block purifies identically on any device, device count or rerun. No initial noise; one sample per image.
    ``image_shape`` (C, H, W), when known (the training chains' shape), is the only input shape accepted.
    """

    def __init__(self, energy_net: nn.Module, sampler: LangevinSampler, steps: int = 150, seed: int = 0,
                 checkpoint: str | None = None, checkpoint_sha256: str | None = None,
                 image_shape: tuple[int, int, int] | None = None, pretrained: dict[str, Any] | None = None,
                 stop: EnergyStop | None = None) -> None:
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.stop = stop  # stop each chain on its own (steps is then its max_steps)
        self.last_steps: Tensor | None = None  # with ``stop``: the steps each image of the last call took
        self.stop_calibration: dict[str, Any] | None = None  # an exported EBM's stored calibration of ``stop``
        steps = stop.max_steps if stop is not None else steps
        self.energy_net, self.sampler, self.steps, self.seed = energy_net.eval(), sampler, steps, seed
        self.checkpoint, self.checkpoint_sha256, self.image_shape = checkpoint, checkpoint_sha256, image_shape
        self.pretrained = pretrained  # PretrainedEBM.record() of a Hub repo or folder (None: a checkpoint, or built here)

    @classmethod
    def from_checkpoint(cls, path: str | Path, steps: int = 150, seed: int = 0) -> "Purifier":
        """The energy net and sampler settings of an EBM checkpoint written by ``pureebm fit``."""
        from pureebm_lightning.ebm_module import EBMModule

        path = Path(path).expanduser()
        ckpt = read_ebm_checkpoint(path)  # one-line errors for empty, truncated and other models' files
        try:
            module = EBMModule.load_from_checkpoint(path, map_location="cpu")
        except TypeError as err:  # no energy_net in the hyper-parameters
            raise CheckpointError(
                f"{path} does not record its energy network's configuration ({err}); use a checkpoint written by "
                "`pureebm fit`, or build Purifier(energy_net, sampler) in Python"
            ) from err
        bank = ckpt.get("chain_bank")
        shape = tuple(bank.shape[2:]) if bank is not None else None
        return cls(module.energy_net, module.sampler, steps, seed, str(path.resolve()), file_sha256(path), shape)

    @classmethod
    def from_pretrained(cls, source: str | Path, steps: int | None = None, seed: int = 0) -> "Purifier":
        """The EBM of a Hub repo (``hf://owner/name[@revision]``) or a local folder, in the authors' layout or written by
        ``pureebm export``; ``steps`` defaults to the T its config recommends, else 150. Its sampler settings come from
        its config when it states them, else the paper's (eps 1.25e-2, tau 1e-4)."""
        from pureebm_lightning.pretrained import load_pretrained

        ebm = load_pretrained(source)
        steps = steps if steps is not None else ebm.recommended_steps if ebm.recommended_steps is not None else 150
        purifier = cls(ebm.energy_net, ebm.sampler, steps, seed, ebm.describe(), None, ebm.image_shape, ebm.record())
        purifier.stop_calibration = (ebm.config or {}).get("stop_calibration")
        return purifier

    @classmethod
    def from_source(cls, source: str | Path, steps: int | None = None, seed: int = 0) -> "Purifier":
        """:meth:`from_checkpoint` for a ``.ckpt`` file, :meth:`from_pretrained` for a folder or ``hf://`` repo."""
        from pureebm_lightning.pretrained import parse_source

        if parse_source(source).pretrained:
            return cls.from_pretrained(source, steps, seed)
        return cls.from_checkpoint(source, steps=150 if steps is None else steps, seed=seed)

    name = "pureebm"

    def describe(self) -> str:
        if self.stop is not None:
            return (f"energy stop (threshold {self.stop.threshold:.4g}, patience {self.stop.patience}, at most "
                    f"{self.stop.max_steps} steps), eps = {self.sampler.step_size}, tau = {self.sampler.temperature}")
        return f"T = {self.steps}, eps = {self.sampler.step_size}, tau = {self.sampler.temperature}"

    def settings(self) -> dict[str, Any]:
        """The EBM (by its checkpoint's or weights file's hash), T, eps, tau and the noise seed; clamped to [-1, 1],
        quantised to 8 bits."""
        weights = ({"weights_sha256": self.pretrained["weights_sha256"], "energy_net": self.pretrained["energy_net"]}
                   if self.pretrained else {"checkpoint_sha256": self.checkpoint_sha256})  # a checkpoint's hash covers its net
        return {
            "defense": self.name, **weights, "steps": self.steps,
            "step_size": self.sampler.step_size, "temperature": self.sampler.temperature, "seed": self.seed,
            "clamp": [-1.0, 1.0], "quantised_bits": 8, **({"stop": self.stop.settings()} if self.stop is not None else {}),
        }

    def record(self) -> dict[str, Any]:
        if self.pretrained:  # the Hub repo and resolved commit (or folder), the weights file and its layout
            return {"checkpoint": self.checkpoint,
                    **{k: v for k, v in self.pretrained.items() if k not in ("weights_sha256", "energy_net")}}
        return {"checkpoint": self.checkpoint}

    def to(self, device: torch.device | str) -> "Purifier":
        self.energy_net.to(device)
        return self

    def check_input(self, shape: tuple[int, int, int], where: str | Path) -> None:
        """Fail before any work if the energy net cannot take (C, H, W) images, or was trained on another shape."""
        if self.image_shape is not None and tuple(shape) != self.image_shape:
            c, h, w = self.image_shape
            raise PoisonedDataError(
                f"{where}: its {shape[0]}x{shape[1]}x{shape[2]} images do not fit the EBM ({self.checkpoint}), "
                + (f"which takes {c}x{h}x{w} images" if self.pretrained else f"which was trained on {c}x{h}x{w} images")
            )
        try:
            with torch.no_grad():
                param = next(self.energy_net.parameters(), None)
                device = param.device if param is not None else "cpu"
                energy = self.energy_net(torch.zeros(1, *shape, device=device))
            ok = energy.shape == (1,)
        except (RuntimeError, ValueError) as err:
            raise PoisonedDataError(f"{where}: its {shape[0]}x{shape[1]}x{shape[2]} images do not fit the EBM ({self.checkpoint}): {err}") from err
        if not ok:
            raise PoisonedDataError(f"{where}: the EBM returns energies of shape {tuple(energy.shape)} for one image")

    def generator(self, device: torch.device, first_index: int, epoch: int = 0) -> torch.Generator:
        seed = int(np.random.SeedSequence([self.seed, epoch, first_index]).generate_state(1, np.uint64)[0])
        return torch.Generator(device=device).manual_seed(seed)

    def __call__(self, images: Tensor, first_index: int = 0, epoch: int = 0) -> Tensor:
        """Purified copies of ``images`` (B, C, H, W) on their device (the energy net follows them there): uint8 in,
        uint8 out; floats in [-1, 1] in, floats in [-1, 1] (on the 8-bit grid) out. Anything else is refused, never
        rescaled. ``first_index`` (the batch's place in its data set) and ``epoch`` seed the noise."""
        x = start_images(images)
        param = next(self.energy_net.parameters(), None)
        if param is not None and param.device != x.device:
            self.energy_net.to(x.device)
        gen = self.generator(x.device, first_index, epoch)
        if self.stop is not None:
            end, self.last_steps = sample_until(self.sampler, self.energy_net, x, self.stop, generator=gen)
            out = to_uint8(end)
        else:
            out = to_uint8(self.sampler.sample(self.energy_net, x, self.steps, generator=gen).samples)
        return out if images.dtype == torch.uint8 else to_signed_unit(out).to(images.dtype)

    def walk(self, images: Tensor, first_index: int, points: list[int]):
        """The chain of :meth:`__call__` on uint8 ``images``, yielding ``(step, x)`` (x in [-1, 1], unclamped) at each
        step of ``points`` up to ``self.steps``, and stopping at the last; at ``self.steps``, x clamped and quantised is
        what :meth:`__call__` returns."""
        x = to_signed_unit(images)
        gen, done = self.generator(x.device, first_index), 0
        for point in sorted({p for p in points if p <= self.steps}):
            if point > done:
                x, done = self.sampler.sample(self.energy_net, x, point - done, generator=gen).samples, point
            yield point, x

    def trace(self, images: Tensor, first_index: int, points: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`__call__`, also returning, at each step in ``points``, the summed energy and summed L2
        distance from the start image over the batch (the paper's Figure 3)."""
        x0 = to_signed_unit(images)
        energy = torch.zeros(len(points), device=x0.device)
        dist = torch.zeros(len(points), device=x0.device)
        for step, x in self.walk(images, first_index, [*points, self.steps]):
            for k in [k for k, point in enumerate(points) if point == step]:
                with torch.no_grad():
                    energy[k] = self.energy_net(x).sum()
                dist[k] = (x - x0).flatten(1).norm(dim=1).sum()
        return to_uint8(x), energy, dist


def start_images(images: Tensor) -> Tensor:
    """uint8 images, or floats in [-1, 1], as float images in [-1, 1]; a clear error for anything else."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise PoisonedDataError(f"expected a (B, C, H, W) tensor of images, got {getattr(images, 'shape', type(images).__name__)}")
    if images.dtype == torch.uint8:
        return to_signed_unit(images)
    if not images.is_floating_point():
        raise PoisonedDataError(f"images of type {images.dtype}: give uint8 pixels (0..255) or floats in [-1, 1]")
    low, high = (float(v) for v in torch.aminmax(images)) if images.numel() else (0.0, 0.0)
    if not (-1.0 <= low and high <= 1.0):  # also catches NaN
        raise PoisonedDataError(f"float images must lie in [-1, 1] (the EBM's space), these span [{low:g}, {high:g}]: "
                                "scale them (x * 2 - 1 for [0, 1]) or pass uint8 pixels")
    return images.float()
