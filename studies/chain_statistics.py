"""Which statistic can tell a chain it may stop? Energy, gradient norm and distance moved along the clean EBM's chain,
for clean held-out images and for the poisons of each attack, and the steps a rule on each would stop them at.

    pureebm evaluate --config configs/evaluate/digits.yaml --out runs/evaluate/digits      # first (or resume)
    python studies/chain_statistics.py --out runs/evaluate/digits

Each rule stops a chain once its statistic has been on the clean side of a threshold for ``--patience`` consecutive
steps (the start image itself does not count), at ``--max_steps`` at the latest. The thresholds are quantiles of the
clean images' own chains from half way through ``--calibration_steps`` on (energy, gradient norm: at most; distance
from the start: at least); they are this study's own (one noise draw for all its chains), close to but not bit for
bit those `pureebm purify --stop` calibrates. Prints two markdown tables: the statistics along the chain, and the
stop steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pureebm_lightning.defenses.pureebm import Purifier  # noqa: E402
from pureebm_lightning.images import to_signed_unit  # noqa: E402
from pureebm_lightning.purification.command import calibration_images  # noqa: E402

ATTACKS = ("badnets", "blended", "narcissus", "wanet", "adaptive_badnets", "adaptive_narcissus")
POINTS = (0, 25, 50, 100, 150, 300, 1000)


@torch.no_grad()
def walk(purifier: Purifier, x: torch.Tensor, steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Energy, gradient norm and L2 distance from the start at every step 0..steps of the purifier's chain from x."""
    sampler, state, gen = purifier.sampler, x.clone(), torch.Generator().manual_seed(seed)
    out: dict[str, list] = {"energy": [], "grad_norm": [], "distance": []}
    for t in range(steps + 1):
        energy, grad = sampler.energy_grad(purifier.energy_net, state)
        out["energy"].append(energy.float())
        out["grad_norm"].append(grad.flatten(1).norm(dim=1))
        out["distance"].append((state - x).flatten(1).norm(dim=1))
        if t < steps:
            state = state - sampler.drift * grad + sampler.step_size * torch.randn(state.shape, generator=gen)
    return {k: torch.stack(v) for k, v in out.items()}  # (steps + 1, images)


def read_png(path: Path) -> torch.Tensor:
    """A PNG as uint8 (C, H, W)."""
    pixels = torch.from_numpy(np.array(Image.open(path)))
    return pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)


def stop_steps(values: torch.Tensor, threshold: float, at_most: bool, patience: int, max_steps: int) -> torch.Tensor:
    """The step each chain (a column) stops at under a rule on ``values`` (rows: steps 0..)."""
    inside = values <= threshold if at_most else values >= threshold
    inside[0] = False  # the start image does not count
    run = torch.zeros(values.shape[1], dtype=torch.long)
    stop = torch.full((values.shape[1],), max_steps, dtype=torch.long)
    for t in range(1, min(max_steps, len(values) - 1) + 1):
        run = torch.where(inside[t], run + 1, torch.zeros_like(run))
        fresh = (run >= patience) & (stop == max_steps)
        stop[fresh] = t
    return stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the evaluation folder")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--calibration_steps", type=int, default=150)
    parser.add_argument("--poisons", type=int, default=64, help="poisons per attack (of its first target class)")
    args = parser.parse_args()
    out = Path(args.out)
    (ckpt,) = sorted((out / "ebm").glob("clean_*/**/checkpoints/last.ckpt"))
    purifier = Purifier.from_source(str(ckpt))
    clean = calibration_images(str(out / "data" / "ebm_holdout" / "train"), purifier.image_shape)
    calibration = walk(purifier, clean, args.calibration_steps)
    sets = {"clean held-out": walk(purifier, clean, args.max_steps)}
    for attack in ATTACKS:
        folders = sorted(p for p in (out / "data").glob(f"{attack}_c*") if (p / "poison.json").is_file())
        if not folders:
            continue
        spec = json.loads((folders[0] / "poison.json").read_text())
        ids = set(spec["poison_indices"][: args.poisons])
        files = [f for f in sorted((folders[0] / "train").glob("*/*.png")) if int(f.stem) in ids]
        images = to_signed_unit(torch.stack([read_png(f) for f in files]))
        sets[f"{attack} poisons ({folders[0].name})"] = walk(purifier, images, args.max_steps)
    points = [p for p in POINTS if p <= args.max_steps]
    print("| images | statistic | " + " | ".join(f"step {p}" for p in points) + " |")
    print("|---|---|" + "---|" * len(points))
    for name, stats in sets.items():
        for key, values in stats.items():
            print(f"| {name} | {key} | " + " | ".join(f"{values[p].mean():.4f}" for p in points) + " |")
    half = args.calibration_steps // 2
    rules = []
    for q in args.quantiles:
        for key, at_most in (("energy", True), ("grad_norm", True), ("distance", False)):
            pooled = calibration[key][half:].flatten()
            rules.append((f"{key} {'<=' if at_most else '>='} clean q{q:g} ({torch.quantile(pooled, q if at_most else 1 - q):.4f})",
                          key, float(torch.quantile(pooled, q if at_most else 1 - q)), at_most))
    print(f"\nStop steps (patience {args.patience}, cap {args.max_steps}): mean / median / min over the images\n")
    print("| rule | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    for label, key, threshold, at_most in rules:
        cells = []
        for stats in sets.values():
            s = stop_steps(stats[key], threshold, at_most, args.patience, args.max_steps).float()
            cells.append(f"{s.mean():.0f} / {s.median():.0f} / {s.min():.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
