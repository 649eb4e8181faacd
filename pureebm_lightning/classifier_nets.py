"""Classifier networks: torchvision architectures adapted to small (32x32) images, and a small CNN for digits."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torchvision import models


class SmallImageClassifier(nn.Module):
    """A torchvision architecture with its stem adapted to small images (the usual CIFAR variants).

    ResNet-18/34: 3x3 stride-1 first conv, no max-pool. MobileNetV2: stride-1 first conv. DenseNet-121:
    3x3 stride-1 first conv, no first pool. Weights are random (nothing is downloaded).
    """

    def __init__(self, arch: Literal["resnet18", "resnet34", "mobilenet_v2", "densenet121"] = "resnet18",
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.arch = arch
        if arch in ("resnet18", "resnet34"):
            net = getattr(models, arch)(weights=None, num_classes=num_classes)
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif arch == "mobilenet_v2":
            net = models.mobilenet_v2(weights=None, num_classes=num_classes)
            first = net.features[0][0]
            net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, 1, 1, bias=False)
        elif arch == "densenet121":
            net = models.densenet121(weights=None, num_classes=num_classes)
            net.features.conv0 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.features.pool0 = nn.Identity()
        else:
            raise ValueError(f"unknown arch {arch!r}: choose resnet18, resnet34, mobilenet_v2 or densenet121")
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool stages and a linear head: trains on the 16x16 digits in a minute on a CPU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
