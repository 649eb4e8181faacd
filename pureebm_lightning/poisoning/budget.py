"""How many training images an attack may change, and which."""

from __future__ import annotations

import torch
from torch import Tensor

from pureebm_lightning.errors import PoisonedDataError


def poison_count(budget: float, n_train: int) -> int:
    """``budget`` (a share of the whole training set, e.g. 0.01 = 1 %) as a number of images, at least 1."""
    if not 0 < budget <= 1:
        raise PoisonedDataError(f"--budget is a share of the training set in (0, 1], got {budget}")
    return max(1, round(budget * n_train))


def check_optimisation(epsilon: int, steps: int, surrogate_epochs: int) -> None:
    """The bounds every optimised attack shares: an l_inf ``epsilon`` in 1/255 steps, and at least one step and epoch."""
    if not 1 <= epsilon <= 255:
        raise PoisonedDataError(f"--epsilon is an l_inf bound in 1/255 steps, 1..255; got {epsilon}")
    if steps < 1 or surrogate_epochs < 1:
        raise PoisonedDataError(f"--steps and --surrogate_epochs must be at least 1, got {steps} and {surrogate_epochs}")


def choose_rows(labels: Tensor, count: int, generator: torch.Generator, of_class: int | None = None,
                not_class: int | None = None) -> Tensor:
    """``count`` random rows (sorted) among those of class ``of_class`` or not of class ``not_class``."""
    mask = torch.ones_like(labels, dtype=torch.bool)
    if of_class is not None:
        mask &= labels == of_class
    if not_class is not None:
        mask &= labels != not_class
    rows = mask.nonzero().flatten()
    if count > len(rows):
        which = f"of class {of_class}" if of_class is not None else f"outside class {not_class}"
        raise PoisonedDataError(f"the budget asks for {count} poisoned images but the training set has only {len(rows)} {which}")
    return rows[torch.randperm(len(rows), generator=generator)[:count]].sort().values
