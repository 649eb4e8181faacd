"""Energy networks: images in [-1, 1] to one scalar energy per image (low energy = likely)."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F


def _init_xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _OptimizedDownBlock(nn.Module):
    """First SNGAN discriminator block: conv3x3, ReLU, conv3x3, avgpool2, plus a pooled 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))


class _ResBlock(nn.Module):
    """Pre-activation SNGAN discriminator block, optionally downsampling by 2."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.downsample = downsample
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if (downsample or in_ch != out_ch) else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        sc = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            h, sc = F.avg_pool2d(h, 2), F.avg_pool2d(sc, 2)
        return h + sc


class SNGANResNetEnergy(nn.Module):
    """The paper's energy net: an SNGAN-discriminator-style ResNet (no spectral norm), ~1.05 M parameters at 128 filters.

    Takes images with ``in_channels`` channels whose sides are divisible by ``4 * patch_size`` (32x32, 64x64, ...).
    ``patch_size`` > 1 (the authors' larger-image variant) first folds each ``patch_size`` x ``patch_size`` patch into
    channels (pixel-unshuffle), so the first convolution takes ``in_channels * patch_size**2`` channels.
    """

    def __init__(self, in_channels: int = 3, num_filters: int = 128, patch_size: int = 1) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}")
        nf = num_filters
        self.in_channels, self.num_filters, self.patch_size = in_channels, num_filters, patch_size
        self.blocks = nn.Sequential(
            _OptimizedDownBlock(in_channels * patch_size**2, nf),
            _ResBlock(nf, nf, downsample=True),
            _ResBlock(nf, nf, downsample=False),
            _ResBlock(nf, nf, downsample=False),
        )
        self.linear = nn.Linear(nf, 1, bias=False)
        _init_xavier(self)

    def forward(self, x: Tensor) -> Tensor:
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)
        h = F.relu(self.blocks(x)).mean(dim=(2, 3))
        return self.linear(h).squeeze(1)


class ConvNetEnergy(nn.Module):
    """Light energy net (ebm-anatomy / Stochastic Security): conv3x3, stride-2 conv4x4 stages with LeakyReLU(0.05), conv4x4 head.

    The number of stride-2 stages follows ``image_size`` (log2(image_size / 4)), so 32x32 gives the published
    three-stage net (~0.7 M parameters at ``num_filters=32``) and 16x16 or 8x8 images get a shorter one.
    """

    def __init__(self, in_channels: int = 3, num_filters: int = 32, image_size: int = 32, negative_slope: float = 0.05) -> None:
        super().__init__()
        n_down = math.log2(image_size / 4) if image_size >= 4 else -1
        if n_down < 0 or n_down != int(n_down):
            raise ValueError(f"ConvNetEnergy needs image_size = 4 * 2**k (4, 8, 16, 32, 64, ...), got {image_size}")
        self.in_channels, self.num_filters, self.image_size = in_channels, num_filters, image_size
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_filters, 3, 1, 1), nn.LeakyReLU(negative_slope)]
        ch = num_filters
        for _ in range(int(n_down)):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(negative_slope)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"ConvNetEnergy was built for {self.image_size}x{self.image_size} images, got "
                f"{x.shape[-2]}x{x.shape[-1]}: set energy_net.init_args.image_size to match the data"
            )
        return self.net(x).flatten()


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
