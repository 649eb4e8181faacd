"""The security table: each defense-aware attack of an evaluation folder next to its non-adaptive version, with no
defense, JPEG and PureEBM at T = 150 (means ± standard deviation over target classes).

Reads what `pureebm evaluate` wrote (victims.jsonl, one row per set, defense and victim seed, and each poisoned
folder's poison.json for what the attacker knew); trains nothing. Run it after the evaluation with the defense-aware overlay:

    pureebm evaluate --config configs/evaluate/digits.yaml --config configs/evaluate/digits_defense_aware.yaml --out runs/evaluate/digits
    python studies/security_table.py --out runs/evaluate/digits

Prints markdown; --csv also writes <out>/security_table.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

#: the non-adaptive attack each defense-aware one is measured against
BASELINE = {"adaptive_badnets": "badnets", "adaptive_narcissus": "narcissus"}
DEFENSES = [("none", "none"), ("jpeg", "JPEG"), ("T150", "PureEBM T=150")]
DIGITS_CONFIG = str(Path(__file__).resolve().parents[1] / "configs/evaluate/digits.yaml")


def white_box(aware: dict) -> bool:
    """Whether the attacker's EBM (poison.json's ``defense_awareness``) was the evaluation's own clean one, told by its
    path (``<out>/ebm/clean_*``); any other EBM, pretrained or hf:// included, is grey-box."""
    return "/ebm/clean_" in Path(aware.get("ebm") or "").as_posix()


def eot_draws(aware: dict) -> int:
    """How many draws of the chain's noise the attacker averaged over (poison.json's ``defense_awareness``; 1 if none)."""
    return aware.get("eot") or 1


def variant(out: Path, folder: str) -> str:
    """What the attacker of ``folder`` knew, in words (from its poison.json)."""
    spec = json.loads((out / "data" / folder / "poison.json").read_text())
    aware = spec.get("defense_awareness")
    if not aware:
        return "not defense-aware"
    ebm = Path(aware["ebm"]).as_posix()
    box = "white-box (the defender's clean EBM)" if white_box(aware) else f"grey-box (EBM {Path(ebm).parents[3].name})"
    how = {"bpda": "BPDA through", "exact": "exact gradient through", "energy": "low energy under"}[aware["awareness"]]
    chain = f"{how} T = {aware['chain_steps']}" if aware["awareness"] != "energy" else how + " the EBM"
    eot = f", EOT over {eot_draws(aware)} draws" if eot_draws(aware) > 1 else ""
    return f"{chain}{eot}, {box}"


def evaluated_rows(out: Path) -> list[dict]:
    """victims.jsonl's rows, one per poisoned set, defense and victim seed. The file keeps every victim the folder ever
    trained, so a set purified again (a rerun with more target classes re-purifies the main table's sets with other
    chain noise) has several; the one the latest evaluation reported (results.csv, plugins.json) is kept, else the
    last one written."""
    rows = [json.loads(line) for line in (out / "victims.jsonl").read_text().splitlines() if line.strip()]
    latest = set()
    if (out / "results.csv").is_file():
        with open(out / "results.csv", newline="") as f:
            latest |= {r["key"] for r in csv.DictReader(f)}
    if (out / "plugins.json").is_file():
        latest |= {r["key"] for r in json.loads((out / "plugins.json").read_text())}
    chosen: dict[tuple, dict] = {}
    for r in rows:
        cell = (*r["key"].split("|")[:2], r["victim_seed"])
        if cell not in chosen or chosen[cell]["key"] not in latest:
            chosen[cell] = r
    kept = {id(r) for r in chosen.values()}
    return [r for r in rows if id(r) in kept]


