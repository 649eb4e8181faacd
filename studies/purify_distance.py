"""Does purification wash out a small perturbation? The paper's criterion for T, on held-out digits.

    python studies/purify_distance.py --ckpt runs/ebm_digits/checkpoints/last.ckpt

Takes the digits test split (configs/ebm_digits.yaml's split), adds a random +-16/255 sign perturbation
on the 8-bit grid (a stand-in for a poison), purifies clean and perturbed copies for each T, and prints
the mean L2 distance of the purified perturbed image to its clean original and to its perturbed start,
and the mean energies. Mid-run T is where the purified image is closer to the clean original than to
the perturbed start, and perturbed images have reached the clean images' energy range.
"""

from __future__ import annotations

import argparse

import torch

from pureebm_lightning.data import DigitsDataModule
from pureebm_lightning.defenses.pureebm import Purifier
from pureebm_lightning.images import to_signed_unit, to_uint8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--steps", type=int, nargs="+", default=[0, 25, 50, 100, 150, 300])
    p.add_argument("--epsilon", type=float, default=16, help="l_inf size of the perturbation, in 1/255 units")
    args = p.parse_args()

    dm = DigitsDataModule(image_size=16)
    dm.setup()
    clean = to_uint8(dm.test_set.tensors[0])
    signs = torch.randint(0, 2, clean.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    poisoned = (clean.int() + signs * int(args.epsilon)).clamp(0, 255).to(torch.uint8)
    print(f"{len(clean)} test digits, random +-{args.epsilon:g}/255 perturbation; distances in [-1, 1] pixel units")
    print(f"{'T':>5} {'L2(pur, clean)':>15} {'L2(pur, start)':>15} {'closer to clean':>16} {'E clean':>9} {'E perturbed':>12}")
    for steps in args.steps:
        purifier = Purifier.from_checkpoint(args.ckpt, steps=steps, seed=0)
        pur_p = to_signed_unit(purifier(poisoned, 0))
        pur_c = to_signed_unit(purifier(clean, 0))
        to_clean = (pur_p - to_signed_unit(clean)).flatten(1).norm(dim=1)
        to_start = (pur_p - to_signed_unit(poisoned)).flatten(1).norm(dim=1)
        with torch.no_grad():
            e_c, e_p = purifier.energy_net(pur_c).mean().item(), purifier.energy_net(pur_p).mean().item()
        print(f"{steps:>5} {to_clean.mean():>15.3f} {to_start.mean():>15.3f} {(to_clean < to_start).float().mean():>15.1%} "
              f"{e_c:>9.4f} {e_p:>12.4f}")


if __name__ == "__main__":
    main()
