"""GPU speed options for the energy network, switched on in YAML (``trainer.callbacks``) or by ``pureebm purify`` flags."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


def to_channels_last(net: torch.nn.Module, sampler=None) -> None:
    """``net``'s weights, and the chains of ``sampler`` (a LangevinSampler) if given, in channels-last layout: the
    same computation in another memory order (float sums may round differently)."""
    net.to(memory_format=torch.channels_last)
    if sampler is not None:
        sampler.memory_format = torch.channels_last


class SpeedOptions(Callback):
    """Applies speed options to the module's ``energy_net`` (and its Langevin sampler) before the run.

    bf16 autocast is not here: it is Lightning's own ``trainer.precision: bf16-mixed`` (the chains and the
    Langevin update stay float32; energies and gradients are computed in bfloat16).

    TF32 is set either way for the run and restored after it: PyTorch's own default runs convolutions in
    TF32 (``cudnn.allow_tf32`` is True) and matrix multiplies in IEEE float32; with this callback both are
    IEEE float32 unless ``tf32``.

    Args:
        tf32: TF32 matrix multiplies and convolutions on Ampere and later GPUs (changes numerics: ~10-bit
            mantissa in products).
        channels_last: energy-net weights and Langevin chains in channels-last memory layout (the same
            computation; on a GPU cuDNN may pick other kernels, so results can differ in the last bits).
        compile: ``torch.compile`` the energy network in place (``nn.Module.compile``: checkpoints keep the
            same keys); ``compile_mode`` e.g. "max-autotune", ``compile_backend`` e.g. "inductor".
    """

    def __init__(self, tf32: bool = False, channels_last: bool = False, compile: bool = False,
                 compile_mode: str | None = None, compile_backend: str = "inductor") -> None:
        self.tf32, self.channels_last, self.compile = tf32, channels_last, compile
        self.compile_mode, self.compile_backend = compile_mode, compile_backend
        self._saved: tuple[str, bool] | None = None

    def describe(self) -> str:
        on = [name for name in ("tf32", "channels_last", "compile") if getattr(self, name)]
        return ", ".join(on) or "none"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        net = getattr(pl_module, "energy_net", None)
        if net is None:
            raise TypeError(f"SpeedOptions applies to modules with an energy_net (EBMModule, purification), not {type(pl_module).__name__}")
        # matmuls through the precision API Lightning and inductor read (mixing it with the legacy
        # cuda.matmul.allow_tf32 flag makes torch refuse to report it); convolutions through cuDNN's flag
        self._saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = self.tf32
        if self.channels_last:
            to_channels_last(net, getattr(pl_module, "sampler", None) or getattr(getattr(pl_module, "purifier", None), "sampler", None))
        if self.compile and not getattr(net, "_compiled_call_impl", None):
            net.compile(mode=self.compile_mode, backend=self.compile_backend)
        if self.describe() != "none":
            rank_zero_info(f"Speed options on the energy network: {self.describe()}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._saved is not None:
            torch.set_float32_matmul_precision(self._saved[0])
            torch.backends.cudnn.allow_tf32 = self._saved[1]
            self._saved = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "")
