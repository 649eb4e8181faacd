"""Narcissus (Zeng et al. 2023): a clean-label backdoor whose trigger is optimised on the attacker's surrogate.

The trigger delta (one image, ``|delta| <= epsilon``) minimises a surrogate's cross-entropy towards the
target class over augmented target-class images: ``min_delta sum_x CE(f(clamp(aug(x) + delta)), target)``,
optimised with RAdam (lr 0.01 as published) and kept in the l_inf ball (projected after every step; the
published code clamps a copy in the forward pass and at the end). It is then added to a few training
images *of the target class* (labels unchanged); at test time it is added (times a magnification) to
images of other classes. The published loop runs 1,000 passes over all target-class images; here
``steps`` counts batches of 64 (500 by default; the digits measurements use 2,000).
"""

from __future__ import annotations

from typing import Callable, Literal

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
from pureebm_lightning.poisoning.poisoned_folder import Poisoning
from pureebm_lightning.splits import Split
from pureebm_lightning.surrogate import crop_padding, fit, random_shift, train_surrogate


@torch.enable_grad()
def optimise_trigger(model: torch.nn.Module, images: Tensor, target_class: int, epsilon: int, steps: int = 500,
                     lr: float = 0.01, batch_size: int = 64, max_shift: int | None = None, hflip: bool = False,
                     seed: int = 0, progress: bool = True,
                     purify: Callable[[Callable[[Tensor], Tensor], Tensor], Tensor] | None = None,
                     penalty: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, list[float]]:
    """The Narcissus trigger (float, (1, C, H, W), [-1, 1] space) for ``model`` from target-class ``images``
    ([-1, 1]), and the loss of every step. Each step takes a random batch, shifted like the victim's crops
    (``max_shift``, default the recipe's crop padding). A defense-aware attacker passes ``purify`` (``purify(loss,
    triggered)``: the loss of the triggered batch after the defense's Psi_T, e.g. averaged over its noise, as
    :meth:`AttackerEBM.expected`) and/or ``penalty`` (added to the loss, e.g. the EBM's energy of the triggered batch)."""
    if steps < 1:
        raise PoisonedDataError(f"--steps must be at least 1, got {steps}")
    max_shift = crop_padding(images.shape) if max_shift is None else max_shift
    device = next(model.parameters()).device
    images, bound = images.to(device), 2 * epsilon / 255
    generator = torch.Generator().manual_seed(seed)
    delta = torch.zeros(1, *images.shape[1:], device=device, requires_grad=True)
    optimizer = torch.optim.RAdam([delta], lr=lr)
    labels = torch.full((min(batch_size, len(images)),), target_class, device=device)
    model.requires_grad_(False)

    def target(triggered: Tensor) -> Tensor:  # the loss towards the target class (of a purified batch, with purify)
        return F.cross_entropy(model(triggered), labels)

    history = []
    for _ in tqdm(range(steps), desc="Narcissus trigger", disable=not progress, leave=False):
        batch = images[torch.randperm(len(images), generator=generator)[: len(labels)].to(device)]
        triggered = (random_shift(batch, max_shift, generator, hflip) + delta).clamp(-1, 1)
        loss = purify(target, triggered) if purify is not None else target(triggered)
        if penalty is not None:
            loss = loss + penalty(triggered)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            delta.clamp_(-bound, bound)
        history.append(loss.item())
    model.requires_grad_(True)
    return delta.detach().cpu(), history


@torch.no_grad()
def target_loss(model: torch.nn.Module, images: Tensor, target_class: int, trigger: Tensor, batch_size: int = 256) -> float:
    """Mean cross-entropy towards ``target_class`` of ``images`` + ``trigger`` (no augmentation): the objective."""
    device, total = next(model.parameters()).device, 0.0
    for chunk in images.split(batch_size):
        logits = model((chunk.to(device) + trigger.to(device)).clamp(-1, 1))
        total += F.cross_entropy(logits, torch.full((len(chunk),), target_class, device=device), reduction="sum").item()
    return total / len(images)


def add_trigger(clean: CleanData, target_class: int, budget: float, trigger_steps: Tensor, seed: int) -> tuple[Split, list[int]]:
    """The training set with ``trigger_steps`` (int, 1/255 steps) added to ``budget`` x N target-class images."""
    train = clean.train
    rows = choose_rows(train.labels, poison_count(budget, len(train)), torch.Generator().manual_seed(seed),
                       of_class=target_class)
    images = train.images.clone()
    images[rows] = add_steps(images[rows], trigger_steps.reshape(clean.shape))
    return Split(images, train.labels.clone(), train.ids), train.ids[rows].tolist()


