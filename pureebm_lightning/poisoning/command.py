"""``pureebm poison``: make a poisoned training set (``--attack``) or read one another tool made (``--import``)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.poisoning.attacks import ATTACKS, RUN_PARAMETERS
from pureebm_lightning.poisoning.attacks.narcissus import apply_narcissus_trigger
from pureebm_lightning.poisoning.clean_data import CleanData, load_clean_data
from pureebm_lightning.poisoning.importers import (
    import_backdoorbench,
    import_just_how_toxic,
    import_witches_brew,
)
from pureebm_lightning.poisoning.options import attack_named, build_parser, normalise
from pureebm_lightning.poisoning.poisoned_folder import (
    Poisoning,
    check_out,
    write_poisoned_folder,
)
from pureebm_lightning.runtime import configure_threads


def _attack(cfg: Any, clean: CleanData) -> Poisoning:
    """Run the registered attack ``cfg.attack`` with its options from ``cfg`` and the run-wide ones."""
    attack = ATTACKS[cfg.attack]
    parameters = inspect.signature(attack).parameters
    given = {name: cfg[name] for name in parameters if name not in RUN_PARAMETERS}
    run_wide = {"clean": clean, "seed": cfg.seed, "accelerator": cfg.accelerator, "progress": cfg.progress}
    return attack(**given, **{k: v for k, v in run_wide.items() if k in parameters})


def default_of(attack: str, parameter: str) -> Any:
    """The default of an attack's parameter (its signature is the one place it is stated)."""
    return inspect.signature(ATTACKS[attack]).parameters[parameter].default


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
        budget = cfg.budget if cfg.budget is not None else default_of("narcissus", "budget")
        target_class = 0 if cfg.target_class is None else cfg.target_class
        return apply_narcissus_trigger(clean, trigger, target_class, budget, cfg.magnification, cfg.seed), clean.classes, clean.train
    if fmt == "backdoorbench":
        indicator = Path(cfg.poison_indicator) if cfg.poison_indicator else None
        return (import_backdoorbench(source, clean.train, clean.test, clean.classes, mode, indicator, cfg.trust_pickle,
                                     cfg.target_class), clean.classes, clean.train)
    return import_just_how_toxic(source, clean.train, clean.test, mode, cfg.trust_pickle), clean.classes, clean.train


def poison(argv: list[str]) -> dict[str, Any]:
    """Run ``pureebm poison`` with ``argv`` (the arguments after ``poison``); returns the ``poison.json`` written."""
    attack = attack_named(argv)
    if attack is not None and attack not in ATTACKS.names():
        raise PoisonedDataError(f"unknown attack {attack!r}: the attacks are {', '.join(ATTACKS.names())}")
    cfg = build_parser(attack).parse_args(normalise(argv))
    configure_threads(cfg.threads)
    fmt = getattr(cfg, "import")
    if (cfg.attack is None) == (fmt is None):
        raise PoisonedDataError("give either --attack NAME (`pureebm poison NAME --out DIR`: make a poisoned set) or --import FORMAT --source PATH (read one)")
    if fmt is not None and cfg.source is None:
        raise PoisonedDataError(f"--import {fmt} needs --source (the export to read)")
    holdout = cfg.holdout if cfg.holdout is not None else (0.2 if cfg.attack and not cfg.attacker_data else 0.0)
    if cfg.attacker_data and holdout:
        raise PoisonedDataError("give --attacker_data or --holdout, not both")
    if fmt is not None and (holdout or cfg.attacker_data):
        raise PoisonedDataError("--import takes the clean set as the export indexes it: no --holdout or --attacker_data")
    check_out(cfg.out, cfg.overwrite)  # before any work
    data = cfg.data or ("digits" if cfg.attack else None)
    clean = None
    if data is not None:
        clean = load_clean_data(data, holdout, cfg.split_seed, cfg.image_size, cfg.attacker_data)
        if cfg.get("target_class") is not None and cfg.target_class not in range(len(clean.classes)):
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
        lines.append(f"target class {spec['target_class']} ({spec['target_class_name']})" if spec["target_class"] is not None
                     else "a target label per image (all2all)")
    elif spec["kind"] == "targeted":
        lines.append("targets: " + ", ".join(f"test id {t['id']} -> class {t['intended_class']}" for t in spec["targets"]))
    objective = spec.get("objective")
    if objective:
        before = objective.get("no_trigger", objective.get("no_perturbation"))
        after = objective.get("trigger", objective.get("best_final"))
        lines.append(f"objective ({objective['name']}) {before:.4f} -> {after:.4f}")
    return "; ".join(lines)
