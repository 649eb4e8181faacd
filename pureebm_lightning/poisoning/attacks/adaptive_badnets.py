"""Defense-aware BadNets: the patch keeps BadNets' place, size, budget and relabelling, but its pixel values are
optimised, with the defender's EBM (``ebm_path``), so that as much of it as possible comes through purification.

What a victim trained on the purified set can learn from is the trigger's *surviving signal*: the difference, in the
patch region, between Psi_T(x with the patch) and Psi_T(x), both chains with the same noise. ``gradient`` ``exact``
maximises its mean square, backpropagated through every one of the ``chain_steps`` Langevin steps. (Minimising the
change Psi_T makes to the patch instead is degenerate: a patch equal to the background it replaces is unchanged,
and carries no trigger.) ``energy`` instead minimises the EBM's energy of images carrying the patch (no chain:
cheap). A straight-through (BPDA) gradient is not offered: with the identity as the chain's Jacobian the surviving
signal's gradient would not see the chain at all.
"""

from __future__ import annotations

from typing import Literal

import torch
from tqdm.auto import tqdm

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_signed_unit, to_uint8
from pureebm_lightning.poisoning.attacker_ebm import load_attacker_ebm
from pureebm_lightning.poisoning.attacks import register_attack
from pureebm_lightning.poisoning.attacks.badnets import checkerboard
from pureebm_lightning.poisoning.budget import choose_rows, poison_count
from pureebm_lightning.poisoning.clean_data import CleanData
from pureebm_lightning.poisoning.poisoned_folder import Poisoning
from pureebm_lightning.splits import Split


