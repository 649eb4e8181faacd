"""The options of ``pureebm poison`` (parsed without importing torch, so that ``--help`` answers at once)."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

ATTACKS = ("none", "badnets", "blended", "narcissus", "gradient_matching")
IMPORTS = ("witches_brew", "backdoorbench", "narcissus_trigger", "just_how_toxic")
#: the published budgets (share of the training set) and optimisation steps each attack starts from
DEFAULT_BUDGET = {"none": 0.0, "badnets": 0.1, "blended": 0.1, "narcissus": 0.01, "gradient_matching": 0.01, "narcissus_trigger": 0.01}
DEFAULT_STEPS = {"narcissus": 500, "gradient_matching": 240}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pureebm poison",
        description="Make a poisoned training set with --attack, or import one made by another tool with --import. "
        "Writes train/<class>/<index>.png, test/<class>/<index>.png, targets/ (targeted attacks), the trigger "
        "(triggered attacks) and poison.json (the attack's manifest: parameters, target, budget, poison indices, "
        "measured l_inf), the folder `pureebm purify` and PoisonedSetDataModule read.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--attack", type=Literal[ATTACKS] | None, default=None, help="the attack to run ('none' writes the same split unpoisoned)")
    parser.add_argument("--import", type=Literal[IMPORTS] | None, default=None, help="the format of --source to import")
    parser.add_argument("--source", type=str | None, default=None, help="what to import: an export folder, or a trigger .npy")
    parser.add_argument("--data", type=str | None, default=None,
                        help="clean data: 'digits' (bundled; the default for --attack), a CIFAR-10 root (cifar-10-batches-py "
                        "inside) or a folder with train/<class>/<image> and test/<class>/<image>; for --import, the clean set "
                        "the export's indices refer to")
    parser.add_argument("--out", type=str, required=True, help="the poisoned folder to write (refused if it exists, unless --overwrite)")
    parser.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an existing poisoned folder in --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (poisons, target, initialisations)")
    group = parser.add_argument_group("Split of the clean data")
    group.add_argument("--holdout", type=float | None, default=None,
                       help="share of the training split held out of the victim's set as the attacker's (and the defender's) "
                       "own data; default 0.2 for --attack, 0 for --import")
    group.add_argument("--attacker_data", type=str | None, default=None,
                       help="a <class>/<image> folder to use as the attacker's data instead of a holdout")
    group.add_argument("--split_seed", type=int, default=0, help="seed of the holdout draw")
    group.add_argument("--image_size", type=int, default=16, help="digits only: side of the resized images")
    group = parser.add_argument_group("Attack")
    group.add_argument("--target_class", type=int | None, default=None,
                       help="triggered attacks: the class the trigger leads to (default 0; BackdoorBench: read from info.pickle's attack_target)")
    group.add_argument("--budget", type=float | None, default=None,
                       help="share of the training set poisoned (default: BadNets/Blended 0.1, Narcissus/Gradient Matching 0.01)")
    group.add_argument("--epsilon", type=int, default=8, help="Narcissus, Gradient Matching: l_inf bound in 1/255 (paper: 8, also 16)")
    group.add_argument("--magnification", type=float, default=1.0,
                       help="additive triggers: test-time multiplier recorded in poison.json (PureGen: 1, Narcissus' paper: 3)")
    group.add_argument("--patch_size", type=int, default=3, help="BadNets: side of the checkerboard patch")
    group.add_argument("--alpha", type=float, default=0.2, help="Blended: blend ratio of the pattern")
    group.add_argument("--steps", type=int | None, default=None, help="optimisation steps (default: Narcissus 500, Gradient Matching 240)")
    group.add_argument("--lr", type=float, default=0.01, help="Narcissus: RAdam learning rate of the trigger")
    group.add_argument("--warmup_epochs", type=int, default=0,
                       help="Narcissus: epochs of surrogate warm-up on the target class alone (published code: 5; on digits it "
                       "saturates the surrogate so the trigger's gradient is exactly 0, hence off by default)")
    group.add_argument("--warmup_lr", type=float, default=0.1, help="Narcissus: RAdam learning rate of the warm-up")
    group.add_argument("--restarts", type=int, default=8, help="Gradient Matching: random restarts (the best is kept)")
    group.add_argument("--step_size", type=float, default=6.0, help="Gradient Matching: first signed-Adam step, in 1/255")
    group.add_argument("--target_id", type=int | None, default=None, help="Gradient Matching: test id of the target (default: drawn)")
    group.add_argument("--intended_class", type=int | None, default=None, help="Gradient Matching: the class the target should take (default: drawn)")
    group.add_argument("--surrogate_epochs", type=int, default=30, help="epochs of the attacker's surrogate classifier")
    group.add_argument("--surrogate_arch", type=Literal["auto", "small_cnn", "resnet18", "resnet34", "mobilenet_v2", "densenet121"],
                       default="auto", help="auto: SmallCNN up to 16x16 images, ResNet-18 above")
    group.add_argument("--hflip", action=ActionYesNo, default=False, help="augment with horizontal flips as the victim does (pass it for CIFAR; digits are not mirror-symmetric)")
    group.add_argument("--accelerator", type=str, default="auto", help="device of the surrogate and the optimisation (cpu, gpu, auto)")
    group.add_argument("--progress", type=bool, default=True, help="progress bars (--progress false for logs)")
    group.add_argument("--threads", type=int | None, default=None,
                       help="CPU threads of the computation (default: chosen from the cores free when the run starts)")
    group = parser.add_argument_group("Import")
    group.add_argument("--targets", type=str | None, default=None, help="Witches' Brew NumPy pair: the targets/ folder of its export")
    group.add_argument("--poison_indicator", type=str | None, default=None,
                       help="BackdoorBench: a 0/1 indicator (.npy or torch file) to use instead of attack_result.pt's bd_train.poison_indicator")
    group.add_argument("--trust_pickle", action=ActionYesNo, default=False,
                       help="allow reading Python pickles (they can run code): only for files you trust")
    return parser
