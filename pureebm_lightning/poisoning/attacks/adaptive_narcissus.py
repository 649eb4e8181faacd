"""Defense-aware Narcissus: the Narcissus trigger optimised knowing that the training set will be purified by an EBM
(PureGen appendix E.2.1 reports such an EBM-aware Narcissus).

The attacker holds an EBM (``ebm_path``: the defender's for a white-box attack, another for a grey-box one) and
assumes the defender's T (``chain_steps``). ``gradient`` says how the defense enters the optimisation:

- ``bpda``: the surrogate sees Psi_T(x + delta), the chain's value, with the identity as its gradient (BPDA);
- ``exact``: the same, backpropagated through every Langevin step (second derivatives; checkpointed per step);
- ``energy``: no chain; the loss adds ``energy_weight`` x the EBM's energy of x + delta above that of x, in standard
  deviations of clean energies (a low-energy trigger, which the chain has less reason to remove).

``eot`` averages the loss over that many draws of the chain's noise (EOT). Everything else (surrogate, budget, l_inf ball, clean labels,
the trigger added at test time) is Narcissus'.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import dequantise, quantise, to_signed_unit
from pureebm_lightning.poisoning.attacker_ebm import load_attacker_ebm
from pureebm_lightning.poisoning.attacks import register_attack
from pureebm_lightning.poisoning.attacks.narcissus import add_trigger, optimise_trigger, target_loss
from pureebm_lightning.poisoning.budget import check_optimisation, choose_rows, poison_count
from pureebm_lightning.poisoning.clean_data import CleanData
from pureebm_lightning.poisoning.poisoned_folder import Poisoning
from pureebm_lightning.splits import Split
from pureebm_lightning.surrogate import train_surrogate


@torch.no_grad()
def purified_target_loss(model, attacker, images, target_class: int, trigger, batch_size: int = 128) -> float:
    """Mean cross-entropy towards ``target_class`` of Psi_T(``images`` + ``trigger``) under the attacker's EBM (its
    value: the T and sampler the attacker assumes)."""
    total = 0.0
    device = next(model.parameters()).device
    for chunk in images.split(batch_size):
        x = (chunk.to(device) + trigger.to(device)).clamp(-1, 1)
        x = attacker.purified(x)
        total += F.cross_entropy(model(x), torch.full((len(chunk),), target_class, device=device), reduction="sum").item()
    return total / len(images)


@register_attack()
def adaptive_narcissus(clean: CleanData, ebm_path: str | None = None, target_class: int = 0, budget: float = 0.01,
                       epsilon: int = 8, steps: int = 500, lr: float = 0.01, batch_size: int = 64,
                       gradient: Literal["bpda", "exact", "energy"] = "bpda", chain_steps: int = 150, eot: int = 1,
                       energy_weight: float = 1.0, surrogate_epochs: int = 30,
                       surrogate_arch: Literal["auto", "small_cnn", "resnet18", "resnet34", "mobilenet_v2", "densenet121"] = "auto",
                       surrogate_seed: int | None = None, magnification: float = 1.0, seed: int = 0,
                       accelerator: str = "auto", hflip: bool = False, progress: bool = True) -> Poisoning:
    """Narcissus optimised through (or towards low energy under) the defender's EBM: a defense-aware clean-label backdoor.

    Args:
        ebm_path: the EBM the attacker holds: a checkpoint, a pretrained folder or hf://owner/name (required).
        target_class: the class the trigger leads to (its training images carry the trigger; labels unchanged).
        budget: share of the training set poisoned.
        epsilon: l_inf bound of the trigger, in 1/255.
        steps: optimisation steps (batches of ``batch_size``).
        lr: RAdam learning rate of the trigger.
        batch_size: images per optimisation step (each goes through the chain: the cost is steps x batch x chain_steps).
        gradient: bpda (the chain's value, the identity's gradient), exact (backpropagation through the chain) or
            energy (no chain: a low-energy trigger).
        chain_steps: the T the attacker assumes the defender uses.
        eot: draws of the chain's noise the loss is averaged over, per step (EOT).
        energy_weight: weight of the energy term (gradient energy), in standard deviations of clean energies.
        surrogate_epochs: epochs of the attacker's surrogate classifier.
        surrogate_arch: the surrogate's network (auto: SmallCNN up to 16x16 images, ResNet-18 above).
        surrogate_seed: seed of the surrogate's training (default: ``seed``).
        magnification: test-time multiplier of the trigger recorded in poison.json.
        seed: seed of every random choice.
        accelerator: device of the surrogate, the EBM and the optimisation (cpu, gpu, auto).
        hflip: augment with horizontal flips as the victim does.
        progress: show progress bars.
    """
    train = clean.train
    if len(clean.pool) == 0:
        raise PoisonedDataError("Narcissus trains its surrogate on the attacker's own data: set --holdout > 0 or pass --attacker_data")
    choose_rows(train.labels, poison_count(budget, len(train)), torch.Generator(), of_class=target_class)
    check_optimisation(epsilon, steps, surrogate_epochs)
    if batch_size < 1:
        raise PoisonedDataError(f"--batch_size must be at least 1, got {batch_size}")
    mine = [split.subset(split.labels == target_class) for split in (clean.pool, train)]
    known = Split(*(torch.cat(parts) for parts in zip(*((s.images, s.labels, s.ids) for s in mine))))
    x = to_signed_unit(known.images)
    model = train_surrogate(clean.pool, len(clean.classes), surrogate_epochs, seed if surrogate_seed is None else surrogate_seed,
                            surrogate_arch, accelerator, hflip, progress)
    device = next(model.parameters()).device
    attacker = load_attacker_ebm(ebm_path, gradient, chain_steps, eot, x, device, seed)
    reference = x.to(device)  # the clean target-class images the energy term is measured against

    def penalty(triggered: torch.Tensor) -> torch.Tensor:
        return energy_weight * attacker.energy_penalty(triggered, reference[: len(triggered)])

    purify = attacker.expected if gradient != "energy" else None
    trigger, history = optimise_trigger(model, x, target_class, epsilon, steps, lr, batch_size=batch_size, hflip=hflip,
                                        seed=seed, progress=progress, purify=purify,
                                        penalty=penalty if gradient == "energy" else None)
    trigger_steps = quantise(trigger, epsilon)
    stored = dequantise(trigger_steps)
    zero = torch.zeros_like(stored)
    poisoned, poison_ids = add_trigger(clean, target_class, budget, trigger_steps, seed)
    window = max(1, len(history) // 10)
    objective = {"name": "cross-entropy towards the target class, surrogate, target-class images",
                 "no_trigger": target_loss(model, x, target_class, zero), "trigger": target_loss(model, x, target_class, stored),
                 "first_steps_mean": sum(history[:window]) / window, "last_steps_mean": sum(history[-window:]) / window}
    objective.update({"purified_no_trigger": purified_target_loss(model, attacker, x, target_class, zero),
                      "purified_trigger": purified_target_loss(model, attacker, x, target_class, stored)})
    with torch.no_grad():
        objective["energy_above_clean_std"] = float(attacker.energy_penalty((reference + stored.to(device)).clamp(-1, 1), reference))
    record = {"budget": budget, "epsilon_255": epsilon, "steps": steps, "lr": lr, "batch_size": batch_size,
              "surrogate_epochs": surrogate_epochs, "surrogate_trained_on": f"the attacker's pool of {len(clean.pool)} images",
              "trigger_optimised_on": f"{len(known)} target-class images (pool and training)",
              "defense_awareness": {**attacker.record, "energy_weight": energy_weight if gradient == "energy" else None},
              "objective": objective}
    return Poisoning(
        attack="adaptive_narcissus", kind="triggered", train=poisoned, test=clean.test, poison_ids=poison_ids, clean_label=True,
        target_class=target_class, trigger=stored, trigger_spec={"mode": "additive", "magnification": magnification},
        record=record,
    )