def paste(images: torch.Tensor, patch: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """``images`` ([-1, 1]) with ``patch`` (C, s, s) pasted at (``row``, ``col``): differentiable in ``patch``."""
    size = patch.shape[-1]
    canvas = torch.zeros_like(images[:1])
    mask = torch.zeros_like(images[:1])
    canvas[..., row:row + size, col:col + size] = patch
    mask[..., row:row + size, col:col + size] = 1
    return images * (1 - mask) + canvas * mask


@torch.enable_grad()
def optimise_patch(attacker, images: torch.Tensor, start: torch.Tensor, row: int, col: int, steps: int, lr: float,
                   batch_size: int, seed: int, progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """The patch ((C, s, s), [-1, 1]) whose surviving signal through Psi_T is largest on ``images`` (or of lowest
    energy), from ``start``; the loss of every step (the negative mean square signal, or the energy)."""
    device = next(attacker.energy_net.parameters()).device
    images, generator = images.to(device), torch.Generator().manual_seed(seed)
    weights = torch.atanh(start.to(device).clamp(-0.99, 0.99)).requires_grad_(True)  # patch = tanh(weights): Adam steps are scale-free
    optimizer = torch.optim.Adam([weights], lr=lr)
    history = []
    for step in tqdm(range(steps), desc="Defense-aware patch", disable=not progress, leave=False):
        batch = images[torch.randperm(len(images), generator=generator)[:batch_size].to(device)]
        pasted = paste(batch, torch.tanh(weights), row, col)
        if attacker.purification is None:
            loss = attacker.energy_penalty(pasted, batch)
        else:
            draws = [surviving_signal(attacker, batch, pasted, row, col, start.shape[-1], seed * 100_003 + step + d * 1_000_003)
                     for d in range(attacker.eot)]  # EOT: each draw's two chains share their noise
            loss = -sum(signal.pow(2).mean() for signal in draws) / len(draws)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return torch.tanh(weights).detach().cpu(), history


def surviving_signal(attacker, clean: torch.Tensor, pasted: torch.Tensor, row: int, col: int, size: int, seed: int,
                     differentiable: bool = True) -> torch.Tensor:
    """Psi_T(pasted) - Psi_T(clean) in the patch region, the two chains with the same noise."""
    first, second = attacker.twin_generators(seed)
    with torch.no_grad():
        reference = attacker.purified(clean, second)
    purified = attacker.chain(pasted, first) if differentiable else attacker.purified(pasted, first)
    return (purified - reference)[..., row:row + size, col:col + size]


@torch.no_grad()
def signal_rms(attacker, images: torch.Tensor, patch: torch.Tensor, row: int, col: int, seed: int, batch_size: int = 128) -> float:
    """Root-mean-square surviving signal of ``patch`` in 1/255: how much of the trigger the attacker's Psi_T leaves."""
    total, count, device = 0.0, 0, next(attacker.energy_net.parameters()).device
    for i, chunk in enumerate(images.split(batch_size)):
        chunk = chunk.to(device)
        signal = surviving_signal(attacker, chunk, paste(chunk, patch.to(device), row, col), row, col, patch.shape[-1],
                                  seed + i, differentiable=False)
        total, count = total + signal.pow(2).sum().item(), count + signal.numel()
    return (total / max(count, 1)) ** 0.5 * 127.5


@register_attack()
def adaptive_badnets(clean: CleanData, ebm_path: str | None = None, target_class: int = 0, budget: float = 0.1,
                     patch_size: int = 3, steps: int = 200, lr: float = 0.05, batch_size: int = 32,
                     gradient: Literal["exact", "energy"] = "exact", chain_steps: int = 150, eot: int = 1,
                     start: Literal["checkerboard", "grey"] = "checkerboard", seed: int = 0, accelerator: str = "auto", progress: bool = True) -> Poisoning:
    """BadNets with a patch optimised to survive the defender's EBM purification (dirty label, defense-aware).

    Args:
        ebm_path: the EBM the attacker holds: a checkpoint, a pretrained folder or hf://owner/name (required).
        target_class: the class the trigger leads to.
        budget: share of the training set poisoned.
        patch_size: side of the patch, in pixels (BadNets' place: one pixel in from the bottom-right corner).
        steps: optimisation steps of the patch (Adam), from ``start``.
        lr: Adam learning rate.
        batch_size: images per step (each goes through the chain with exact: the cost is steps x batch x chain_steps).
        gradient: exact (backpropagation through the chain) or energy (the patch of lowest energy, no chain).
        chain_steps: the T the attacker assumes the defender uses.
        eot: draws of the chain's noise the objective is averaged over, per step (EOT).
        start: the patch the optimisation starts from: BadNets' checkerboard (its pixels at 0 and 255, where tanh
            saturates, so a pixel rarely flips), or mid-grey (every pixel free to go either way).
        seed: seed of every random choice.
        accelerator: device of the optimisation (cpu, gpu, auto).
        progress: show progress bars.
    """
    train, (channels, height, width) = clean.train, clean.shape
    if not 1 <= patch_size < min(height, width) - 1:
        raise PoisonedDataError(f"--patch_size must be between 1 and {min(height, width) - 2} for {height}x{width} images")
    if gradient not in ("exact", "energy"):
        raise PoisonedDataError(f"--gradient must be exact or energy for adaptive_badnets, got {gradient!r} (BPDA's identity "
                                "has no change to minimise)")
    if start not in ("checkerboard", "grey"):
        raise PoisonedDataError(f"--start must be checkerboard or grey, got {start!r}")
    if steps < 1 or batch_size < 1:
        raise PoisonedDataError(f"--steps and --batch_size must be at least 1, got {steps} and {batch_size}")
    rows = choose_rows(train.labels, poison_count(budget, len(train)), torch.Generator().manual_seed(seed),
                       not_class=target_class)
    row, col = height - patch_size - 1, width - patch_size - 1
    device = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    others = to_signed_unit(train.images[train.labels != target_class])
    attacker = load_attacker_ebm(ebm_path, gradient, chain_steps, eot, others, device, seed)
    board = to_signed_unit(checkerboard(channels, patch_size)).float()  # BadNets' patch: the objective's reference
    first = board if start == "checkerboard" else torch.zeros_like(board)
    patch, history = optimise_patch(attacker, others, first, row, col, steps, lr, batch_size, seed, progress)
    stored = to_uint8(patch)  # 8-bit, as written
    as_written = to_signed_unit(stored)
    images, labels = train.images.clone(), train.labels.clone()
    images[rows, :, row:row + patch_size, col:col + patch_size] = stored
    labels[rows] = target_class
    window = max(1, len(history) // 10)
    measure = others[: 256]
    objective = {"name": "RMS surviving signal (1/255) of the patch through the attacker's Psi_T, BadNets' checkerboard -> this patch",
                 "no_trigger": signal_rms(attacker, measure, board, row, col, seed),
                 "trigger": signal_rms(attacker, measure, as_written, row, col, seed),
                 "optimised": ("mean square surviving signal (maximised)" if gradient == "exact"
                               else "energy above the images without the patch, in clean standard deviations"),
                 "first_steps_mean": sum(history[:window]) / window, "last_steps_mean": sum(history[-window:]) / window}
    return Poisoning(
        attack="adaptive_badnets", kind="triggered", train=Split(images, labels, train.ids), test=clean.test,
        poison_ids=train.ids[rows].tolist(), clean_label=False, target_class=target_class,
        trigger=as_written[None], trigger_spec={"mode": "patch", "position": [row, col], "magnification": 1.0},
        record={"budget": budget, "patch_size": patch_size, "steps": steps, "lr": lr, "batch_size": batch_size, "start": start,
                "defense_awareness": attacker.record, "objective": objective},
    )
