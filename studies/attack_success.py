"""Poison success of each attack on digits with no defense, next to its floor (a model trained on clean data).

For each triggered attack and budget: `pureebm poison`, then the digits classifier recipe
(configs/classifier_digits.yaml + configs/data/digits_poisoned.yaml) trained on the poisoned folder, then
natural accuracy and poison success (x1, and x3 for Narcissus). Gradient Matching: one poisoned folder and
one victim per target; success is k/n targets with a Wilson interval. The floor: one model trained on the
same split unpoisoned (`--attack none`), tested against every attack's trigger or targets.

    python studies/attack_success.py --out runs/attack_success            # about 15 minutes on 2 CPU cores
    python studies/attack_success.py --out /tmp/a --quick                  # one budget each, 2 GM targets

Writes <out>/attack_success.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import disable_possible_user_warnings

from pureebm_lightning.callbacks.results_table import wilson
from pureebm_lightning.cli import make_cli
from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.evaluation.steps import poison, working_dir

CONFIGS = ROOT / "configs"


def train_victim(folder: Path, workdir: Path, seed: int, *extra: str):
    """The digits classifier recipe trained on ``folder`` (``extra``: more flags); returns (model, trainer)."""
    with working_dir(workdir):
        cli = make_cli(["--config", str(CONFIGS / "classifier_digits.yaml"), "--config", str(CONFIGS / "data/digits_poisoned.yaml"),
                        f"--data.init_args.data={folder}", f"--seed_everything={seed}", "--trainer.enable_progress_bar=false",
                        "--trainer.enable_model_summary=false", "--trainer.logger=false", *extra], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model, cli.trainer


def test(model, trainer, folder: Path, spec: Path | None = None, magnification: float | None = None) -> tuple[float, float | None]:
    """(natural accuracy, poison success) of ``model`` on ``folder``'s test split and an attack's poisoned tests."""
    dm = PoisonedSetDataModule(str(folder), crop_padding=0, hflip=False, batch_size=256,
                               poison_spec=str(spec) if spec else None, magnification=magnification)
    tester = Trainer(accelerator=trainer.accelerator, devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False)  # a fresh one each time: a trainer keeps its test loaders' layout
    results = tester.test(model, datamodule=dm, verbose=False)
    return results[0]["test/accuracy"], (results[1]["test/poison_success"] if len(results) > 1 else None)


def intended_probability(model, folder: Path, target: dict) -> float:
    """The model's softmax probability of the intended class on the target image: how far the attack got."""
    import torch

    from pureebm_lightning.images import read_image, to_signed_unit

    image = to_signed_unit(read_image(folder / target["file"], "L"))[None]
    with torch.no_grad():
        return torch.softmax(model.eval()(image.to(model.device)), 1)[0, target["intended_class"]].item()


