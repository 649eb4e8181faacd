"""The defense results table: one row per test run, aggregated per (attack, defense) into CSV and Markdown."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

RUN_FIELDS = ["attack", "kind", "target_class", "defense", "data", "checkpoint", "natural_accuracy",
              "poison_success", "poison_count"]


class ResultsTable(Callback):
    """After ``pureebm test``, records this run (one trained model) in ``<out_dir>/runs.csv`` (testing the same
    checkpoint on the same data again replaces its row) and rewrites ``results.csv`` and ``results.md``: per
    (attack, defense), the number of runs; natural accuracy and poison success averaged over target classes
    of their per-class means, with the spread over seeds (standard deviation within a target class, averaged
    over classes; n/a with one run per class); the largest per-class mean poison success (the paper's
    "max"); and for targeted attacks the pooled k/n with a 95 % Wilson interval. The data module's
    ``describe()`` says what the attack and the defense were."""

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
            "data": str(Path(trainer.datamodule.data).resolve()),
            "checkpoint": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else "",
            "natural_accuracy": _value(metrics.get("test/accuracy")),
            "poison_success": _value(metrics.get("test/poison_success")),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        runs_path = self.out_dir / "runs.csv"
        runs = []
        if runs_path.is_file():
            with open(runs_path, newline="") as f:
                runs = [r for r in csv.DictReader(f) if (r["checkpoint"], r["data"], r["attack"]) != (row["checkpoint"], row["data"], row["attack"]) or not row["checkpoint"]]
        runs.append({k: str(row.get(k, "")) for k in RUN_FIELDS})
        with open(runs_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
            writer.writeheader()
            writer.writerows(runs)
        table = aggregate(runs)
        write_table(table, self.out_dir)
        print(to_markdown(table))


def _value(metric) -> str:
    return "" if metric is None else f"{float(metric):.6f}"


def _numbers(runs: list[dict[str, str]], key: str) -> list[float]:
    values = [float(r[key]) for r in runs if r.get(key) not in (None, "")]
    return [v for v in values if math.isfinite(v)]


def _per_class(groups: dict[str, list[dict[str, str]]], key: str) -> tuple[float, float | None, float]:
    """(mean over classes of class means, mean over classes of the within-class stdev or None, max class mean)."""
    means, spreads = [], []
    for runs in groups.values():
        values = _numbers(runs, key)
        if values:
            means.append(statistics.fmean(values))
            if len(values) > 1:
                spreads.append(statistics.stdev(values))
    if not means:
        return float("nan"), None, float("nan")
    return statistics.fmean(means), (statistics.fmean(spreads) if spreads else None), max(means)


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def aggregate(runs: list[dict[str, str]]) -> list[dict[str, object]]:
    """Rows per (attack, defense); see :class:`ResultsTable`."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for run in runs:
        groups[(run["attack"], run["defense"])].append(run)
    table = []
    for (attack, defense), group in sorted(groups.items()):
        by_class: dict[str, list[dict[str, str]]] = defaultdict(list)
        for r in group:
            by_class[r.get("target_class", "")].append(r)
        nat_mean, nat_spread, _ = _per_class(by_class, "natural_accuracy")
        suc_mean, suc_spread, suc_max = _per_class(by_class, "poison_success")
        row: dict[str, object] = {
            "attack": attack, "defense": defense, "runs": len(group),
            "natural_accuracy_mean": nat_mean, "natural_accuracy_seed_std": nat_spread,
            "poison_success_mean": suc_mean, "poison_success_seed_std": suc_spread, "poison_success_max": suc_max,
            "k": "", "n": "", "wilson_low": "", "wilson_high": "",
        }
        if group[0].get("kind") == "targeted":
            pairs = [(float(r["poison_success"]) * float(r["poison_count"]), float(r["poison_count"]))
                     for r in group if r.get("poison_success") and r.get("poison_count")]
            k, n = round(sum(p[0] for p in pairs)), round(sum(p[1] for p in pairs))
            low, high = wilson(k, n)
            row.update(k=k, n=n, wilson_low=low, wilson_high=high)
        table.append(row)
    return table


def write_table(table: list[dict[str, object]], out_dir: Path) -> None:
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out_dir / "results.md").write_text(to_markdown(table) + "\n")


def to_markdown(table: list[dict[str, object]]) -> str:
    def pct(mean: float, spread: float | None = None, with_spread: bool = False) -> str:
        if mean != mean:  # nan: not measured
            return "-"
        text = f"{100 * mean:.2f}"
        if with_spread:
            text += f" ± {100 * spread:.2f}" if spread is not None else " ± n/a"
        return text

    lines = ["| attack | defense | runs | natural accuracy % | poison success % | max poison success % | targets k/n [95% Wilson] |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        kn = f"{r['k']}/{r['n']} [{100 * r['wilson_low']:.1f}, {100 * r['wilson_high']:.1f}]" if r["n"] != "" else "-"
        lines.append(
            f"| {r['attack']} | {r['defense']} | {r['runs']} "
            f"| {pct(r['natural_accuracy_mean'], r['natural_accuracy_seed_std'], True)} "
            f"| {pct(r['poison_success_mean'], r['poison_success_seed_std'], True)} | {pct(r['poison_success_max'])} | {kn} |"
        )
    return "\n".join(lines)