@register_attack()
def narcissus(clean: CleanData, target_class: int = 0, budget: float = 0.01, epsilon: int = 8, steps: int = 500,
              lr: float = 0.01, surrogate_epochs: int = 30, warmup_epochs: int = 0, warmup_lr: float = 0.1,
              magnification: float = 1.0, seed: int = 0, surrogate_arch: Literal["auto", "small_cnn", "resnet18", "resnet34", "mobilenet_v2", "densenet121"] = "auto",
              surrogate_seed: int | None = None,
              accelerator: str = "auto", hflip: bool = False, progress: bool = True) -> Poisoning:
    """Narcissus, a clean-label backdoor with a trigger optimised on a surrogate.

    The attack: a surrogate trained on the attacker's pool (disjoint from the victim's training set), then
    optionally warmed up for ``warmup_epochs`` on target-class images alone (RAdam, ``warmup_lr``; the
    published code: 5 epochs at 0.1), the trigger optimised on the pool's target-class images and all the
    target-class training images (Narcissus assumes the attacker knows the target class's training
    examples, as the published code does), and added to ``budget`` x N of them. The test-time
    ``magnification`` is recorded in ``poison.json``.

    Args:
        target_class: the class the trigger leads to (its training images carry the trigger; labels unchanged).
        budget: share of the training set poisoned (paper: 0.01).
        epsilon: l_inf bound of the trigger, in 1/255 (paper: 8, also 16).
        steps: optimisation steps, batches of 64 (the digits measurements use 2,000).
        lr: RAdam learning rate of the trigger.
        warmup_epochs: epochs of surrogate warm-up on the target class alone (published code: 5; on digits it
            saturates the surrogate so that the trigger's gradient is exactly 0, hence off by default).
        warmup_lr: RAdam learning rate of the warm-up.
        magnification: test-time multiplier of the trigger recorded in poison.json (PureGen: 1, Narcissus' paper: 3).
        surrogate_epochs: epochs of the attacker's surrogate classifier.
        surrogate_arch: the surrogate's network (auto: SmallCNN up to 16x16 images, ResNet-18 above).
        surrogate_seed: seed of the surrogate's training (default: ``seed``); scenarios that share it share one
            surrogate, trained once per process.
        hflip: augment with horizontal flips as the victim does (pass it for CIFAR; digits are not mirror-symmetric).
        seed: seed of every random choice.
        accelerator: device of the surrogate and the optimisation (cpu, gpu, auto).
        progress: show progress bars.
    """
    train = clean.train
    if len(clean.pool) == 0:
        raise PoisonedDataError("Narcissus trains its surrogate on the attacker's own data: set --holdout > 0 or pass --attacker_data")
    choose_rows(train.labels, poison_count(budget, len(train)), torch.Generator(), of_class=target_class)  # the budget fits: fail now, not after training
    mine = [split.subset(split.labels == target_class) for split in (clean.pool, train)]
    known = Split(*(torch.cat(parts) for parts in zip(*((s.images, s.labels, s.ids) for s in mine))))
    check_optimisation(epsilon, steps, surrogate_epochs)
    model = train_surrogate(clean.pool, len(clean.classes), surrogate_epochs, seed if surrogate_seed is None else surrogate_seed, surrogate_arch, accelerator, hflip, progress)
    if warmup_epochs > 0:
        model.optimizer_factory, model.scheduler_factory = (lambda p: torch.optim.RAdam(p, lr=warmup_lr)), None
        fit(model, known, warmup_epochs, accelerator, hflip, progress)
    x = to_signed_unit(known.images)
    trigger, history = optimise_trigger(model, x, target_class, epsilon, steps, lr, hflip=hflip, seed=seed, progress=progress)
    trigger_steps = quantise(trigger, epsilon)
    stored = dequantise(trigger_steps)
    start, end = target_loss(model, x, target_class, torch.zeros_like(stored)), target_loss(model, x, target_class, stored)
    poisoned, poison_ids = add_trigger(clean, target_class, budget, trigger_steps, seed)
    window = max(1, len(history) // 10)
    record = {"budget": budget, "epsilon_255": epsilon, "steps": steps, "lr": lr, "surrogate_epochs": surrogate_epochs,
              "warmup_epochs": warmup_epochs, "warmup_lr": warmup_lr,
              "surrogate_trained_on": f"the attacker's pool of {len(clean.pool)} images",
              "trigger_optimised_on": f"{len(known)} target-class images (pool and training)",
              "objective": {"name": "cross-entropy towards the target class, surrogate, target-class images",
                            "no_trigger": start, "trigger": end,
                            "first_steps_mean": sum(history[:window]) / window,
                            "last_steps_mean": sum(history[-window:]) / window}}
    return Poisoning(
        attack="narcissus", kind="triggered", train=poisoned, test=clean.test, poison_ids=poison_ids, clean_label=True,
        target_class=target_class, trigger=stored, trigger_spec={"mode": "additive", "magnification": magnification},
        record=record,
    )


def apply_narcissus_trigger(clean: CleanData, trigger: Tensor, target_class: int, budget: float = 0.01,
                            magnification: float = 1.0, seed: int = 0) -> Poisoning:
    """Import: a published Narcissus trigger array ((1, C, H, W) or (C, H, W), [-1, 1] space) added to
    ``budget`` x N target-class images of a local dataset, rounded to whole 1/255 steps."""
    if tuple(trigger.shape[-3:]) != clean.shape:
        raise PoisonedDataError(f"the trigger has shape {tuple(trigger.shape[-3:])}, the images are {clean.shape}")
    if not torch.isfinite(trigger).all() or trigger.abs().max() > 1:
        raise PoisonedDataError("the trigger must be finite and in [-1, 1] (the image space of Narcissus' arrays)")
    if trigger.numel() != torch.Size(clean.shape).numel():
        raise PoisonedDataError(f"the trigger has {trigger.numel()} values, one image of shape {clean.shape} has "
                                f"{torch.Size(clean.shape).numel()}: expected (1, C, H, W) or (C, H, W)")
    trigger_steps = quantise(trigger)
    train, poison_ids = add_trigger(clean, target_class, budget, trigger_steps, seed)
    epsilon = int(trigger_steps.abs().max())
    return Poisoning(
        attack="narcissus", kind="triggered", train=train, test=clean.test, poison_ids=poison_ids, clean_label=True,
        target_class=target_class, trigger=dequantise(trigger_steps).reshape(1, *clean.shape),
        trigger_spec={"mode": "additive", "magnification": magnification},
        record={"budget": budget, "epsilon_255": epsilon, "imported": True,
                "rounding_255": float((trigger.float() * 127.5 - trigger_steps.float()).abs().max())},
    )
