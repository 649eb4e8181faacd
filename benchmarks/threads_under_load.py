"""Thread and worker counts on an idle and on a shared machine: `pureebm fit` and `pureebm purify` on digits.

    python benchmarks/threads_under_load.py --out runs/threads          # about 10 minutes on 2 cores
    python benchmarks/threads_under_load.py --out /tmp/threads --quick  # seconds: checks the script

Each row is one `pureebm` command in a fresh process (the thread count is fixed at start), timed wall-clock and
in CPU seconds (the command's and its workers'). "Loaded" runs the same command beside ``--load`` processes that
spin on a core each (other users' jobs). The thread setting is `--threads N`, or none (the default policy: one
thread per core idle when the run starts). Writes threads.md and threads.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ebm_digits.yaml"
SPIN = "import os\nwhile True:\n    pass\n"


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--load", type=int, default=4, help="spinning processes beside the loaded runs")
    parser.add_argument("--fit_steps", type=int, default=6)
    parser.add_argument("--purify_images", type=int, default=200)
    parser.add_argument("--purify_steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 EBM steps, 20 images, load 1: checks the script only")
    args = parser.parse_args()
    if args.quick:
        args.load, args.fit_steps, args.purify_images, args.purify_steps = 1, 2, 20, 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    pureebm = [sys.executable, "-m", "pureebm_lightning"]
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    fit = [*pureebm, "fit", "--config", str(CONFIG), f"--trainer.max_steps={args.fit_steps}", "--trainer.limit_val_batches=0", *quiet]

    # the purify input and EBM: a digits folder from `pureebm poison --attack none`, the EBM from one short fit
    data = out / "digits"
    if not (data / "train").is_dir():
        subprocess.run([*pureebm, "poison", "--attack", "none", "--out", str(data), "--progress", "false"], check=True,
                       cwd=out, env=env, stdout=subprocess.DEVNULL)
    ckpt = out / "runs/ebm_digits/checkpoints/last.ckpt"
    if not ckpt.is_file():
        subprocess.run([*fit[:-3], "--trainer.max_steps=2", *quiet], check=True, cwd=out, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    subset = out / "purify_input"
    if not subset.is_dir():
        for path in sorted((data / "train").rglob("*.png"))[: args.purify_images]:
            target = subset / path.relative_to(data / "train")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())

    def purify(extra: list[str]) -> list[str]:
        return [*pureebm, "purify", "--data", str(subset), "--ckpt_path", str(ckpt), "--out", str(out / "purified"),
                "--overwrite", f"--steps={args.purify_steps}", "--batch_size=64", *quiet, *extra]

    cases = [("fit", "--threads 1", fit + ["--threads=1"]), ("fit", "--threads 2", fit + ["--threads=2"]),
             ("fit", "default", fit),
             ("purify", "--threads 1, 0 workers", purify(["--threads=1", "--num_workers=0"])),
             ("purify", "--threads 2, 0 workers", purify(["--threads=2", "--num_workers=0"])),
             ("purify", "--threads 2, 2 workers", purify(["--threads=2", "--num_workers=2"])),
             ("purify", "default", purify([]))]
    rows = []
    for load in (0, args.load):
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(load)]
        try:
            time.sleep(1.0 if load else 0.0)
            for command, setting, argv in cases:
                wall, cpu = run(argv, out, env)
                rows.append({"command": command, "setting": setting, "load": load, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
                print(rows[-1], flush=True)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    idle = {(r["command"], r["setting"]): r for r in rows if r["load"] == 0}
    lines = [f"Measured on {os.cpu_count()} cores; `loaded`: beside {args.load} processes spinning on a core each. "
             f"fit: {args.fit_steps} EBM steps of configs/ebm_digits.yaml; purify: {args.purify_images} digits at "
             f"T = {args.purify_steps}. Whole commands, start-up included.", "",
             "| command | threads / workers | idle wall s | idle CPU s | loaded wall s | loaded CPU s | loaded / idle wall |",
             "|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["load"] == args.load):
        i = idle[(r["command"], r["setting"])]
        lines.append(f"| {r['command']} | {r['setting']} | {i['wall_s']} | {i['cpu_s']} | {r['wall_s']} | {r['cpu_s']} | "
                     f"{r['wall_s'] / i['wall_s']:.2f} |")
    (out / "threads.md").write_text("\n".join(lines) + "\n")
    (out / "threads.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
