"""The stopping rule against fixed T on an evaluation folder: each triggered attack's poisoned sets purified by the
clean EBM with `pureebm purify --stop energy` (calibrated on the clean EBM's own held-out images), a victim trained on
each with the evaluation's recipe and seed, and poison success, natural accuracy and mean steps per image next to
the fixed-T victims the evaluation already trained.

    pureebm evaluate --config configs/evaluate/digits.yaml --out runs/evaluate/digits      # first (or resume)
    python studies/stopping_rule.py --out runs/evaluate/digits --quantile 0.5 --patience 10

Its purified sets and victims go to <out>/studies/stopping_rule/ (resumed on rerun); prints a markdown table.
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
from studies.security_table import stat  # noqa: E402

ATTACKS = ("badnets", "blended", "narcissus", "adaptive_badnets", "adaptive_narcissus")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the evaluation folder")
    parser.add_argument("--config", default=str(ROOT / "configs/evaluate/digits.yaml"), help="the evaluation's config")
    parser.add_argument("--quantile", type=float, default=0.5)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--fixed", type=int, nargs="+", default=[150, 1000], help="the fixed T to compare with")
    args = parser.parse_args()
    out = Path(args.out)
    cfg = settings(["--config", args.config]).resolved()
    study = out / "studies" / "stopping_rule"
    (clean_ckpt,) = sorted((out / "ebm").glob("clean_*/**/checkpoints/last.ckpt"))
    calibration = out / "data" / "ebm_holdout" / "train"
    victims = Victims(study, cfg.victim)
    rule = f"q{args.quantile:g}-p{args.patience}-max{args.max_steps}"
    rows = [json.loads(line) for line in (out / "victims.jsonl").read_text().splitlines() if line.strip()]
    table: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["attack"] in ATTACKS and r["defense"] in [f"T{t}" for t in args.fixed]:
            table[(r["attack"], f"fixed T = {r['T']}")].append(r)
    for folder in sorted(p for p in (out / "data").iterdir() if p.name.split("_c")[0] in ATTACKS and (p / "poison.json").is_file()):
        spec = json.loads((folder / "poison.json").read_text())
        attack, target = spec["attack"], spec["target_class"]
        k = cfg.attacks.target_classes.index(target)
        defended = study / "purified" / f"{folder.name}-{rule}"
        if not (defended / "manifest.json").is_file() or not json.loads((defended / "manifest.json").read_text()).get("complete"):
            pureebm(["purify", "--data", str(folder), "--ckpt_path", str(clean_ckpt), "--stop", "energy",
                     "--stop_calibration", str(calibration), "--stop_quantile", str(args.quantile),
                     "--stop_patience", str(args.patience), "--stop_max_steps", str(args.max_steps), "--out", str(defended),
                     "--batch_size", str(cfg.defenses.batch_size), "--trainer.enable_progress_bar", "false"])
        steps = json.loads((defended / "manifest.json").read_text()).get("stop_steps")
        row = victims.run(f"{folder.name}|stop-{rule}", defended, 100 + k, lambda m, f=folder: measure(m, f, f),
                          attack=attack, target=target, defense=f"stop-{rule}")
        table[(attack, f"energy stop ({rule})")].append({**row, **({"mean_steps": steps["mean_steps"]} if steps else {})})
    print("| attack | defense | success % (x1) | success % (x3, Narcissus) | natural % | mean steps per image |")
    print("|---|---|---|---|---|---|")
    for (attack, defense), found in sorted(table.items()):
        x3 = stat([r["success_x3"] for r in found if "success_x3" in r]) if attack.endswith("narcissus") else ""
        steps = stat([r["mean_steps"] for r in found if "mean_steps" in r], 1) if defense.startswith("energy") else defense.split()[-1]
        print(f"| {attack} | {defense} | {stat([r['success_x1'] for r in found])} | {x3} | {stat([r['natural'] for r in found])} | {steps} |")


if __name__ == "__main__":
    main()
