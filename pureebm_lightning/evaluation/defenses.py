"""The defenses an evaluation applies to a training set, as objects with their settings.

Each has a ``label``: the key of its rows in victims.jsonl, results.json and the report (``none``, ``jpeg``,
``T<steps>`` for PureEBM with the clean EBM, ``pureebm_poisoned`` / ``pureebm_poisoned_T<steps>`` with the EBM
trained on the poisoned split), and ``steps``: the T its rows carry (0 when it does not run the EBM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class NoDefense:
    """The training set as the attacker left it."""

    label = "none"
    steps = 0


@dataclass(frozen=True)
class JPEGDefense:
    """JPEG compression of every training image at ``quality``."""

    quality: int
    label = "jpeg"
    steps = 0


@dataclass(frozen=True)
class PureEBMDefense:
    """PureEBM: ``steps`` Langevin steps of the EBM trained on the held-out split (``ebm="clean"``) or on the
    poisoned split itself (``ebm="poisoned"``; ``main``: the main table's T, labelled without it)."""

    steps: int
    ebm: Literal["clean", "poisoned"] = "clean"
    main: bool = False

    @property
    def label(self) -> str:
        if self.ebm == "clean":
            return f"T{self.steps}"
        return "pureebm_poisoned" if self.main else f"pureebm_poisoned_T{self.steps}"


Defense = NoDefense | JPEGDefense | PureEBMDefense