def add_x3(out: Path, rows: list[dict], configs: list[str]) -> None:
    """Narcissus-style plug-in rows carry x1 only: measure x3 too, with the victims the evaluation kept (nothing trains)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pureebm_lightning.evaluation.command import settings
    from pureebm_lightning.evaluation.purified_sets import digest
    from pureebm_lightning.evaluation.victims import Victims, measure

    victims = Victims(out, settings(config_flags(configs)).resolved().victim)
    for r in rows:
        if r["attack"] == "adaptive_narcissus" and "success_x3" not in r:
            folder, label, defended = r["key"].split("|")[:3]
            key = "|".join([folder, label, defended])
            workdir = out / "victims" / digest(key, r["victim_seed"], victims.recipe.epochs, *victims.recipe_identity())
            if not (workdir / "done").is_file():
                continue  # not kept: x1 only
            poisoned = out / "data" / folder
            trained_on = poisoned if label == "none" else out / "defended" / folder / defended
            model = victims.model(key, trained_on, r["victim_seed"])
            r.update(measure(model, poisoned, poisoned, magnifications=(1.0, 3.0)))


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config``, repeated or with several files (the evaluation's config and its overlays); see `evaluation_configs`."""
    parser.add_argument("--config", action="extend", nargs="+", default=None,
                        help="the evaluation's config(s), as given to `pureebm evaluate` (default: the digits one)")


def evaluation_configs(args: argparse.Namespace) -> list[str]:
    """The configs ``--config`` named, in order, or the digits evaluation's."""
    return args.config or [DIGITS_CONFIG]


def config_flags(configs: list[str]) -> list[str]:
    """``--config`` options for the evaluation's configs (several: later ones override, as in `pureebm evaluate`)."""
    return [flag for config in configs for flag in ("--config", str(config))]


def stat(values: list[float], scale: float = 100) -> str:
    """Mean ± sample standard deviation of ``values`` x ``scale`` (one value alone: itself; none: n/a)."""
    values = [scale * v for v in values]
    if not values:
        return "n/a"
    return f"{mean(values):.2f} ± {stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the evaluation folder")
    parser.add_argument("--csv", action="store_true", help="also write <out>/security_table.csv")
    add_config_argument(parser)  # their victim recipe names the kept victims
    args = parser.parse_args()
    args.config = evaluation_configs(args)
    out = Path(args.out)
    rows = evaluated_rows(out)
    add_x3(out, rows, args.config)
    cells: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    adaptive = sorted({(r["attack"], r["key"].split("|")[0]) for r in rows if r["attack"] in BASELINE})
    labels = {folder: variant(out, folder) for _, folder in adaptive}
    for r in rows:
        folder = r["key"].split("|")[0]
        if r["attack"] in BASELINE:
            cells[(r["attack"], labels[folder], r["defense"])].append(r)
        elif r["attack"] in BASELINE.values() and "_c" in folder:
            cells[(r["attack"], "not defense-aware (the main table)", r["defense"])].append(r)
    lines = ["| attack | what the attacker knew | " + " | ".join(f"{name} success % | {name} nat. %" for _, name in DEFENSES) + " |",
             "|---|---|" + "---|---|" * len(DEFENSES)]
    table = []
    for attack in sorted(BASELINE):
        variants = ["not defense-aware (the main table)", *sorted({labels[f] for a, f in adaptive if a == attack})]
        for name, label in ((BASELINE[attack], variants[0]), *((attack, v) for v in variants[1:])):
            cols = []
            for key, _ in DEFENSES:
                found = cells.get((name, label, key), [])
                score = "success_x3" if name.endswith("narcissus") else "success_x1"
                cols += [stat([r[score] for r in found if score in r]), stat([r["natural"] for r in found])]
                table.append({"attack": name, "variant": label, "defense": key, "n": len(found),
                              "success": [r.get(score) for r in found], "natural": [r["natural"] for r in found]})
            lines.append(f"| {name}{' (x3)' if name.endswith('narcissus') else ''} | {label} | " + " | ".join(cols) + " |")
    print("\n".join(lines))
    if args.csv:
        with open(out / "security_table.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["attack", "variant", "defense", "n", "success", "natural"])
            writer.writeheader()
            writer.writerows(table)


if __name__ == "__main__":
    main()
