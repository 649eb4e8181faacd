"""The PureEBM authors' EBM as their release defines it (``EBMSNGAN32(nf, patch_size)``, a PyTorchModelHubMixin with
their parameter names), written here from its published structure, and a writer of folders in their Hub layout."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.nn import functional as F


class _Optimized(nn.Module):  # their first block: c1, ReLU, c2, pool; shortcut c_sc after pooling
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c1, self.c2, self.c_sc = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1), nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        return F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2) + self.c_sc(F.avg_pool2d(x, 2))


class _Down(nn.Module):  # their other blocks: pre-activation, a 1x1 c_sc only when downsampling
    def __init__(self, ch: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, 1, 1), nn.Conv2d(ch, ch, 3, 1, 1)
        if downsample:
            self.c_sc = nn.Conv2d(ch, ch, 1, 1, 0)

    def forward(self, x):
        h = self.c2(F.relu(self.c1(F.relu(x))))
        if not self.downsample:
            return h + x
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.c_sc(x), 2)


class AuthorsEBMSNGAN32(nn.Module, PyTorchModelHubMixin):
    """block1..block4 and l5 (no bias); pixel-unshuffle by ``patch_size`` first; energies of shape (N, 1)."""

    def __init__(self, nf: int = 128, patch_size: int = 1) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.block1 = _Optimized(3 * patch_size**2, nf)
        self.block2, self.block3, self.block4 = _Down(nf, True), _Down(nf, False), _Down(nf, False)
        self.l5 = nn.Linear(nf, 1, bias=False)
        for m in self.modules():  # random, non-zero biases: a mapping error cannot hide behind zeros
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.bias, std=0.05)

    def forward(self, x):
        h = F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x
        h = self.block4(self.block3(self.block2(self.block1(h))))
        return self.l5(F.relu(h).mean(dim=(2, 3)))


def write_authors_folder(folder: Path, nf: int = 16, patch_size: int = 1, weights: str = "safetensors",
                         config: bool = True, seed: int = 0) -> AuthorsEBMSNGAN32:
    """Save a random authors' EBM with their mixin's ``save_pretrained`` (model.safetensors, config.json, README.md);
    ``weights="bin"`` replaces the safetensors with ``pytorch_model.bin`` (older huggingface_hub releases),
    ``config=False`` removes config.json (a class that records no init arguments)."""
    torch.manual_seed(seed)
    net = AuthorsEBMSNGAN32(nf=nf, patch_size=patch_size).eval()
    net.save_pretrained(folder)
    if weights == "bin":
        (folder / "model.safetensors").unlink()
        torch.save(net.state_dict(), folder / "pytorch_model.bin")
    if not config:
        (folder / "config.json").unlink()
    return net
