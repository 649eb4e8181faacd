"""The settings of `pureebm evaluate`, one dataclass per part of the protocol (the YAML's top-level keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pureebm_lightning.errors import UsageError
from pureebm_lightning.evaluation.dataset import EvaluationData

REPOSITORY = Path(__file__).resolve().parents[2]


def config_path(path: str) -> Path:
    """``path`` as given when it exists (relative to the working directory), else relative to the project's root."""
    given = Path(path).expanduser()
    if given.is_file() or given.is_absolute():
        return given.resolve()
    return REPOSITORY / given


@dataclass
class EBMRecipe:
    """How the two EBMs are trained (`pureebm fit` on an ImageFolder of their images).

    Args:
        config: the EBM config (model, sampler, optimiser, trainer).
        args: more `pureebm fit` options (``--name=value``) on top of ``config``.
        steps: training iterations of each EBM.
        batch_size: images per iteration.
        poisoned_attack: the attack whose poisoned split (first target class) the second EBM trains on.
        data: a ``<class>/<image>`` folder the clean EBM trains on instead of the held-out images (the paper: the
            ImageNet part of CINIC-10), or null.
    """

    config: str = "configs/ebm_digits.yaml"
    args: list[str] = field(default_factory=list)
    steps: int = 1000
    batch_size: int = 64
    poisoned_attack: Literal["badnets", "blended", "narcissus"] = "blended"
    data: str | None = None


@dataclass
class VictimRecipe:
    """The victim classifier trained on every defended set (`pureebm fit` with these configs).

    Args:
        configs: the classifier config and its data config (a PoisonedSetDataModule; its ``data`` is replaced).
        args: more `pureebm fit` options (``--name=value``) on top of ``configs``.
        epochs: training epochs; the learning rate drops x0.1 at ``milestones`` (shares of ``epochs``).
        milestones: shares of the epochs at which the learning rate drops.
        description: how the report names the recipe.
    """

    configs: list[str] = field(default_factory=lambda: ["configs/classifier_digits.yaml", "configs/data/digits_poisoned.yaml"])
    args: list[str] = field(default_factory=list)
    epochs: int = 30
    milestones: list[float] = field(default_factory=lambda: [20 / 30, 26 / 30])
    description: str = "the digits classifier recipe (SmallCNN, SGD, crop padding 2)"


@dataclass
class AttackSettings:
    """The attacks of the main table (`pureebm poison`) and their budgets.

    Args:
        target_classes: one scenario per class for each triggered attack (poison seed = its position in this list,
            victim seed 100 + position: seed and class vary together).
        badnets_budget: share of the training set poisoned by BadNets.
        blended_budget: share poisoned by Blended.
        narcissus_budget: share poisoned by Narcissus (target-class images only).
        narcissus_epsilon: l_inf bound of the Narcissus trigger, in 1/255.
        narcissus_steps: optimisation steps of the Narcissus trigger.
        narcissus_lr: learning rate of the Narcissus trigger.
        gm_targets: Gradient Matching scenarios (one distinct target test image each).
        gm_budget: share poisoned by Gradient Matching.
        gm_epsilon: l_inf bound of the Gradient Matching poisons, in 1/255.
        gm_steps: signed-Adam steps of each restart.
        gm_restarts: random restarts of Gradient Matching.
        surrogate_epochs: epochs of each attacker's surrogate (Narcissus, Gradient Matching).
        gm_defenses: ``auto``: defended Gradient Matching victims only when it succeeds on some target undefended
            (more than its floor); ``always``; ``never`` (undefended only).
        hflip: the attackers augment with horizontal flips as the victim does (natural images; not digits).
        shared_surrogate: every Narcissus scenario shares one surrogate, and every Gradient Matching scenario
            another (the attacker's one clean model; trained once instead of once per scenario).
    """

    target_classes: list[int] = field(default_factory=lambda: [0, 3, 7])
    badnets_budget: float = 0.01
    blended_budget: float = 0.01
    narcissus_budget: float = 0.1
    narcissus_epsilon: int = 16
    narcissus_steps: int = 2000
    narcissus_lr: float = 0.05
    gm_targets: int = 30
    gm_budget: float = 0.01
    gm_epsilon: int = 16
    gm_steps: int = 240
    gm_restarts: int = 1
    surrogate_epochs: int = 30
    gm_defenses: Literal["auto", "always", "never"] = "auto"
    hflip: bool = False
    shared_surrogate: bool = False


