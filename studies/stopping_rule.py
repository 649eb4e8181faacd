"""The stopping rule against fixed T on an evaluation folder: each triggered attack's poisoned sets purified by the
clean EBM with `pureebm purify --stop energy`, a victim trained on each with the evaluation's recipe and seed, and
poison success, natural accuracy and mean steps per image (and per poison) next to the fixed-T victims.

    pureebm evaluate --config configs/evaluate/digits.yaml --out runs/evaluate/digits      # first (or resume)
    python studies/stopping_rule.py --out runs/evaluate/digits                        # calibrated on the EBM's own images
    python studies/stopping_rule.py --out runs/evaluate/digits --calibration self     # on the set being purified

`--calibration holdout` calibrates on the clean EBM's own training images; `self` on each poisoned training set
itself (poisons included: the defender has nothing else unseen by the EBM). The fixed T the evaluation did not run
for an attack (e.g. T = 300 and 1000 for the defense-aware ones) are purified and trained on here too
(`--fixed_attacks`). Purified sets and victims go to <out>/studies/stopping_rule/ (resumed on rerun); prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pureebm_lightning.cli import main as pureebm  # noqa: E402
from pureebm_lightning.evaluation.command import settings  # noqa: E402
from pureebm_lightning.evaluation.victims import Victims, measure  # noqa: E402
from studies.security_table import (  # noqa: E402
    add_config_argument,
    add_x3,
    config_flags,
    eot_draws,
    evaluated_rows,
    evaluation_configs,
    stat,
    white_box,
)

ATTACKS = ("badnets", "blended", "narcissus", "wanet", "adaptive_badnets", "adaptive_narcissus")


def label(spec: dict) -> str:
    """The attack, with what the attacker optimised when it knew the defense (exact, bpda or energy), the T it
    assumed when not 150, its EOT draws when more than one, and "grey-box" when its EBM was not the evaluation's clean
    one (`white_box`)."""
    aware = spec.get("defense_awareness") or {}
    if not aware:
        return spec["attack"]
    grey = "" if white_box(aware) else ", grey-box"
    chain = f", T = {aware['chain_steps']}" if aware["awareness"] != "energy" and aware.get("chain_steps") != 150 else ""
    eot = f", EOT {eot_draws(aware)}" if eot_draws(aware) > 1 else ""
    return f"{spec['attack']} ({aware['awareness']}{chain}{eot}{grey})"


def purify(folder: Path, out: Path, ckpt: Path, batch_size: int, *flags: str) -> dict:
    """`pureebm purify` of ``folder`` into ``out`` (kept when complete); its manifest."""
    manifest = out / "manifest.json"
    if not manifest.is_file() or not json.loads(manifest.read_text()).get("complete"):
        pureebm(["purify", "--data", str(folder), "--ckpt_path", str(ckpt), "--out", str(out), "--batch_size", str(batch_size),
                 "--trainer.enable_progress_bar", "false", *flags])
    return json.loads(manifest.read_text())


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--config`` repeated or with several files: all of them, in order)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the evaluation folder")
    add_config_argument(parser)
    parser.add_argument("--quantile", type=float, default=0.5)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--calibration_steps", type=int, default=150)
    parser.add_argument("--fixed", type=int, nargs="+", default=[150, 300, 1000],
                        help="the fixed T to compare with (purified and trained on here where the evaluation has none)")
    parser.add_argument("--fixed_attacks", nargs="+", default=list(ATTACKS),
                        help="the attacks (names or labels) to purify at the fixed T the evaluation lacks")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS),
                        help="the attacks to study: names, or labels such as 'adaptive_badnets (exact)'")
    parser.add_argument("--calibration", choices=["holdout", "self"], default="holdout",
                        help="holdout: the clean EBM's own training images; self: the set being purified (poisons included)")
    args = parser.parse_args(argv)
    args.config = evaluation_configs(args)
    return args


def main() -> None:
    args = arguments()
    out = Path(args.out)
    cfg = settings(config_flags(args.config)).resolved()
    study = out / "studies" / "stopping_rule"
    (clean_ckpt,) = sorted((out / "ebm").glob("clean_*/**/checkpoints/last.ckpt"))
    victims = Victims(study, cfg.victim)
    rule = f"q{args.quantile:g}-p{args.patience}-max{args.max_steps}-cal{args.calibration_steps}"
    rule += "-self" if args.calibration == "self" else ""
    folders = sorted(p for p in (out / "data").iterdir() if p.name.split("_c")[0] in ATTACKS and (p / "poison.json").is_file())
    if not folders:
        raise SystemExit(f"{out / 'data'}: holds no poisoned set of {', '.join(ATTACKS)}: run `pureebm evaluate` first")
    specs = {f.name: json.loads((f / "poison.json").read_text()) for f in folders}
    folders = [f for f in folders if specs[f.name]["attack"] in args.attacks or label(specs[f.name]) in args.attacks]
    folders = [f for f in folders if specs[f.name]["target_class"] in cfg.attacks.target_classes]  # an overlay's classes only
    table: dict[tuple[str, str], list[dict]] = defaultdict(list)
    have = set()
    evaluated = evaluated_rows(out)  # one victim per set, defense and seed: the latest evaluation's
    add_x3(out, evaluated, args.config)  # the defense-aware Narcissus victims: x3 too (kept models, no training)
    for r in evaluated:
        name = r["key"].split("|")[0]
        if name in specs and r["defense"] in [f"T{t}" for t in args.fixed]:
            table[(label(specs[name]), f"fixed T = {r['T']}")].append(r)
            have.add((name, r["T"]))
    for folder in folders:  # the rule first, then the fixed T the evaluation lacks
        spec = specs[folder.name]
        k = cfg.attacks.target_classes.index(spec["target_class"])
        defended = study / "purified" / f"{folder.name}-{rule}"
        calibration = folder / "train" if args.calibration == "self" else out / "data" / "ebm_holdout" / "train"
        manifest = purify(folder, defended, clean_ckpt, cfg.defenses.batch_size, "--stop", "energy",
                          "--stop_calibration", str(calibration), "--stop_calibration_steps", str(args.calibration_steps),
                          "--stop_quantile", str(args.quantile), "--stop_patience", str(args.patience),
                          "--stop_max_steps", str(args.max_steps))
        row = victims.run(f"{folder.name}|stop-{rule}", defended, 100 + k, scores(victims, f"{folder.name}|stop-{rule}", defended, 100 + k, folder),
                          attack=spec["attack"], target=spec["target_class"], defense=f"stop-{rule}")
        table[(label(spec), f"energy stop ({rule})")].append(
            {**row, "mean_steps": manifest["stop_steps"]["mean_steps"], **poison_steps(defended, spec)})
    threshold = manifest["stop"]["threshold"]
    for folder in folders:
        spec = specs[folder.name]
        k = cfg.attacks.target_classes.index(spec["target_class"])
        if spec["attack"] not in args.fixed_attacks and label(spec) not in args.fixed_attacks:
            continue
        for t in (t for t in args.fixed if (folder.name, t) not in have):
            defended = study / "purified" / f"{folder.name}-T{t}"
            purify(folder, defended, clean_ckpt, cfg.defenses.batch_size, "--steps", str(t))
            row = victims.run(f"{folder.name}|T{t}", defended, 100 + k, scores(victims, f"{folder.name}|T{t}", defended, 100 + k, folder),
                              attack=spec["attack"], target=spec["target_class"], defense=f"T{t}")
            table[(label(spec), f"fixed T = {t}")].append(row)
    print(f"Threshold: {threshold:.4f} (the last set's; calibrated on {args.calibration}, along {args.calibration_steps} steps)\n")
    print("| attack | defense | success % (x1) | success % (x3, Narcissus) | natural % | mean steps per image | mean steps per poison |")
    print("|---|---|---|---|---|---|---|")
    def order(item):  # per attack: fixed T by T, then the rule
        (attack, defense), _ = item
        return attack, int(defense.split()[-1]) if defense.startswith("fixed") else 10**9

    for (attack, defense), found in sorted(table.items(), key=order):
        x3 = stat([r["success_x3"] for r in found if "success_x3" in r]) if "narcissus" in attack else ""
        stopped = defense.startswith("energy")
        steps = stat([r["mean_steps"] for r in found], 1) if stopped else defense.split()[-1]
        poison = stat([r["poison_steps"] for r in found if "poison_steps" in r], 1) if stopped else defense.split()[-1]
        print(f"| {attack} | {defense} | {stat([r['success_x1'] for r in found])} | {x3} | {stat([r['natural'] for r in found])} "
              f"| {steps} | {poison} |")


def scores(victims: Victims, key: str, defended: Path, seed: int, folder: Path):
    """What to measure of a victim: success at x1, and at x3 for Narcissus-style triggers (which work on digits at x3
    only); also for a victim measured before without x3 (its kept model is loaded, nothing trains)."""
    narcissus = "narcissus" in folder.name
    evaluate = (lambda m: measure(m, folder, folder, magnifications=(1.0, 3.0))) if narcissus else (lambda m: measure(m, folder, folder))
    full = "|".join([key, f"seed{seed}", f"epochs{victims.recipe.epochs}", *victims.recipe_identity()])
    if narcissus and full in victims.done and "success_x3" not in victims.done[full]:
        victims.done[full].update(evaluate(victims.model(key, defended, seed)))
    return evaluate


def poison_steps(defended: Path, spec: dict) -> dict:
    """The mean steps the poisons' chains took (``stop_steps.json``: the steps of every image, by file)."""
    steps, ids = json.loads((defended / "stop_steps.json").read_text()), set(spec["poison_indices"])
    mine = [n for key, n in steps.items() if Path(key).stem.isdigit() and int(Path(key).stem) in ids]
    return {"poison_steps": sum(mine) / len(mine)} if mine else {}


if __name__ == "__main__":
    main()
