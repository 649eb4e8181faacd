"""``pureebm poison``: make a poisoned training set (``--attack``) or read one another tool made (``--import``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser
from lightning.pytorch.utilities import rank_zero_info

from pureebm_lightning.poisoning.badnets import badnets
from pureebm_lightning.poisoning.blended import blended
from pureebm_lightning.poisoning.clean_data import CleanData, load_clean_data
from pureebm_lightning.poisoning.gradient_matching import gradient_matching
from pureebm_lightning.poisoning.importers import import_backdoorbench, import_just_how_toxic, import_witches_brew
from pureebm_lightning.poisoning.narcissus import apply_narcissus_trigger, narcissus
from pureebm_lightning.poisoning.poisoned_folder import Poisoning, check_out, write_poisoned_folder
from pureebm_lightning.purification.sources import PoisonedDataError

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
                       help="triggered attacks: the class the trigger leads to (default 0; BackdoorBench: read from its triggered test images)")
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
    group = parser.add_argument_group("Import")
    group.add_argument("--targets", type=str | None, default=None, help="Witches' Brew NumPy pair: the targets/ folder of its export")
    group.add_argument("--poison_indicator", type=str | None, default=None,
                       help="BackdoorBench: the 0/1 indicator (.npy or torch file; default: poison_indicator.npy or attack_result.pt in --source)")
    group.add_argument("--trust_pickle", action=ActionYesNo, default=False,
                       help="allow reading Python pickles (they can run code): only for files you trust")
    return parser


def _attack(cfg: Any, clean: CleanData) -> Poisoning:
    target_class = 0 if cfg.target_class is None else cfg.target_class
    budget = cfg.budget if cfg.budget is not None else DEFAULT_BUDGET[cfg.attack]
    steps = cfg.steps if cfg.steps is not None else DEFAULT_STEPS.get(cfg.attack)
    common = {"seed": cfg.seed}
    optimised = {"surrogate_epochs": cfg.surrogate_epochs, "arch": cfg.surrogate_arch, "accelerator": cfg.accelerator,
                 "hflip": cfg.hflip, "progress": cfg.progress, "epsilon": cfg.epsilon, "steps": steps, **common}
    if cfg.attack == "none":  # the same split, unpoisoned: the clean reference and the floor's training set
        return Poisoning("none", "clean", clean.train, clean.test, poison_ids=[], clean_label=True)
    if cfg.attack == "badnets":
        return badnets(clean, target_class, budget, cfg.patch_size, **common)
    if cfg.attack == "blended":
        return blended(clean, target_class, budget, cfg.alpha, **common)
    if cfg.attack == "narcissus":
        return narcissus(clean, target_class, budget, lr=cfg.lr, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
                         magnification=cfg.magnification, **optimised)
    return gradient_matching(clean, budget, restarts=cfg.restarts, step_size=cfg.step_size, target_id=cfg.target_id,
                             intended_class=cfg.intended_class, **optimised)


def _import(cfg: Any, fmt: str, clean: CleanData | None) -> tuple[Poisoning, list[str], Any]:
    source = Path(cfg.source).expanduser()
    if not source.exists():
        raise PoisonedDataError(f"--source {source}: no such file or folder")
    mode = "RGB" if clean is None or clean.shape[0] == 3 else "L"
    if fmt == "witches_brew":
        return import_witches_brew(source, clean and clean.train, clean and clean.test, clean and clean.classes, mode,
                                   Path(cfg.targets) if cfg.targets else None)
    if clean is None:
        raise PoisonedDataError(f"--import {fmt} needs the clean data in --data")
    if fmt == "narcissus_trigger":
        try:
            trigger = torch.as_tensor(np.load(source, allow_pickle=False)).float()
        except (OSError, ValueError, TypeError) as err:
            raise PoisonedDataError(f"--source {source}: not a NumPy .npy trigger array ({err})") from err
        budget = cfg.budget if cfg.budget is not None else DEFAULT_BUDGET[fmt]
        target_class = 0 if cfg.target_class is None else cfg.target_class
        return apply_narcissus_trigger(clean, trigger, target_class, budget, cfg.magnification, cfg.seed), clean.classes, clean.train
    if fmt == "backdoorbench":
        indicator = Path(cfg.poison_indicator) if cfg.poison_indicator else None
        return (import_backdoorbench(source, clean.train, clean.test, clean.classes, mode, indicator, cfg.trust_pickle,
                                     cfg.target_class), clean.classes, clean.train)
    return import_just_how_toxic(source, clean.train, clean.test, mode, cfg.trust_pickle), clean.classes, clean.train


def poison(argv: list[str]) -> dict[str, Any]:
    """Run ``pureebm poison`` with ``argv`` (the arguments after ``poison``); returns the ``poison.json`` written."""
    cfg = build_parser().parse_args(argv)
    fmt = getattr(cfg, "import")
    if (cfg.attack is None) == (fmt is None):
        raise PoisonedDataError("give either --attack NAME (make a poisoned set) or --import FORMAT --source PATH (read one)")
    if fmt is not None and cfg.source is None:
        raise PoisonedDataError(f"--import {fmt} needs --source (the export to read)")
    holdout = cfg.holdout if cfg.holdout is not None else (0.2 if cfg.attack and not cfg.attacker_data else 0.0)
    if cfg.attacker_data and holdout:
        raise PoisonedDataError("give --attacker_data or --holdout, not both")
    if fmt is not None and (holdout or cfg.attacker_data):
        raise PoisonedDataError("--import takes the clean set as the export indexes it: no --holdout or --attacker_data")
    if not 1 <= cfg.epsilon <= 255:
        raise PoisonedDataError(f"--epsilon is an l_inf bound in 1/255 steps, 1..255; got {cfg.epsilon}")
    if (cfg.steps is not None and cfg.steps < 1) or cfg.restarts < 1 or cfg.surrogate_epochs < 1:
        raise PoisonedDataError("--steps, --restarts and --surrogate_epochs must be at least 1")
    check_out(cfg.out, cfg.overwrite)  # before any work
    data = cfg.data or ("digits" if cfg.attack else None)
    clean = None
    if data is not None:
        clean = load_clean_data(data, holdout, cfg.split_seed, cfg.image_size, cfg.attacker_data)
        if cfg.target_class is not None and cfg.target_class not in range(len(clean.classes)):
            raise PoisonedDataError(f"--target_class {cfg.target_class} is not one of the {len(clean.classes)} classes")
    if cfg.attack:
        result, classes, clean_train = _attack(cfg, clean), clean.classes, clean.train
    else:
        result, classes, clean_train = _import(cfg, fmt, clean)
    facts = {"data": clean.source if clean else None, "holdout": holdout, "split_seed": cfg.split_seed, "seed": cfg.seed,
             "holdout_ids": clean.pool.ids.tolist() if clean and not cfg.attacker_data else [],
             "attacker_data": cfg.attacker_data,
             "command": {k: v for k, v in cfg.as_dict().items() if k != "config"}}
    spec = write_poisoned_folder(cfg.out, result, classes, clean_train, facts, cfg.overwrite)
    rank_zero_info(summary(spec, cfg.out))
    return spec


def summary(spec: dict[str, Any], out: str) -> str:
    """One paragraph on what was written."""
    label = {True: "clean label", False: "dirty label", None: "labels not compared"}[spec["clean_label"]]
    lines = [f"Wrote {out}: {spec['attack']} ({spec['kind']}, {label})"]
    if spec.get("poison_count") is not None:
        lines.append(f"{spec['poison_count']} of {spec['train_count']} training images poisoned ({100 * spec['poison_share']:.2f} %)")
    if "linf_255" in spec:
        lines.append(f"largest pixel change {spec['linf_255']}/255, {len(spec['relabelled_ids'])} relabelled")
    if spec["kind"] == "triggered":
        lines.append(f"target class {spec['target_class']} ({spec['target_class_name']})")
    elif spec["kind"] == "targeted":
        lines.append("targets: " + ", ".join(f"test id {t['id']} -> class {t['intended_class']}" for t in spec["targets"]))
    objective = spec.get("objective")
    if objective:
        before = objective.get("no_trigger", objective.get("no_perturbation"))
        after = objective.get("trigger", objective.get("best_final"))
        lines.append(f"objective ({objective['name']}) {before:.4f} -> {after:.4f}")
    return "; ".join(lines)
