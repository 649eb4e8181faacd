"""The defense results table: one row per test run, aggregated per (attack, defense) into CSV and Markdown."""

from __future__ import annotations

import csv
import os
import statistics
from collections import defaultdict
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

RUN_FIELDS = ["attack", "kind", "target_class", "defense", "seed", "natural_accuracy", "poison_success"]


class ResultsTable(Callback):
    """After ``pureebm test``, appends this run to ``<out_dir>/runs.csv`` and rewrites ``results.csv`` and
    ``results.md``: per (attack, defense), the number of runs, natural accuracy and poison success as mean
    and standard deviation over runs (seeds and target classes), and the largest per-target-class mean
    poison success (the paper's "max"). The data module says what the attack and the defense were."""

    def __init__(self, out_dir: str = "results") -> None:
        super().__init__()
        self.out_dir = Path(out_dir)

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        describe = getattr(trainer.datamodule, "describe", None)
        if describe is None:
            return
        metrics = trainer.callback_metrics
        row = {
            **describe(),
            "seed": os.environ.get("PL_GLOBAL_SEED", ""),
            "natural_accuracy": _value(metrics.get("test/accuracy")),
            "poison_success": _value(metrics.get("test/poison_success")),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        runs_path = self.out_dir / "runs.csv"
        new = not runs_path.is_file()
        with open(runs_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(runs_path, newline="") as f:
            table = aggregate(list(csv.DictReader(f)))
        write_table(table, self.out_dir)
        print(to_markdown(table))


def _value(metric) -> str:
    return "" if metric is None else f"{float(metric):.6f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict[str, str]]) -> list[dict[str, object]]:
    """Rows per (attack, defense): runs, means and standard deviations, max over target classes."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for run in runs:
        groups[(run["attack"], run["defense"])].append(run)
    table = []
    for (attack, defense), group in sorted(groups.items()):
        natural = [float(r["natural_accuracy"]) for r in group if r["natural_accuracy"]]
        success = [float(r["poison_success"]) for r in group if r["poison_success"]]
        by_target: dict[str, list[float]] = defaultdict(list)
        for r in group:
            if r["poison_success"]:
                by_target[r["target_class"]].append(float(r["poison_success"]))
        (nat_mean, nat_std), (suc_mean, suc_std) = _mean_std(natural), _mean_std(success)
        table.append({
            "attack": attack, "defense": defense, "runs": len(group),
            "natural_accuracy_mean": nat_mean, "natural_accuracy_std": nat_std,
            "poison_success_mean": suc_mean, "poison_success_std": suc_std,
            "poison_success_max": max((statistics.fmean(v) for v in by_target.values()), default=float("nan")),
        })
    return table


def write_table(table: list[dict[str, object]], out_dir: Path) -> None:
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out_dir / "results.md").write_text(to_markdown(table) + "\n")


def to_markdown(table: list[dict[str, object]]) -> str:
    def pct(mean: float, std: float | None = None) -> str:
        if mean != mean:  # nan: not measured
            return "-"
        return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")

    lines = ["| attack | defense | runs | natural accuracy % | poison success % | max poison success % |",
             "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['attack']} | {r['defense']} | {r['runs']} | {pct(r['natural_accuracy_mean'], r['natural_accuracy_std'])} "
                     f"| {pct(r['poison_success_mean'], r['poison_success_std'])} | {pct(r['poison_success_max'])} |")
    return "\n".join(lines)
