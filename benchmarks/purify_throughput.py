"""Purification throughput vs the bare sampler loop, and peak memory for two dataset sizes.

    python benchmarks/purify_throughput.py                                    # T = 150, sizes 256 and 2048, CPU
    python benchmarks/purify_throughput.py --steps 5 --sizes 64 256 --repeats 2   # smoke test
    python benchmarks/purify_throughput.py --ckpt runs/ebm_digits/checkpoints/last.ckpt --accelerator gpu

Without ``--ckpt`` a 2-step EBM is fitted on the digits in a temporary folder (``configs/ebm_digits.yaml``: ConvNetEnergy,
1x16x16, 32 filters); the poisoned input is an ImageFolder of 16x16 grey digit PNGs, repeated up to each size.
On the smallest size, interleaved in a rotating order in one process, ``--repeats`` times (medians, images/s):
- ``purify``: the whole ``pureebm purify --overwrite`` call in-process (checkpoint hash and load, header scan,
  Trainer start-up, read PNGs, purify, write PNGs atomically, manifest);
- ``sampler``: ``LangevinSampler.sample(net, x, T)`` over the same images, already in memory as one float tensor,
  in batches of the same size, with the same net and sampler (``Purifier.from_checkpoint``).
purify / sampler should be >= 0.9 (reading, writing and bookkeeping cost under 10%).
Peak memory: ``pureebm purify`` once per size, each in a fresh subprocess, reports its peak RSS (ru_maxrss);
large / small should be ~1.0 (memory does not grow with the dataset).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from pureebm_lightning import Purifier
from pureebm_lightning.bundled_digits import digits_images
from pureebm_lightning.cli import main as cli_main
from pureebm_lightning.images import to_signed_unit
from pureebm_lightning.purification import command
from pureebm_lightning.sources import open_source

REPO = Path(__file__).resolve().parents[1]
MEMORY_SCRIPT = """
import resource, sys, torch
from pureebm_lightning.purification.command import purify
purify(sys.argv[1:])
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "CUDA_BYTES", cuda)
"""


def make_checkpoint(work: Path) -> Path:
    """``pureebm fit`` for 2 steps on the digits, in ``work`` (writes runs/ebm_digits/checkpoints/last.ckpt)."""
    cwd = os.getcwd()
    os.chdir(work)
    try:
        cli_main(["fit", "--config", str(REPO / "configs/ebm_digits.yaml"), "--trainer.max_steps=2",
                  "--trainer.enable_progress_bar=false", "--model.init_args.bank_size=64",
                  "--model.init_args.sampler.init_args.n_steps=2"])
    finally:
        os.chdir(cwd)
    return work / "runs/ebm_digits/checkpoints/last.ckpt"


def make_image_folder(root: Path, size: int) -> Path:
    """``size`` 16x16 grey digit PNGs as <root>/<label>/<i>.png (the digits repeated as needed)."""
    images, labels = digits_images(16)
    pixels = ((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    for i in range(size):
        j = i % len(labels)
        (root / str(int(labels[j]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[j], mode="L").save(root / str(int(labels[j])) / f"{i}.png")
    return root


def purify_argv(data: Path, ckpt: Path, out: Path, args: argparse.Namespace, steps: int) -> list[str]:
    return ["--data", str(data), "--ckpt_path", str(ckpt), "--out", str(out), "--steps", str(steps),
            "--batch_size", str(args.batch_size), "--num_workers", "0", "--overwrite",
            "--trainer.accelerator", args.accelerator, "--trainer.devices", "1"]


def run_purify(argv: list[str]) -> None:
    """One in-process ``pureebm purify`` with its progress bar and messages silenced."""
    with quiet():
        command.purify(argv)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Progress bars and Lightning's info messages off (exceptions still propagate)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def run_sampler(purifier: Purifier, x: torch.Tensor, batch_size: int) -> None:
    for start in range(0, len(x), batch_size):
        purifier.sampler.sample(purifier.energy_net, x[start : start + batch_size], purifier.steps)
    if x.is_cuda:
        torch.cuda.synchronize()


def peak_memory(argv: list[str], threads: int) -> tuple[float, float]:
    """(peak RSS MiB, peak CUDA MiB) of ``pureebm purify argv`` in a fresh subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"purify subprocess failed:\n{done.stderr[-3000:]}")
    fields = next(line for line in done.stdout.splitlines() if line.startswith("MAXRSS_KB")).split()
    return int(fields[1]) / 1024, int(fields[3]) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150, help="T, Langevin steps per image")
    p.add_argument("--sizes", type=int, nargs=2, default=[256, 2048], help="dataset sizes: throughput on the first, memory on both")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory_steps", type=int, default=None, help="T of the memory runs (default: --steps)")
    p.add_argument("--ckpt", type=Path, default=None, help="EBM checkpoint (default: fit a 2-step digits EBM)")
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    with tempfile.TemporaryDirectory(prefix="purify_bench_") as tmp:
        work = Path(tmp)
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        with quiet():
            ckpt = args.ckpt.resolve() if args.ckpt else make_checkpoint(work)
        small, large = (make_image_folder(work / f"poisoned_{k}", n) for k, n in enumerate(args.sizes))
        source = open_source(small)
        x = to_signed_unit(torch.stack([source.load(i) for i in range(len(source))])).to(device)
        purifier = Purifier.from_checkpoint(ckpt, steps=args.steps)
        purifier.energy_net.to(device)
        argv = purify_argv(small, ckpt, work / "purified_small", args, args.steps)

        loops = {"purify": lambda: run_purify(argv), "sampler": lambda: run_sampler(purifier, x, args.batch_size)}
        for fn in loops.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {"purify": [], "sampler": []}
        names = list(loops)
        for i in range(args.repeats):
            for name in names[i % 2:] + names[: i % 2]:  # rotate the order: neither loop always runs first
                torch.set_num_threads(args.threads)
                t0 = time.perf_counter()
                loops[name]()
                times[name].append(time.perf_counter() - t0)

        mem_steps = args.memory_steps if args.memory_steps is not None else args.steps
        memory = [(n, *peak_memory(purify_argv(folder, ckpt, work / f"purified_mem_{k}", args, mem_steps), args.threads))
                  for k, (n, folder) in enumerate(zip(args.sizes, (small, large)))]

    rate = {name: len(x) / statistics.median(ts) for name, ts in times.items()}
    print(f"purify {len(x)} x 1x16x16 digits, T = {args.steps}, batch {args.batch_size}, {args.accelerator}, "
          f"{args.repeats} interleaved repeats, {args.threads} threads, load average {os.getloadavg()[0]:.2f}, "
          f"torch {torch.__version__}")
    print("  pureebm purify, whole command (checkpoint hash and load, header scan, Trainer start-up,")
    print(f"    read, purify, write atomically, manifest)  {rate['purify']:9.1f} images/s")
    print(f"  bare sampler loop (images in memory)         {rate['sampler']:9.1f} images/s")
    print(f"  purify / bare sampler: {rate['purify'] / rate['sampler']:.3f}  (target >= 0.9)")
    print(f"peak memory of `pureebm purify` (fresh subprocess each, T = {mem_steps}, OMP_NUM_THREADS={args.threads}):")
    for n, rss, cuda in memory:
        print(f"  {n:>7} images: peak RSS {rss:8.1f} MiB" + (f", peak CUDA {cuda:8.1f} MiB" if cuda else ""))
    (n_small, rss_small, _), (n_large, rss_large, _) = memory
    print(f"  peak RSS {n_large} / {n_small} images: {rss_large / rss_small:.3f}  (target ~1.0: memory does not grow with the dataset)")


if __name__ == "__main__":
    main()
