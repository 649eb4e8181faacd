"""Friendly Noise (Liu et al., NeurIPS 2022): per-image noise as large as a model trained on the poisoned set allows
without changing its outputs, within an l_inf ball, plus random noise.

As the authors' code does it (tianyu139/friendly-noise): a model is trained on the poisoned set; for each batch the
noise starts uniform in +-8/255 and takes ``steps`` SGD steps (lr 100, constant: the authors build a scheduler but
never step it; momentum 0.9, Nesterov) on ``KL(f(x) || f(x + clamp(n))) - mu * mean(clamp(n)^2)`` in [0, 1] pixel
units, where ``clamp`` is to +-eps and the noisy image is clamped to [0, 1] in the forward pass only; the noise
is clamped to +-eps at the end. Bernoulli +-``random_noise`` is then added on top, so an image moves by at most
(eps + random_noise)/255. Where this differs: the result is stored once, rounded to 8 bits (the authors redraw
the random part every epoch), and the model is this package's quick recipe (:func:`train_surrogate`: SGD 0.05,
random crops, ``model_epochs`` epochs), not the victim's own model after 5 of its epochs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from pureebm_lightning.defense import Defense, require_uint8
from pureebm_lightning.defenses import register_defense
from pureebm_lightning.images import to_signed_unit, to_uint8
from pureebm_lightning.splits import Split

if TYPE_CHECKING:
    from pureebm_lightning.sources import PoisonedSource

MODEL_FILE = "friendly_noise_model.pt"


@register_defense()
class FriendlyNoise(Defense):
    """Friendly Noise: a model trained on the poisoned set, then noise that keeps its outputs, plus random noise.

    Args:
        epsilon: l_inf bound of the friendly noise, in 1/255 (the authors': 16).
        random_noise: size of the Bernoulli +- noise added on top, in 1/255 (the authors' code default: 8).
        steps: optimisation steps of the friendly noise (the authors': 30).
        lr: SGD learning rate of the noise, in [0, 1] pixel units (the authors': 100).
        mu: weight of the noise-size term (the authors': 1).
        model_epochs: epochs of the model trained on the poisoned set (the authors compute the noise after 5).
        model_arch: that model's network (auto: SmallCNN up to 16x16 images, ResNet-18 above).
        hflip: train that model with horizontal flips (CIFAR: yes; digits: no).
        seed: seed of the model's initialisation and of the noise.
    """

    name = "friendly_noise"

    def __init__(self, epsilon: int = 16, random_noise: int = 8, steps: int = 30, lr: float = 100.0, mu: float = 1.0,
                 model_epochs: int = 5, model_arch: Literal["auto", "small_cnn", "resnet18"] = "auto",
                 hflip: bool = False, seed: int = 0) -> None:
        if not 1 <= epsilon <= 255 or not 0 <= random_noise <= 255 or steps < 0 or model_epochs < 1:
            raise ValueError("Friendly Noise needs 1 <= epsilon <= 255, 0 <= random_noise <= 255, steps >= 0, model_epochs >= 1")
        self.epsilon, self.random_noise, self.steps, self.lr, self.mu = epsilon, random_noise, steps, lr, mu
        self.model_epochs, self.model_arch, self.hflip, self.seed = model_epochs, model_arch, hflip, seed
        self.model: torch.nn.Module | None = None

    def settings(self) -> dict[str, Any]:
        return {"defense": self.name, "epsilon_255": self.epsilon, "random_noise_255": self.random_noise, "steps": self.steps,
                "lr": float(self.lr), "mu": float(self.mu), "model_epochs": self.model_epochs, "model_arch": self.model_arch,
                "hflip": self.hflip, "seed": self.seed, "quantised_bits": 8}

    def describe(self) -> str:
        return f"Friendly Noise, eps = {self.epsilon}/255, random +-{self.random_noise}/255, {self.steps} steps"

    def fit(self, source: PoisonedSource, state_dir: Path, device: torch.device | str = "cpu") -> None:
        """Train the model on the poisoned set (labels as given), or load the one a previous run of the same output kept."""
        from pureebm_lightning.surrogate import surrogate_net, train_surrogate

        classes = len(source.classes) if source.classes else max(source.labels) + 1
        path = Path(state_dir) / MODEL_FILE
        if path.is_file():
            net = surrogate_net(source.shape, classes, self.model_arch)
            module = net  # the recipe normalises [0, 1] pixels by mean 0.5, std 0.5: the net takes [-1, 1] as it is
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            images = torch.stack([source.load(i) for i in range(len(source))])
            split = Split(images, torch.tensor(source.labels), torch.arange(len(source)))
            accelerator = "gpu" if torch.device(device).type == "cuda" else "cpu"
            trained = train_surrogate(split, classes, self.model_epochs, self.seed, self.model_arch, accelerator, self.hflip,
                                      progress=False)
            module = trained.net.cpu()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # one per process: ranks may fit side by side
            torch.save(module.state_dict(), tmp)
            tmp.replace(path)
        self.model = module.eval().requires_grad_(False).to(device)

    def to(self, device: torch.device | str) -> "FriendlyNoise":
        if self.model is not None:
            self.model.to(device)
        return self

    @torch.enable_grad()
    def __call__(self, images: Tensor, first_index: int = 0, epoch: int = 0) -> Tensor:
        if self.model is None:
            raise RuntimeError("FriendlyNoise.fit(source, state_dir) must run before purifying")
        self.model.to(images.device)
        seed = int(np.random.SeedSequence([self.seed, epoch, first_index]).generate_state(1, np.uint64)[0])
        gen = torch.Generator(device=images.device).manual_seed(seed)
        x = (to_signed_unit(require_uint8(images)) + 1) / 2  # [0, 1], the authors' pixel units
        eps = self.epsilon / 255
        with torch.no_grad():
            target = F.log_softmax(self.model(x * 2 - 1), dim=1)
        noise = ((torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * 8 / 255).requires_grad_(True)
        optimizer = torch.optim.SGD([noise], lr=self.lr, momentum=0.9, nesterov=True)
        for _ in range(self.steps):
            bounded = noise.clamp(-eps, eps)
            out = F.log_softmax(self.model((x + bounded).clamp(0, 1) * 2 - 1), dim=1)
            loss = F.kl_div(out, target, reduction="batchmean", log_target=True) - self.mu * bounded.pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sign = torch.randint(0, 2, x.shape, generator=gen, device=x.device).float() * 2 - 1
        total = noise.detach().clamp(-eps, eps) + sign * self.random_noise / 255
        return to_uint8((x + total).clamp(0, 1) * 2 - 1)