def run(args: argparse.Namespace) -> None:
    out = args.out.resolve()
    rows, t0 = [], time.time()
    clean_folder, _ = poison(out / "data", "clean", "--attack", "none")
    clean_model, clean_trainer = train_victim(clean_folder, out / "victims/clean", args.seed + 100)
    clean_acc, _ = test(clean_model, clean_trainer, clean_folder)
    rows.append({"attack": "none (clean data)", "budget": 0.0, "poisoned": 0, "epsilon_255": 0, "magnification": "",
                 "natural_accuracy": clean_acc, "poison_success": float("nan"), "floor": float("nan"), "targets": ""})

    triggered = [("badnets", b, []) for b in args.badnets] + [("blended", b, []) for b in args.blended] + \
        [("narcissus", b, ["--epsilon", str(e), "--steps", str(args.narcissus_steps), "--lr", str(args.narcissus_lr)])
         for b in args.narcissus for e in args.narcissus_epsilon]
    for attack, budget, extra in triggered:
        name = f"{attack}_b{budget:g}" + (f"_eps{extra[1]}" if extra else "")
        folder, spec = poison(out / "data", name, "--attack", attack, "--budget", str(budget), "--target_class",
                              str(args.target_class), "--seed", str(args.seed), *extra)
        model, trainer = train_victim(folder, out / "victims" / name, args.seed + 100)
        for m in ([1.0, 3.0] if attack == "narcissus" else [1.0]):
            acc, success = test(model, trainer, folder, magnification=m)
            _, floor = test(clean_model, clean_trainer, clean_folder, spec=folder / "poison.json", magnification=m)
            rows.append({"attack": attack, "budget": budget, "poisoned": spec["poison_count"],
                         "epsilon_255": spec.get("epsilon_255", spec["linf_255"]), "magnification": m,
                         "natural_accuracy": acc, "poison_success": success, "floor": floor, "targets": ""})
            print(rows[-1], f"{time.time() - t0:.0f} s", flush=True)

    for budget in args.gm_budget:
        hits = floor_hits = 0
        accs, probabilities = [], []
        for k in range(args.gm_targets):
            name = f"gradient_matching_b{budget:g}_eps{args.gm_epsilon}_t{k}"
            folder, spec = poison(out / "data", name, "--attack", "gradient_matching", "--budget", str(budget),
                                  "--epsilon", str(args.gm_epsilon), "--seed", str(k), "--restarts", str(args.gm_restarts))
            model, trainer = train_victim(folder, out / "victims" / name, args.seed + 100)
            acc, success = test(model, trainer, folder)
            _, floor = test(clean_model, clean_trainer, clean_folder, spec=folder / "poison.json")
            hits, floor_hits, accs = hits + round(success), floor_hits + round(floor), accs + [acc]
            target = spec["targets"][0]
            p_victim, p_clean = intended_probability(model, folder, target), intended_probability(clean_model, folder, target)
            probabilities.append((p_clean, p_victim))
            print(f"GM target {k}: test id {target['id']} class {target['true_class']} -> {target['intended_class']}: "
                  f"{'success' if success else 'failure'} (floor {floor:.0f}), p(intended) clean model {p_clean:.4f}, "
                  f"victim {p_victim:.4f}, objective "
                  f"{spec['objective']['no_perturbation']:.3f} -> {spec['objective']['best_final']:.3f}, "
                  f"{time.time() - t0:.0f} s", flush=True)
        n = args.gm_targets
        lo, hi = wilson(hits, n)
        rows.append({"attack": "gradient_matching", "budget": budget, "poisoned": spec["poison_count"],
                     "epsilon_255": args.gm_epsilon, "magnification": "", "natural_accuracy": sum(accs) / n,
                     "poison_success": hits / n, "floor": floor_hits / n,
                     "targets": f"{hits}/{n} [{100 * lo:.1f}, {100 * hi:.1f}] %; floor {floor_hits}/{n}; median p(intended) "
                                f"clean {sorted(p for p, _ in probabilities)[n // 2]:.2g}, victim {sorted(v for _, v in probabilities)[n // 2]:.2g}"})
        print(rows[-1], flush=True)

    write(out, rows, time.time() - t0, args)


def write(out: Path, rows: list[dict], seconds: float, args: argparse.Namespace) -> None:
    with open(out / "attack_success.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Poison success on digits, no defense (seed {args.seed}, target class {args.target_class} for triggered attacks)", "",
             "| attack | budget | poisoned images | l_inf (/255) | test x | natural acc. % | poison success % | floor % | targets |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {100 * r['budget']:g} % | {r['poisoned']} | {r['epsilon_255']} | {r['magnification']} | "
                     f"{100 * r['natural_accuracy']:.2f} | {100 * r['poison_success']:.2f} | {100 * r['floor']:.2f} | {r['targets']} |")
    lines += ["", f"Floor: the same trigger (or target) on the digits classifier trained on the same split unpoisoned. "
              f"Total time {seconds / 60:.1f} min.", ""]
    (out / "attack_success.md").write_text("\n".join(lines))
    print("\n".join(lines))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/attack_success"))
    p.add_argument("--seed", type=int, default=0, help="seed of the triggered attacks; victims train with seed + 100")
    p.add_argument("--target_class", type=int, default=0)
    p.add_argument("--badnets", type=float, nargs="*", default=[0.01, 0.05, 0.1])
    p.add_argument("--blended", type=float, nargs="*", default=[0.01, 0.05, 0.1])
    p.add_argument("--narcissus", type=float, nargs="*", default=[0.01, 0.05])
    p.add_argument("--narcissus_epsilon", type=int, nargs="*", default=[8, 16])
    p.add_argument("--narcissus_steps", type=int, default=500)
    p.add_argument("--narcissus_lr", type=float, default=0.01)
    p.add_argument("--gm_budget", type=float, nargs="*", default=[0.01])
    p.add_argument("--gm_epsilon", type=int, default=16)
    p.add_argument("--gm_targets", type=int, default=10)
    p.add_argument("--gm_restarts", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="one budget per attack, 2 GM targets with 1 restart")
    args = p.parse_args()
    if args.quick:
        args.badnets, args.blended, args.narcissus, args.narcissus_epsilon = [0.1], [0.1], [0.05], [16]
        args.gm_targets, args.gm_restarts = 2, 1
    return args


if __name__ == "__main__":
    disable_possible_user_warnings()
    run(parse())
