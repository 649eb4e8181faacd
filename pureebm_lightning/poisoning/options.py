"""The options of ``pureebm poison`` (parsed without importing torch, so that ``--help`` answers at once)."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from pureebm_lightning.option_value import option_value

IMPORTS = ("witches_brew", "backdoorbench", "narcissus_trigger", "just_how_toxic")
ATTACKS_PACKAGE = "pureebm_lightning.poisoning.attacks"


def attack_named(argv: list[str]) -> str | None:
    """The attack ``argv`` asks for (``ATTACK ...`` first, ``--attack ATTACK``, or ``attack:`` in a ``--config`` YAML)."""
    if argv and not argv[0].startswith("-"):
        return argv[0]
    return option_value(argv, "attack")


def normalise(argv: list[str]) -> list[str]:
    """``ATTACK ...`` as ``--attack ATTACK ...``."""
    return ["--attack", argv[0], *argv[1:]] if argv and not argv[0].startswith("-") else list(argv)


def build_parser(attack: str | None = None) -> ArgumentParser:
    """The options of ``pureebm poison``; with ``attack``, that attack's own options (from its signature) instead of
    the import options. Without, nothing is imported beyond jsonargparse."""
    from pureebm_lightning.registry import Registry

    attacks = Registry("attack", (ATTACKS_PACKAGE,), by_module=True).names()  # listed without importing them
    parser = ArgumentParser(
        prog="pureebm poison",
        description="Make a poisoned training set (`pureebm poison ATTACK --out DIR`, attacks: " + ", ".join(attacks) +
        "; `pureebm poison ATTACK --help` for its options), or import one made by another tool with --import. "
        "Writes train/<class>/<index>.png, test/<class>/<index>.png, targets/ (targeted attacks), the trigger "
        "(triggered attacks) and poison.json (the attack's manifest: parameters, target, budget, poison indices, "
        "measured l_inf), the folder `pureebm purify` and PoisonedSetDataModule read.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--attack", type=Literal[tuple(attacks)] | None, default=None,
                        help="the attack to run (also the first argument: `pureebm poison badnets ...`; 'none' writes the same split unpoisoned)")
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
    group = parser.add_argument_group("Run")
    group.add_argument("--accelerator", type=str, default="auto", help="device of a surrogate and of the optimisation (cpu, gpu, auto)")
    group.add_argument("--progress", type=bool, default=True, help="progress bars (--progress false for logs)")
    group.add_argument("--threads", type=int | None, default=None,
                       help="CPU threads of the computation (default: chosen from the cores free when the run starts)")
    if attack is not None:
        import inspect

        import docstring_parser

        from pureebm_lightning.poisoning.attacks import ATTACKS, RUN_PARAMETERS

        if attack not in attacks:
            return parser  # jsonargparse refuses the --attack value with the list of attacks
        function = ATTACKS[attack]
        switches = {n: q for n, q in inspect.signature(function).parameters.items()
                    if q.annotation in (bool, "bool") and n not in RUN_PARAMETERS}
        parser.add_function_arguments(function, skip={*RUN_PARAMETERS, *switches}, as_group=True)
        helps = {q.arg_name: q.description for q in docstring_parser.parse(function.__doc__ or "").params}
        for name, parameter in switches.items():  # --hflip / --no_hflip, as a flag without a value
            parser.add_argument(f"--{name}", action=ActionYesNo, default=parameter.default, help=helps.get(name))
        return parser
    group = parser.add_argument_group("Import")
    group.add_argument("--target_class", type=int | None, default=None,
                       help="narcissus_trigger: the class the trigger leads to (default 0); backdoorbench: read from info.pickle's "
                       "attack_target (this may only repeat it)")
    group.add_argument("--budget", type=float | None, default=None, help="narcissus_trigger: share of the training set poisoned (default 0.01)")
    group.add_argument("--magnification", type=float, default=1.0,
                       help="narcissus_trigger: test-time multiplier recorded in poison.json (PureGen: 1, Narcissus' paper: 3)")
    group.add_argument("--targets", type=str | None, default=None, help="Witches' Brew NumPy pair: the targets/ folder of its export")
    group.add_argument("--poison_indicator", type=str | None, default=None,
                       help="BackdoorBench: a 0/1 indicator (.npy or torch file) to use instead of attack_result.pt's bd_train.poison_indicator")
    group.add_argument("--trust_pickle", action=ActionYesNo, default=False,
                       help="allow reading Python pickles (they can run code): only for files you trust")
    return parser
