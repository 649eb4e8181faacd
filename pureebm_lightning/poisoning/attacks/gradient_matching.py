"""Gradient Matching / Witches' Brew (Geiping et al. 2021): clean-label, triggerless, targeted poisoning.

The attacker picks a test image (the target) and a class it should take (the intended class), and perturbs
``budget`` x N training images of the intended class within ``|delta| <= epsilon`` so that the training
gradient of the poisons points where the gradient that would teach the target the intended class points:

    min_delta  1 - cos( grad_theta CE(f(x_t), y_adv),  grad_theta CE(f(aug(x_p + delta)), y_p) )

on a surrogate trained on the clean training set. As published: signed-gradient Adam, step size dropped
x0.1 at 3/8, 5/8 and 7/8 of the steps, projection onto the l_inf ball and the image box after every step,
differentiable augmentation (a random shift per image, and flips with ``hflip``), several random restarts
of which the lowest final objective is kept. All poisons form one batch (Witches' Brew's default batch is
512, which holds CIFAR-10's 1 % budget of 500).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import add_steps, dequantise, quantise, to_signed_unit
from pureebm_lightning.poisoning.attacks import register_attack
from pureebm_lightning.poisoning.budget import (
    check_optimisation,
    choose_rows,
    poison_count,
)
from pureebm_lightning.poisoning.clean_data import CleanData
from pureebm_lightning.poisoning.poisoned_folder import Poisoning, Target
from pureebm_lightning.splits import Split
from pureebm_lightning.surrogate import crop_padding, random_shift, train_surrogate


def pick_target(clean: CleanData, generator: torch.Generator, target_id: int | None,
                intended_class: int | None) -> tuple[int, int]:
    """(row of the target in the test split, intended class): given, or drawn (a test image of another class)."""
    test = clean.test
    if intended_class is not None and intended_class not in range(len(clean.classes)):
        raise PoisonedDataError(f"--intended_class {intended_class} is not one of the {len(clean.classes)} classes")
    if target_id is not None:
        rows = (test.ids == target_id).nonzero().flatten()
        if len(rows) == 0:
            raise PoisonedDataError(f"--target_id {target_id} is not the id of a test image")
        row = int(rows[0])
    else:
        candidates = (test.labels != intended_class).nonzero().flatten() if intended_class is not None else torch.arange(len(test))
        row = int(candidates[torch.randint(len(candidates), (1,), generator=generator)])
    if intended_class is None:
        others = [c for c in range(len(clean.classes)) if c != int(test.labels[row])]
        intended_class = others[int(torch.randint(len(others), (1,), generator=generator))]
    if intended_class == int(test.labels[row]):
        raise PoisonedDataError(f"the target (test id {int(test.ids[row])}) already is of class {intended_class}")
    return row, intended_class


class GradientMatching:
    """The alignment objective of one surrogate and one target; ``__call__`` gives ``1 - cos`` for poisons."""

    def __init__(self, model: torch.nn.Module, target: Tensor, intended_class: int) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        device = self.params[0].device
        with torch.enable_grad():
            loss = F.cross_entropy(model(target[None].to(device)), torch.tensor([intended_class], device=device))
            self.target_grad = [g.detach() for g in torch.autograd.grad(loss, self.params)]
        self.target_norm = torch.sqrt(sum(g.pow(2).sum() for g in self.target_grad))

    @torch.enable_grad()
    def __call__(self, poisons: Tensor, labels: Tensor, create_graph: bool = True) -> Tensor:
        loss = F.cross_entropy(self.model(poisons), labels)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph)
        dot = sum((g * t).sum() for g, t in zip(grads, self.target_grad))
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        return 1 - dot / (self.target_norm * norm)


@torch.enable_grad()
def craft(objective: GradientMatching, x: Tensor, y: Tensor, epsilon: int, steps: int = 240, restarts: int = 8,
          step_size: float = 6.0, max_shift: int | None = None, hflip: bool = False, seed: int = 0,
          progress: bool = True) -> tuple[Tensor, list[list[float]], list[float]]:
    """Perturbations (int16 1/255 steps, like ``x``'s shape) of poisons ``x`` ([-1, 1]) with labels ``y``.

    Returns the best restart's steps, every restart's objective per step, and each restart's final objective
    (without augmentation, after rounding to the pixel grid). ``step_size`` is Adam's first step in 1/255;
    ``max_shift`` of the differentiable shifts defaults to the training recipe's crop padding.
    """
    if steps < 1 or restarts < 1:
        raise PoisonedDataError(f"--steps and --restarts must be at least 1, got {steps} and {restarts}")
    max_shift = crop_padding(x.shape) if max_shift is None else max_shift
    device = objective.params[0].device
    x, y, bound = x.to(device), y.to(device), 2 * epsilon / 255
    generator = torch.Generator().manual_seed(seed)
    histories, finals, best, best_final = [], [], None, float("inf")
    drops = [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    bar = tqdm(total=restarts * steps, desc="Gradient matching", disable=not progress, leave=False)
    for _ in range(restarts):
        delta = ((torch.rand(x.shape, generator=generator) * 2 - 1) * bound).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=2 * step_size / 255)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, drops, 0.1)
        history = []
        for _ in range(steps):
            loss = objective(random_shift(x + delta, max_shift, generator, hflip), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            delta.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # onto the l_inf ball, then into the image box
                delta.clamp_(-bound, bound)
                delta.copy_((x + delta).clamp(-1, 1) - x)
            history.append(loss.item())
            bar.update()
        steps_255 = quantise(delta.detach().cpu(), epsilon)
        final = objective(((x.cpu() + dequantise(steps_255)).clamp(-1, 1)).to(device), y, create_graph=False).item()
        histories.append(history)
        finals.append(final)
        if best is None or final < best_final:  # strict: ties go to the first restart
            best, best_final = steps_255, final
    bar.close()
    return best, histories, finals


@register_attack()
def gradient_matching(clean: CleanData, budget: float = 0.01, epsilon: int = 8, steps: int = 240, restarts: int = 8,
                      step_size: float = 6.0, surrogate_epochs: int = 30, seed: int = 0, target_id: int | None = None,
                      intended_class: int | None = None, surrogate_arch: Literal["auto", "small_cnn", "resnet18", "resnet34", "mobilenet_v2", "densenet121"] = "auto",
                      surrogate_seed: int | None = None,
                      accelerator: str = "auto", hflip: bool = False, progress: bool = True) -> Poisoning:
    """Gradient Matching (Witches' Brew), clean-label targeted poisoning.

    The attack: surrogate trained on the clean training set (the attacker knows the data, not the victim's
    initialisation), target and intended class drawn from ``seed`` unless given, poisons ``budget`` x N
    random images of the intended class; the target leaves the test split for ``targets/``.

    Args:
        budget: share of the training set poisoned (paper: 0.01).
        epsilon: l_inf bound of the poisons, in 1/255 (paper: 8, also 16).
        steps: signed-Adam steps of each restart.
        restarts: random restarts (the best is kept).
        step_size: first signed-Adam step, in 1/255.
        target_id: test id of the target (default: drawn).
        intended_class: the class the target should take (default: drawn).
        surrogate_epochs: epochs of the attacker's surrogate classifier.
        surrogate_arch: the surrogate's network (auto: SmallCNN up to 16x16 images, ResNet-18 above).
        surrogate_seed: seed of the surrogate's training (default: ``seed``); scenarios that share it share one
            surrogate, trained once per process.
        hflip: augment with horizontal flips as the victim does (pass it for CIFAR; digits are not mirror-symmetric).
        seed: seed of every random choice.
        accelerator: device of the surrogate and the optimisation (cpu, gpu, auto).
        progress: show progress bars.
    """
    check_optimisation(epsilon, steps, surrogate_epochs)
    if restarts < 1:
        raise PoisonedDataError(f"--restarts must be at least 1, got {restarts}")
    generator = torch.Generator().manual_seed(seed)
    row, intended_class = pick_target(clean, generator, target_id, intended_class)
    train = clean.train
    rows = choose_rows(train.labels, poison_count(budget, len(train)), generator, of_class=intended_class)
    model = train_surrogate(train, len(clean.classes), surrogate_epochs, seed if surrogate_seed is None else surrogate_seed, surrogate_arch, accelerator, hflip, progress)
    objective = GradientMatching(model, to_signed_unit(clean.test.images[row]), intended_class)
    x, y = to_signed_unit(train.images[rows]), train.labels[rows]
    steps_255, histories, finals = craft(objective, x, y, epsilon, steps, restarts, step_size, hflip=hflip,
                                         seed=seed, progress=progress)
    start = objective(x.to(objective.params[0].device), y.to(objective.params[0].device), create_graph=False).item()
    images = train.images.clone()
    images[rows] = add_steps(images[rows], steps_255)
    keep = torch.arange(len(clean.test)) != row
    target = Target(clean.test.images[row], int(clean.test.ids[row]), int(clean.test.labels[row]), intended_class)
    best = min(range(len(finals)), key=finals.__getitem__)
    record = {"budget": budget, "epsilon_255": epsilon, "steps": steps, "restarts": restarts, "step_size_255": step_size,
              "surrogate_epochs": surrogate_epochs,
              "objective": {"name": "1 - cosine(target gradient, poison gradient), surrogate",
                            "no_perturbation": start, "restarts_final": finals, "best_restart": best,
                            "best_final": finals[best], "best_first_step": histories[best][0],
                            "best_last_step": histories[best][-1]}}
    return Poisoning(
        attack="gradient_matching", kind="targeted", train=Split(images, train.labels.clone(), train.ids),
        test=clean.test.subset(keep), poison_ids=train.ids[rows].tolist(), clean_label=True, targets=[target],
        record=record,
    )
