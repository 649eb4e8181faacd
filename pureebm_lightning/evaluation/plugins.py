"""The evaluation's plug-in stage: attacks and defenses taken from the registries by name, measured with the
same victims, floors and statistics as the main table, and reported in their own section of results.md (the
main table's sets, purifications and victims are untouched, so its numbers do not move).

- Each attack of ``plugins.attacks`` (default: WaNet) runs once per target class with its signature's
  defaults (``plugins.attack_args: [NAME:--option=value]`` overrides one), is purified by the clean EBM at every T
  of the sweep (its own cache; the same Psi_T) and JPEG, and gets victims for none, JPEG and every T.
- Each defense of ``plugins.defenses`` (default: Friendly Noise) runs against every triggered attack that works
  undefended (success at least 80 % on average), through the same loop as ``pureebm purify``.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, pstdev

import torch

from pureebm_lightning.defense import run_key
from pureebm_lightning.defenses import DEFENSES
from pureebm_lightning.purification.purified_store import PurifiedStore
from pureebm_lightning.purification.run import PurificationRun
from pureebm_lightning.sources import open_source


def attack_flags(cfg, attack: str, ebms: dict[str, Path] | None = None) -> list[str]:
    """``plugins.attack_args`` entries for ``attack`` (``NAME:--option=value``) as poison options; ``{clean_ebm}`` and
    ``{poisoned_ebm}`` in a value stand for the evaluation's EBM checkpoints (a defense-aware attack's ``--ebm_path``:
    the defender's own clean EBM is a white-box attack, the EBM trained on other data a grey-box one)."""
    flags = [entry.split(":", 1)[1] for entry in cfg.plugins.attack_args if entry.split(":", 1)[0] == attack]
    for name, path in (ebms or {}).items():
        flags = [flag.replace("{" + name + "}", str(path)) for flag in flags]
    return flags


def defended_by_plugin(name: str, folder: Path, out: Path, batch_size: int) -> tuple[Path, dict]:
    """``folder`` purified by the registered defense ``name`` (its defaults) into ``out/defended/<set>/<name>-<key>``,
    with the loop and store of ``pureebm purify`` (resumable; reused when complete)."""
    defense = DEFENSES[name]()
    source = open_source(folder)
    identity = {**defense.settings(), "batch_size": batch_size}
    key = run_key({"source": str(source.root.resolve()), **identity})
    dest = out / "defended" / folder.name / f"{name}-{key[:10]}"
    store = PurifiedStore(source, dest, identity, defense.record())
    if not (store.read_manifest() or {}).get("complete"):
        PurificationRun(defense, store, batch_size).run(torch.device("cpu"), progress=True)
    return dest, defense.settings()


def section(rows: list[dict], cfg, works: dict[str, bool]) -> list[str]:
    """results.md lines: each plug-in attack by defense, and each plug-in defense against the attacks that work."""

    def stat(values: list[float]) -> str:
        values = [100 * v for v in values]
        return f"{mean(values):.2f} ± {pstdev(values):.2f}" if values else "n/a"

    def cell(attack: str, defense: str, key: str, stage: str | None = None) -> str:
        """The rows of ``attack`` under ``defense`` (of one ``stage`` only: a plug-in attack may share a table attack's name)."""
        return stat([r[key] for r in rows if r["attack"] == attack and r["defense"] == defense and key in r
                     and (stage is None or r.get("stage") == stage)])

    lines = ["", "## Attacks and defenses added through the registries", "",
             "Attacks and defenses taken from the registries by name (`pureebm poison NAME`, `pureebm purify --defense NAME`), "
             "with their published defaults unless stated, measured as above (means ± standard deviation over target "
             f"classes {', '.join(map(str, cfg.attacks.target_classes))}; floor: the same clean-trained models).", ""]
    attacks = sorted({r["attack"] for r in rows if r.get("stage") == "plugin_attack"})
    for attack in attacks:
        flags = " ".join(attack_flags(cfg, attack)) or "the signature's defaults"
        lines += [f"**{attack}** ({flags}); undefended it {'works' if works.get(attack) else 'does NOT work'} "
                  "(at least 80 % success on average):", "",
                  "| defense | success % | floor % | natural acc. % |", "|---|---|---|---|"]
        defenses = ["none", "jpeg", *[f"T{t}" for t in cfg.plugins.sweep if t > 0]]
        for defense in defenses:
            label = {"none": "none", "jpeg": f"JPEG (quality {cfg.defenses.jpeg_quality})"}.get(defense, f"PureEBM T = {defense[1:]}")
            lines.append(f"| {label} | {cell(attack, defense, 'success_x1', 'plugin_attack')} | "
                         f"{cell(attack, defense, 'floor_success_x1', 'plugin_attack')} | {cell(attack, defense, 'natural', 'plugin_attack')} |")
        lines.append("")
    for defense in sorted({r["defense"] for r in rows if r.get("stage") == "plugin_defense"}):
        lines += [f"**{defense}** (its defaults) against the triggered attacks that work undefended:", "",
                  "| attack | none: success % | none: nat. % | " + f"{defense}: success % | {defense}: nat. % | "
                  f"PureEBM T = {cfg.defenses.T}: success % | PureEBM T = {cfg.defenses.T}: nat. % | floor % |", "|---|---|---|---|---|---|---|---|"]
        for attack in sorted({r["attack"] for r in rows if r["defense"] == defense}):
            lines.append(f"| {attack} | {cell(attack, 'none', 'success_x1')} | {cell(attack, 'none', 'natural')} | "
                         f"{cell(attack, defense, 'success_x1')} | {cell(attack, defense, 'natural')} | "
                         f"{cell(attack, f'T{cfg.defenses.T}', 'success_x1')} | {cell(attack, f'T{cfg.defenses.T}', 'natural')} | "
                         f"{cell(attack, defense, 'floor_success_x1')} |")
        lines.append("")
    return lines


def write(out: Path, rows: list[dict], cfg, works: dict[str, bool]) -> None:
    """Append the section to results.md and keep the rows in plugins.json."""
    (out / "plugins.json").write_text(json.dumps(rows, indent=1))
    with open(out / "results.md", "a") as f:
        f.write("\n".join(section(rows, cfg, works)) + "\n")
