"""GPU speed of the CIFAR-10 EBM (SNGAN ResNet, 32x32): purification images/s at T = 150 in fp32 and with each
speed option, EBM training iterations/s, peak memory, and the projected time to purify CIFAR-10's 50,000
training images (the paper: 923 s on a TPU v3-8; goal: under 60 s on one H100/H200-class GPU).

    python benchmarks/device_benchmark.py --out results/device_benchmark.json       # --deadline 270 s of rows on one GPU
    python benchmarks/device_benchmark.py --smoke                                    # seconds on a CPU: the script runs

Purification is timed over --steps Langevin steps of a --batch of images (after warm-up steps, which include
compilation) and extrapolated to T = 150 per image; a training iteration is what EBMModule.training_step does:
K = 100 Langevin steps on the per-device batch, the energies of positives and negatives, backward, Adam step.
The network has random weights (speed does not depend on them; --ckpt loads a trained one). Options are
applied with the project's SpeedOptions callback; bf16 is the autocast Lightning's bf16-mixed precision uses.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch._dynamo.utils import counters

from pureebm_lightning.callbacks.speed_options import SpeedOptions
from pureebm_lightning.energy_nets import ConvNetEnergy, SNGANResNetEnergy
from pureebm_lightning.langevin import LangevinSampler

OPTIONS = {  # name: (bf16 autocast, SpeedOptions kwargs); compiled rows last, the deadline may cut them
    "fp32": (False, {}),
    "tf32": (False, {"tf32": True}),
    "bf16": (True, {}),
    "channels_last": (False, {"channels_last": True}),
    "bf16+channels_last": (True, {"channels_last": True}),
    "compile": (False, {"compile": True}),
    "bf16+channels_last+compile": (True, {"channels_last": True, "compile": True}),
}


class _Holder(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, sampler: LangevinSampler) -> None:
        super().__init__()
        self.energy_net, self.sampler = net, sampler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(base: torch.nn.Module, option: str, args: argparse.Namespace, device: torch.device) -> dict:
    bf16, kwargs = OPTIONS[option]
    net, sampler = copy.deepcopy(base).to(device), LangevinSampler(1.25e-2, 1e-4, 100)
    torch._dynamo.reset()  # each row compiles afresh (and does not hit the previous rows' recompile limit)
    counters.clear()
    speed = SpeedOptions(**kwargs, compile_backend=args.compile_backend)  # fp32 rows: TF32 off (IEEE float32)
    speed.setup(None, _Holder(net, sampler), "predict")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, *args.shape, device=device, generator=gen) * 2 - 1
    try:
        reset_memory(device)
        with autocast():
            t0 = time.perf_counter()
            sampler.sample(net, x, args.warmup, generator=gen)  # warm-up (and compilation)
            sync(device)
            warmup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = sampler.sample(net, x, args.steps, generator=gen).samples
            sync(device)
            step_s = (time.perf_counter() - t0) / args.steps
        purify_memory = peak_memory(device)

        # one EBM training iteration as EBMModule.training_step does it under Lightning: the step (sampling,
        # energies, loss) inside autocast, backward and the optimiser step outside
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        data = x[: args.train_batch]

        def iteration() -> None:
            with autocast():
                negatives = sampler.sample(net, data, args.train_k, generator=gen).samples
                energy = net(torch.cat([data + 1.5e-2 * torch.randn_like(data), negatives])).float()
                loss = (energy[: len(data)].mean() - energy[len(data):].mean()) / sampler.temperature
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        iteration()  # warm-up (and compilation of the training graphs)
        sync(device)
        reset_memory(device)
        t0 = time.perf_counter()
        for _ in range(args.train_iters):
            iteration()
        sync(device)
        train_s = (time.perf_counter() - t0) / args.train_iters
        train_memory = peak_memory(device)
    finally:
        speed.teardown(None, None, "predict")
    images_per_s = args.batch / (step_s * args.purify_steps)
    return {
        "option": option, "finite": bool(torch.isfinite(out).all()),
        "compiled_graphs": counters["stats"]["unique_graphs"] if kwargs.get("compile") else 0,
        "purify_images_per_s": images_per_s, "langevin_step_ms": 1e3 * step_s,
        "cifar10_50k_purify_s": 50_000 / images_per_s, "warmup_s": warmup_s,
        "train_iterations_per_s": 1 / train_s,
        "purify_peak_memory_gib": purify_memory, "train_peak_memory_gib": train_memory,
    }


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512, help="purification batch (images per step)")
    p.add_argument("--steps", type=int, default=20, help="Langevin steps timed (extrapolated to --purify_steps)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--purify_steps", type=int, default=150, help="T of purification")
    p.add_argument("--train_batch", type=int, default=128, help="per-device training batch (the paper's global 128 on one GPU)")
    p.add_argument("--train_k", type=int, default=100, help="Langevin steps per training iteration")
    p.add_argument("--train_iters", type=int, default=3)
    p.add_argument("--options", nargs="*", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--compile_backend", default="inductor")
    p.add_argument("--deadline", type=float, default=270, help="seconds: rows not started by then are skipped")
    p.add_argument("--ckpt", type=str, default=None, help="an EBM checkpoint to take the network from")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--smoke", action="store_true", help="a tiny ConvNet on CPU, to check that the script runs")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        base, args.shape = ConvNetEnergy(in_channels=3, image_size=8, num_filters=8), (3, 8, 8)
        args.batch, args.steps, args.warmup, args.train_batch, args.train_k, args.train_iters = 8, 2, 1, 4, 2, 1
        args.compile_backend = "aot_eager"  # compiles in a second on a CPU (inductor needs ~15 s per graph there)
    elif args.ckpt:
        from pureebm_lightning.ebm_module import EBMModule

        base = EBMModule.load_from_checkpoint(args.ckpt, map_location="cpu").energy_net
        args.shape = (3, 32, 32)
    else:
        base, args.shape = SNGANResNetEnergy(in_channels=3, num_filters=128), (3, 32, 32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{type(base).__name__} ({sum(p.numel() for p in base.parameters()):,} parameters), {args.shape}, on {name}; "
          f"torch {torch.__version__}", flush=True)
    rows, start, skipped = [], time.perf_counter(), []
    for option in args.options:
        if time.perf_counter() - start > args.deadline:
            skipped.append(option)
            continue
        rows.append(measure(base, option, args, device))
        r = rows[-1]
        memory = (f"  peak {r['purify_peak_memory_gib']:.2f} / {r['train_peak_memory_gib']:.2f} GiB (purify / train)"
                  if r["purify_peak_memory_gib"] is not None else "")
        reference = next((row for row in rows if row["option"] == "fp32"), rows[0])
        print(f"{option:28s} purify {r['purify_images_per_s']:9.1f} images/s (x{r['purify_images_per_s'] / reference['purify_images_per_s']:.2f} fp32)"
              f"  50k in {r['cifar10_50k_purify_s']:7.1f} s  train {r['train_iterations_per_s']:6.2f} it/s{memory}"
              f"  warm-up {r['warmup_s']:.1f} s" + (f", {r['compiled_graphs']} graphs" if r["compiled_graphs"] else ""), flush=True)
    if skipped:
        print(f"skipped after the {args.deadline:.0f} s deadline: {', '.join(skipped)}")
    if not rows:
        raise SystemExit("no option was measured before the deadline")
    best = min(rows, key=lambda r: r["cifar10_50k_purify_s"])
    print(f"fastest: {best['option']}, CIFAR-10 (50,000 images, T = {args.purify_steps}) in {best['cifar10_50k_purify_s']:.1f} s "
          f"on one device (paper: 923 s on a TPU v3-8; goal < 60 s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "settings": meta, "results": rows,
                                        "skipped": skipped}, indent=1))


if __name__ == "__main__":
    main()
