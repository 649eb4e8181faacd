"""Shared fixtures: paths to the real configs, small energy functions with known gradients, and the one set of
"tiny run" overrides (EBM training, purify, classifier, every attack and defense) that the tests use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


class QuadraticEnergy(nn.Module):
    """E(x) = tau * sum((x - mu)^2) / (2 sigma^2) per image, so exp(-E / tau) is N(mu, sigma^2 I)."""

    def __init__(self, mu: float, sigma: float, tau: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu))
        self.sigma, self.tau = sigma, tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tau * ((x - self.mu) ** 2).flatten(1).sum(1) / (2 * self.sigma**2)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


# ---- tiny runs: every test that runs a command in seconds takes its overrides from here ----------------------
#: `pureebm fit --config configs/ebm_digits.yaml` on 8x8 digits with a small net, 2 steps
TINY_EBM = [
    "--model.init_args.sampler.init_args.n_steps=2",
    "--model.init_args.bank_size=64",
    "--data.init_args.image_size=8",
    "--model.init_args.energy_net.init_args.image_size=8",
    "--model.init_args.energy_net.init_args.num_filters=8",
    "--trainer.max_steps=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
#: `pureebm purify` without bars, summary or worker processes
QUIET_PURIFY = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--num_workers=0"]
#: a classifier trained for one epoch, quietly
QUICK_CLASSIFIER = ["--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
#: `pureebm poison` on 8x8 digits without bars
TINY_POISON_DATA = ["--data", "digits", "--image_size", "8", "--progress", "false"]
#: the smallest run of each registered attack, with the largest pixel change (1/255) it may make (None: any, as a
#: patch or a warp moves pixels all the way) and the largest share of the training images it may change; a new
#: attack adds its line here, and the contract tests (test_plugins.py) run it
TINY_ATTACK: dict[str, tuple[list[str], int | None, float]] = {
    "none": ([], 0, 0.0),
    "badnets": (["--budget", "0.05"], None, 0.05),
    "blended": (["--budget", "0.05", "--alpha", "0.2"], 52, 0.05),
    "narcissus": (["--budget", "0.05", "--steps", "20", "--lr", "0.1", "--surrogate_epochs", "1"], 8, 0.05),
    "gradient_matching": (["--budget", "0.02", "--steps", "3", "--restarts", "1", "--surrogate_epochs", "1"], 8, 0.02),
    "wanet": (["--budget", "0.05", "--strength", "1.0"], None, 0.16),  # the poisons and twice as many noise-mode images
    # defense-aware attacks: "{ebm}" stands for the tests' 8x8 grey EBM checkpoint (the grey_ebm fixture)
    "adaptive_narcissus": (["--ebm_path", "{ebm}", "--budget", "0.05", "--steps", "3", "--batch_size", "8", "--chain_steps", "3",
                            "--surrogate_epochs", "1", "--lr", "0.1"], 8, 0.05),
    "adaptive_badnets": (["--ebm_path", "{ebm}", "--budget", "0.05", "--steps", "3", "--batch_size", "8", "--chain_steps", "3"],
                         None, 0.05),
}


def tiny_defense(name: str, ebm: Path) -> list[str]:
    """`pureebm purify` options of the smallest run of each registered defense (a new defense adds its line)."""
    return {
        "pureebm": [f"--ckpt_path={ebm}", "--steps=5"],
        "jpeg": ["--jpeg_quality=75"],
        "friendly_noise": ["--defense=friendly_noise", "--friendly_noise.model_epochs=1", "--friendly_noise.steps=3"],
    }[name]


def train_tiny_ebm(workdir: Path, rgb: bool) -> Path:
    """A real EBM checkpoint from `pureebm fit` on 8x8 digits (grey, or RGB with 3 input channels), in seconds."""
    import os

    from pureebm_lightning.cli import main

    workdir.mkdir(parents=True, exist_ok=True)
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(workdir)
    sys.argv = ["pureebm"]
    try:
        extra = ["--data.init_args.rgb=true", "--model.init_args.energy_net.init_args.in_channels=3"] if rgb else []
        main(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *TINY_EBM, *extra])
    finally:
        os.chdir(cwd)
        sys.argv = argv
    return workdir / "runs/ebm_digits/checkpoints/last.ckpt"


@pytest.fixture(scope="session")
def grey_ebm(tmp_path_factory) -> Path:
    return train_tiny_ebm(tmp_path_factory.mktemp("grey_ebm"), rgb=False)


@pytest.fixture(scope="session")
def rgb_ebm(tmp_path_factory) -> Path:
    return train_tiny_ebm(tmp_path_factory.mktemp("rgb_ebm"), rgb=True)


def kill_during_second_block(monkeypatch) -> list:
    """Make ``PurifiedStore.write`` write one block, then raise KeyboardInterrupt (a run killed during the second
    block); returns the indices written, and ``undo()`` on it restores the real write."""
    from pureebm_lightning.purification.purified_store import PurifiedStore

    write, calls = PurifiedStore.write, KilledWrites()

    def write_then_die(self, indices, images, rank=0, **steps):
        if calls:
            raise KeyboardInterrupt
        calls.append(indices)
        write(self, indices, images, rank, **steps)

    calls.undo = lambda: monkeypatch.setattr(PurifiedStore, "write", write)
    monkeypatch.setattr(PurifiedStore, "write", write_then_die)
    return calls


class KilledWrites(list):
    """The blocks a :func:`kill_during_second_block` run wrote."""

    undo = None


def write_digit_folder(root: Path, count: int = 40, rgb: bool = False, split: str = "train", size: int = 8) -> list[str]:
    """Real digits as 8-bit PNGs under root/<split>/<label>/<index>.png; returns the relative paths."""
    from PIL import Image

    from pureebm_lightning.bundled_digits import digits_images

    x, y = digits_images(size, rgb=rgb)
    images = ((x[:count] + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    keys = []
    for i in range(count):
        rel = Path(split) / str(int(y[i])) / f"{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i] if rgb else images[i, :, :, 0], "RGB" if rgb else "L").save(root / rel)
        keys.append(str(rel))
    return keys
