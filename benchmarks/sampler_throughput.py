"""Langevin sampler throughput vs a bare ``torch.autograd.grad`` loop over the same network and batch.

    python benchmarks/sampler_throughput.py                      # light ConvNet, digits-sized images
    python benchmarks/sampler_throughput.py --net sngan --image-size 32 --channels 3 --batch 32

The loops run interleaved, in a rotating order, in one process, each ``--repeats`` times; medians are reported in image-steps
per second (images x Langevin steps / wall seconds):
- ``sampler``: ``LangevinSampler.sample`` as purification runs it (the project's hot loop);
- ``sampler+norm``: the same with ``track_grad_norm=True``, as EBM training runs it (logs the gradient norm);
- ``bare autograd``: the minimal loop, ``grad = torch.autograd.grad(E(x).sum(), x)`` and a fresh tensor per step;
- ``param grads``: the same step through ``E(x).sum().backward()``, which also forms every parameter
  gradient (what a sampler that does not restrict the backward pass pays).
- ``sampler channels-last`` (with ``--channels-last``): the sampler with the network's weights and the chains in
  channels-last layout (a copy of the network; the same computation in another memory order).
Ratios, not absolute times, are the result: sampler / bare autograd should be >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from pureebm_lightning import ConvNetEnergy, LangevinSampler, SNGANResNetEnergy
from pureebm_lightning.callbacks.speed_options import to_channels_last


def bare_autograd(net, x, steps, drift, eps):
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(x).sum(), x)
        x = x.detach() - drift * grad + eps * torch.randn_like(x)
    return x


def with_param_grads(net, x, steps, drift, eps):
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()
        x = x.detach() - drift * x.grad + eps * torch.randn_like(x)
    net.zero_grad(set_to_none=True)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=["convnet", "sngan"], default="convnet")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--num-filters", type=int, default=None, help="default: 32 (convnet), 128 (sngan)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--channels-last", action="store_true", help="also time the sampler in channels-last layout")
    args = p.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.net == "sngan":
        net = SNGANResNetEnergy(args.channels, args.num_filters or 128)
    else:
        net = ConvNetEnergy(args.channels, args.num_filters or 32, args.image_size)
    sampler = LangevinSampler(n_steps=args.steps)
    x = torch.rand(args.batch, args.channels, args.image_size, args.image_size) * 2 - 1
    loops = {
        "sampler": lambda: sampler.sample(net, x),
        "sampler+norm": lambda: sampler.sample(net, x, track_grad_norm=True),
        "bare autograd": lambda: bare_autograd(net, x, args.steps, sampler.drift, sampler.step_size),
        "param grads": lambda: with_param_grads(net, x, args.steps, sampler.drift, sampler.step_size),
    }
    if args.channels_last:
        net_cl, sampler_cl = copy.deepcopy(net), LangevinSampler(n_steps=args.steps)
        to_channels_last(net_cl, sampler_cl)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        loops["sampler channels-last"] = lambda: sampler_cl.sample(net_cl, x_cl)
    for fn in loops.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for i in range(args.repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate the order: no loop always runs first
            fn = loops[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    work = args.batch * args.steps
    rate = {name: work / statistics.median(ts) for name, ts in times.items()}
    load = os.getloadavg()[0]
    print(f"{type(net).__name__}, {args.batch} x {args.channels}x{args.image_size}x{args.image_size}, {args.steps} steps, "
          f"{args.repeats} interleaved repeats, {args.threads} threads, load average {load:.2f}, torch {torch.__version__}")
    for name, r in rate.items():
        print(f"  {name:<22} {r:10.0f} image-steps/s")
    print(f"  sampler / bare autograd:          {rate['sampler'] / rate['bare autograd']:.3f}  (target >= 0.95)")
    print(f"  sampler+norm / bare autograd:     {rate['sampler+norm'] / rate['bare autograd']:.3f}")
    print(f"  bare autograd / with param grads: {rate['bare autograd'] / rate['param grads']:.3f}  "
          "(the saving from skipping parameter gradients)")
    if args.channels_last:
        print(f"  sampler channels-last / sampler:  {rate['sampler channels-last'] / rate['sampler']:.3f}  (> 1: channels-last is faster)")


if __name__ == "__main__":
    main()