@dataclass
class DefenseSettings:
    """The defenses of the training set: none, JPEG, and PureEBM over a sweep of T.

    Args:
        jpeg_quality: quality of the JPEG baseline.
        sweep: PureEBM steps T (0 = no defense).
        T: the T of the main table (one of ``sweep``).
        sweep_scenarios: victims for T off the main table on this many target classes only (null: all).
        curve_every: energy and L2 along the chain recorded every this many steps.
        batch_size: images per purification batch.
        accuracy_points: the natural accuracy a defense may cost (points) in the report's checks and the sweep's pick.
        poisoned_ebm_sweep: the EBM trained on the poisoned split purifies at every T of the sweep (false: at ``T`` only).
        channels_last: purify with the energy net and chains in channels-last layout (faster on some CPUs and GPUs).
    """

    jpeg_quality: int = 75
    sweep: list[int] = field(default_factory=lambda: [0, 25, 50, 100, 150, 300, 1000])
    T: int = 150
    sweep_scenarios: int | None = None
    curve_every: int = 25
    batch_size: int = 256
    accuracy_points: float = 2.0
    poisoned_ebm_sweep: bool = True
    channels_last: bool = False


@dataclass
class PluginSettings:
    """Registered attacks and defenses measured beside the main table (its own section of results.md).

    Args:
        attacks: registered attacks (one scenario per target class; their signature's defaults).
        attack_args: ``NAME:--option=value``: an option of a plug-in attack; ``{clean_ebm}`` and ``{poisoned_ebm}``
            stand for the evaluation's EBM checkpoints (``adaptive_badnets:--ebm_path={clean_ebm}``: white-box).
        sweep: the T the plug-in attacks are purified at (null: the defenses' sweep).
        defenses: registered defenses (their defaults) measured against every triggered attack that works undefended.
    """

    attacks: list[str] = field(default_factory=lambda: ["wanet"])
    attack_args: list[str] = field(default_factory=lambda: ["wanet:--strength=1.0"])
    sweep: list[int] | None = None
    defenses: list[str] = field(default_factory=lambda: ["friendly_noise"])


#: what ``--quick`` sets (before the options that follow the configs), with the first target class only
QUICK = ["--attacks.badnets_budget=0.1", "--attacks.blended_budget=0.1", "--attacks.narcissus_steps=100",
         "--attacks.gm_targets=2", "--attacks.gm_steps=20", "--attacks.gm_defenses=always", "--attacks.surrogate_epochs=5",
         "--defenses.sweep=[0, 10, 20]", "--defenses.T=10", "--defenses.curve_every=5", "--ebm.steps=12", "--victim.epochs=5"]


@dataclass
class Evaluation:
    """The paper's evaluation protocol: split, poisons, EBMs, defenses, victims, report.

    Args:
        out: the folder everything goes to (resumed when it holds an earlier run).
        data: the clean images.
        ebm: the EBMs.
        victim: the victims.
        attacks: the attacks.
        defenses: the defenses.
        plugins: the plug-in attacks and defenses.
        quick: one target class, tiny EBMs, T in {0, 10, 20}, 2 GM targets, 5-epoch victims: the pipeline, not the science.
        fresh: delete ``out`` (a folder this command wrote) first instead of resuming.
        title: the report's title.
    """

    out: str = "runs/evaluate"
    data: EvaluationData = field(default_factory=EvaluationData)
    ebm: EBMRecipe = field(default_factory=EBMRecipe)
    victim: VictimRecipe = field(default_factory=VictimRecipe)
    attacks: AttackSettings = field(default_factory=AttackSettings)
    defenses: DefenseSettings = field(default_factory=DefenseSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    quick: bool = False
    fresh: bool = False
    title: str = "PureEBM on digits: poisons, defenses, victims"

    def resolved(self) -> "Evaluation":
        """These settings with ``quick`` applied and the sweeps sorted; refuses a main T outside the sweep."""
        a, d, p = self.attacks, self.defenses, self.plugins
        if self.quick:  # the other quick settings are options (QUICK), so that later options override them
            a.target_classes = a.target_classes[:1]
        if d.T not in d.sweep:
            raise UsageError(f"defenses.T {d.T} must be one of defenses.sweep {d.sweep}")
        d.sweep = sorted(set(d.sweep))
        p.sweep = sorted(set(d.sweep if p.sweep is None else p.sweep) | {0})
        return self
