"""The paper's Figure 3 for one purification: mean energy and mean L2 distance from the start along the chain."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def diagnostic_points(steps: int, count: int) -> list[int]:
    """``count`` + 1 evenly spaced steps from 0 to ``steps`` (fewer if ``steps`` is small)."""
    return sorted({round(k * steps / count) for k in range(count + 1)})


def write_diagnostics(diagnostics: dict[str, Any], out_dir: str | Path, title: str = "") -> tuple[Path, Path]:
    """Write ``purify_diagnostics.csv`` and ``purify_diagnostics.png`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out_dir = Path(out_dir)
    csv_path, png_path = out_dir / "purify_diagnostics.csv", out_dir / "purify_diagnostics.png"
    rows = zip(diagnostics["step"], diagnostics["mean_energy"], diagnostics["mean_l2_from_start"])
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "mean_energy", "mean_l2_from_start", "images"])
        writer.writerows([s, e, d, diagnostics["images"]] for s, e, d in rows)
    fig, (ax_e, ax_d) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_e.plot(diagnostics["step"], diagnostics["mean_energy"], marker="o")
    ax_e.set(xlabel="Langevin step", ylabel="mean energy E(x)", title="energy along the chain")
    ax_d.plot(diagnostics["step"], diagnostics["mean_l2_from_start"], marker="o", color="tab:orange")
    ax_d.set(xlabel="Langevin step", ylabel="mean ||x_t - x_0||_2", title="distance from the start image")
    fig.suptitle(title or f"{diagnostics['images']} images")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path
