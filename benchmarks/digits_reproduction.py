"""The paper's claim on digits, end to end with one command: attacks, defenses, victims, results.md and plots.

    python benchmarks/digits_reproduction.py --out runs/reproduction      # about 37 minutes on 2 CPU cores
    python benchmarks/digits_reproduction.py --out /tmp/repro --quick     # about a minute: the pipeline, not the science

The paper's protocol (docs/method.md), scaled to scikit-learn's digits and two CPU cores (every scale-down is a flag):
1. Split: the classifier's 359 test images; of the other 1,438, 20 % (288) are held out (`pureebm poison
   --holdout 0.2`, the same draw for every attack) and 1,150 are the victim's training split.
2. EBMs (configs/ebm_digits.yaml): "clean" trains on the 288 held-out images, disjoint from the victim's;
   "poisoned" trains on one attack's poisoned victim split itself (default: Blended, first target class).
3. Attacks (`pureebm poison`): BadNets, Blended and Narcissus once per target class; Gradient Matching once per
   target (distinct test images, intended class drawn), each with its own poisons and victim.
4. Defenses of the training set: none; JPEG; PureEBM at every T of the sweep. PureEBM runs one chain per
   distinct image (an image shared by several sets is purified once) and keeps a snapshot at each T: the
   same Psi_T as `pureebm purify --steps T` (the sampler, eps, tau, clamp and 8-bit rounding of Purifier).
   The poisoned EBM purifies its own split at every T (its gap to the clean EBM).
5. Victims: the digits classifier recipe (configs/classifier_digits.yaml) trained on each defended set; natural
   accuracy, target-class accuracy, poison success, and its floor (the attack on a model trained on the clean
   split: no training-set defense can remove it).
6. Plug-ins: registered attacks (--plugin_attacks, default WaNet) and defenses (--plugin_defenses, default Friendly
   Noise) measured beside the table, in their own section of results.md and plugins.json.
7. Writes results.md (tables in the paper's shape, mean and spread over target classes, each target of the
   reproduction checked), results.json, results.csv, victims.jsonl, timings.json, sweep.png, chain_curves.png and
   pairs.png into --out.

An interrupted run resumes: poisoned folders, EBM checkpoints, purified images and every victim's result are
kept under --out, named by what made them, and reused by the same command (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduction_plugins
from attack_success import ROOT, poison, working_dir
from attack_success import train_victim as train_recipe
from lightning.pytorch.utilities import disable_possible_user_warnings
from tqdm import tqdm

from pureebm_lightning.cli import make_cli
from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.defenses.jpeg import JPEGPurifier
from pureebm_lightning.defenses.pureebm import Purifier, file_sha256
from pureebm_lightning.images import chw_to_pil, to_signed_unit, to_uint8
from pureebm_lightning.poisoning.clean_data import load_clean_data
from pureebm_lightning.sources import NUMPY_DATA, NUMPY_LABELS, open_source

CONFIGS = ROOT / "configs"
TRIGGERED = ("badnets", "blended", "narcissus")


# ----------------------------------------------------------------------------------------------- settings
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/reproduction"))
    p.add_argument("--quick", action="store_true", help="one target class, tiny EBMs, T in {0, 10, 20}, 2 GM targets, "
                   "5-epoch victims: checks the pipeline in a few minutes; its numbers say nothing about the method")
    p.add_argument("--fresh", action="store_true", help="delete --out (a folder this script wrote) first instead of resuming")
    p.add_argument("--target_classes", type=int, nargs="+", default=[0, 3, 7],
                   help="one scenario per class for each triggered attack (poison seed = its position in this list, victim "
                   "seed 100 + position: seed and class vary together)")
    p.add_argument("--badnets_budget", type=float, default=0.01)
    p.add_argument("--blended_budget", type=float, default=0.01)
    p.add_argument("--narcissus_budget", type=float, default=0.1, help="0.1 = every target-class image on digits")
    p.add_argument("--narcissus_epsilon", type=int, default=16)
    p.add_argument("--narcissus_steps", type=int, default=2000)
    p.add_argument("--narcissus_lr", type=float, default=0.05)
    p.add_argument("--gm_targets", type=int, default=30, help="Gradient Matching scenarios (one target test image each)")
    p.add_argument("--gm_budget", type=float, default=0.01)
    p.add_argument("--gm_epsilon", type=int, default=16)
    p.add_argument("--gm_steps", type=int, default=240)
    p.add_argument("--gm_restarts", type=int, default=1)
    p.add_argument("--surrogate_epochs", type=int, default=30, help="epochs of each attacker's surrogate (Narcissus, GM)")
    p.add_argument("--gm_defenses", choices=["auto", "always"], default="auto",
                   help="auto: JPEG and PureEBM victims for Gradient Matching only when it succeeds on some target undefended")
    p.add_argument("--sweep", type=int, nargs="+", default=[0, 25, 50, 100, 150, 300, 1000], help="PureEBM steps T")
    p.add_argument("--T", type=int, default=150, help="the T of the main table (must be in --sweep)")
    p.add_argument("--sweep_scenarios", type=int, default=None,
                   help="victims for T off the main table on this many target classes only (default: all)")
    p.add_argument("--curve_every", type=int, default=25, help="energy and L2 recorded every this many steps")
    p.add_argument("--ebm_steps", type=int, default=1000, help="training iterations of each EBM (batch 64, K = 100)")
    p.add_argument("--poisoned_ebm_attack", choices=TRIGGERED, default="blended")
    p.add_argument("--jpeg_quality", type=int, default=75)
    p.add_argument("--victim_epochs", type=int, default=30, help="digits recipe: 30 (learning rate x0.1 at 2/3 and 13/15)")
    p.add_argument("--batch_size", type=int, default=256, help="images per purification batch")
    p.add_argument("--plugin_attacks", nargs="*", default=["wanet"],
                   help="registered attacks measured beside the table (one scenario per target class, the signature's defaults)")
    p.add_argument("--plugin_attack_args", nargs="*", default=["wanet:--strength=1.0"],
                   help="NAME:--option=value: an option for a plug-in attack (default: WaNet's warp at s = 1, since at the "
                   "published s = 0.5 a 16x16 digit moves by a quarter pixel and one measured victim reached 59 %%)")
    p.add_argument("--plugin_sweep", type=int, nargs="*", default=None,
                   help="the T the plug-in attacks are purified at (default: --sweep; each T adds a victim per scenario)")
    p.add_argument("--plugin_defenses", nargs="*", default=["friendly_noise"],
                   help="registered defenses (their defaults) measured against every triggered attack that works undefended")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.target_classes, args.badnets_budget, args.blended_budget = args.target_classes[:1], 0.1, 0.1
        args.narcissus_steps, args.gm_targets, args.gm_steps, args.gm_defenses = 100, 2, 20, "always"
        args.surrogate_epochs = 5
        args.sweep, args.T, args.curve_every, args.ebm_steps, args.victim_epochs = [0, 10, 20], 10, 5, 12, 5
    args.plugin_sweep = sorted(set(args.sweep if args.plugin_sweep is None else args.plugin_sweep) | {0})
    if args.T not in args.sweep:
        p.error(f"--T {args.T} must be one of --sweep {args.sweep}")
    args.sweep = sorted(set(args.sweep))
    return args


# ----------------------------------------------------------------------------------------------- images
def load_set(folder: Path) -> tuple[torch.Tensor, list[int], list[str]]:
    """A training set's uint8 images (N, C, H, W), labels and ids (file stems)."""
    source = open_source(folder)
    images = torch.stack([source.load(i) for i in range(len(source))])
    return images, source.labels, [Path(k).stem for k in source.keys]


class DistinctImages:
    """Every distinct image of all sets once, so that an image shared by several sets is purified once."""

    def __init__(self) -> None:
        self.rows: dict[bytes, int] = {}
        self.images: list[torch.Tensor] = []
        self.originals: list[torch.Tensor] = []  # the clean image with the same id (itself when unpoisoned)

    def add(self, images: torch.Tensor, originals: torch.Tensor) -> list[int]:
        out = []
        for image, original in zip(images, originals):
            key = image.numpy().tobytes()
            if key not in self.rows:
                self.rows[key] = len(self.images)
                self.images.append(image)
                self.originals.append(original)
            out.append(self.rows[key])
        return out

    def __len__(self) -> int:
        return len(self.images)


def purify_distinct(purifier: Purifier, images: torch.Tensor, originals: torch.Tensor, snapshots: list[int],
                    curve: list[int], batch_size: int, label: str, first_index: int = 0) -> dict:
    """Psi_T of every image for each T in ``snapshots`` (uint8), and per image the energy, the L2 distance from
    the start and from the clean original at each step of ``curve`` (the paper's Figure 3, per image).

    The chain is :meth:`Purifier.walk` (the steps of ``purifier`` bound the snapshots), its noise seeded per batch
    by the batch's first row (+ ``first_index``), so each snapshot equals ``Purifier(steps=T)`` on the same
    batches (tested)."""
    out = {"snapshots": {t: torch.empty_like(images) for t in snapshots}, "curve": curve,
           "energy": torch.empty(len(images), len(curve)), "l2_start": torch.empty(len(images), len(curve)),
           "l2_clean": torch.empty(len(images), len(curve))}
    bar = tqdm(total=len(images), desc=f"purify {label} (T up to {max(snapshots + curve)})", unit="img", dynamic_ncols=True)
    for first in range(0, len(images), batch_size):
        rows = slice(first, first + batch_size)
        x0, clean = to_signed_unit(images[rows]), to_signed_unit(originals[rows])
        for step, x in purifier.walk(images[rows], first_index + first, snapshots + curve):
            if step in out["snapshots"]:
                out["snapshots"][step][rows] = to_uint8(x.clone())
            if step in curve:
                k = curve.index(step)
                with torch.no_grad():
                    out["energy"][rows, k] = purifier.energy_net(x).float()
                out["l2_start"][rows, k] = (x - x0).flatten(1).norm(dim=1)
                out["l2_clean"][rows, k] = (x - clean).flatten(1).norm(dim=1)
        bar.update(len(x0))
    bar.close()
    return out


def jpeg_distinct(images: torch.Tensor, quality: int) -> torch.Tensor:
    return torch.cat([JPEGPurifier(quality)(images[i : i + 512]) for i in range(0, len(images), 512)])


def digest(*parts) -> str:
    """A short hash of settings and tensors: names the caches, so changed settings never reuse old results."""
    h = hashlib.sha1()
    for part in parts:
        h.update(part.numpy().tobytes() if isinstance(part, torch.Tensor) else repr(part).encode())
    return h.hexdigest()[:10]


def write_defended(folder: Path, images: torch.Tensor, labels: list[int], dest: Path, settings: dict) -> Path:
    """``folder``'s training set replaced by ``images`` as a NumPy pair, its test/, targets/, trigger and
    poison.json beside it (linked), the layout `pureebm purify` reads for NumPy sets; ``settings`` (what made
    the images) go to defense.json."""
    if (dest / NUMPY_LABELS).is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    array = images.permute(0, 2, 3, 1).numpy()
    np.save(tmp / NUMPY_DATA, array[..., 0] if array.shape[-1] == 1 else array)
    for entry in open_source(folder).other_entries:
        (tmp / entry).symlink_to((folder / entry).resolve())
    (tmp / "defense.json").write_text(json.dumps({"source": str(folder), **settings}, indent=1))
    np.save(tmp / NUMPY_LABELS, np.asarray(labels, dtype=np.int64))  # last: its presence marks a finished set
    tmp.rename(dest)
    return dest


# ----------------------------------------------------------------------------------------------- training
def train_ebm(name: str, root: Path, out: Path, steps: int, images: int) -> Path:
    """configs/ebm_digits.yaml on the images under ``root/train`` for ``steps`` iterations; its last checkpoint.
    The run folder is named by the set and ``steps``; an interrupted run resumes from its last checkpoint."""
    workdir = out / "ebm" / f"{name}_{steps}steps"
    ckpt = workdir / "runs/ebm_digits/checkpoints/last.ckpt"
    if (workdir / "done").is_file():
        return ckpt
    epochs = max(1, math.ceil(steps / max(1, images // 64)))
    milestones = [max(1, round(0.75 * epochs)), max(1, round(0.9 * epochs))]
    print(f"EBM {name}: {images} images, {epochs} epochs ({steps} iterations of batch 64)", flush=True)
    with working_dir(workdir):
        cli = make_cli(["--config", str(CONFIGS / "ebm_digits.yaml"), "--data", "pureebm_lightning.data.ImageFolderDataModule",
                        "--data.root", str(root), "--data.grayscale", "true", "--data.batch_size", "64",
                        "--data.num_workers", "0", f"--trainer.max_epochs={epochs}", f"--trainer.max_steps={steps}",
                        f"--model.init_args.lr_scheduler.init_args.milestones={milestones}",
                        "--trainer.enable_model_summary=false"], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path="last" if ckpt.is_file() else None)
    (workdir / "done").write_text(f"{cli.trainer.global_step} iterations on {root}\n")
    return ckpt


def train_victim(folder: Path, workdir: Path, seed: int, epochs: int):
    """The digits classifier recipe on ``folder`` for ``epochs`` (the schedule scaled with them), without
    per-epoch validation (the test split is only used at the end)."""
    milestones = [max(1, round(epochs * 20 / 30)), max(1, round(epochs * 26 / 30))]
    model, _ = train_recipe(folder, workdir, seed, f"--trainer.max_epochs={epochs}", "--trainer.limit_val_batches=0",
                            f"--model.init_args.lr_scheduler.init_args.milestones={milestones}")
    return model.eval()


def predict(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])


def evaluate(model, folder: Path, spec_folder: Path | None = None, magnifications: tuple[float, ...] = (1.0,)) -> dict:
    """Natural accuracy, target-class accuracy and poison success (per magnification) of ``model`` on ``folder``'s
    clean test split and the poisoned tests of ``spec_folder``'s attack, built by PoisonedSetDataModule as
    `pureebm test` builds them (a clean-trained model tested against an attack gives its floor)."""
    dm = PoisonedSetDataModule(str(folder), crop_padding=0, hflip=False,
                               poison_spec=str(spec_folder / "poison.json") if spec_folder else None)
    dm.setup("test")

    def stacked(dataset):
        items = [dataset[i] for i in range(len(dataset))]
        return to_signed_unit(torch.stack([item[0] for item in items])), torch.tensor([item[1] for item in items])

    images, labels = stacked(dm.test_set)
    right = predict(model, images) == labels
    result = {"natural": right.float().mean().item()}
    if dm.poison is None:
        return result
    poisoned, wanted = stacked(dm.poison_test_set)
    if dm.poison.kind == "triggered":
        result["target_class_accuracy"] = right[labels == dm.poison.target_class].float().mean().item()
        for m in magnifications:
            result[f"success_x{m:g}"] = (predict(model, dm.add_trigger(poisoned, m)) == wanted).float().mean().item()
    else:
        result["success_x1"] = (predict(model, poisoned) == wanted).float().mean().item()
        with torch.no_grad():
            result["p_intended"] = torch.softmax(model(poisoned[:1]), 1)[0, wanted[0]].item()
    return result


class Victims:
    """Victims by key (the training set's folder name, which hashes what made it, and the seed): each result is
    appended to victims.jsonl as it is measured and each model kept in its own folder, so a rerun skips them."""

    def __init__(self, out: Path, epochs: int) -> None:
        self.path, self.epochs, self.out = out / "victims.jsonl", epochs, out
        self.done = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                self.done[row["key"]] = row

    def model(self, key: str, folder: Path, seed: int):
        """The victim trained on ``folder`` with ``seed``: loaded if a previous run finished it."""
        from pureebm_lightning.classifier_module import ClassifierModule

        workdir = self.out / "victims" / digest(key, seed, self.epochs)
        ckpt = workdir / "runs/classifier_digits_poisoned/checkpoints/last.ckpt"
        if (workdir / "done").is_file():
            return ClassifierModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
        shutil.rmtree(workdir, ignore_errors=True)
        model = train_victim(folder, workdir, seed, self.epochs)
        (workdir / "done").write_text(f"{key} seed {seed}\n")
        return model

    def run(self, key: str, folder: Path, seed: int, evaluate_with, **facts) -> dict:
        full = f"{key}|seed{seed}|epochs{self.epochs}"
        if full not in self.done:
            start = time.time()
            model = self.model(key, folder, seed)
            row = {"key": full, **facts, "victim_seed": seed, **evaluate_with(model), "seconds": round(time.time() - start, 1)}
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.done[full] = row
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "key"), flush=True)
        return self.done[full]


class Stopwatch:
    """Seconds per stage, this invocation and summed over every invocation into --out (timings.json), so a
    resumed run still reports what the whole reproduction cost."""

    def __init__(self, out: Path) -> None:
        self.path, self.start, self.now = out / "timings.json", time.time(), {}
        self.total = json.loads(self.path.read_text())["total_s"] if self.path.is_file() else {}

    def lap(self, stage: str) -> None:
        seconds = round(time.time() - self.start - sum(self.now.values()), 1)
        self.now[stage] = seconds
        self.total[stage] = round(self.total.get(stage, 0.0) + seconds, 1)
        self.path.write_text(json.dumps({"this_invocation_s": self.now, "total_s": self.total}, indent=1))


# ----------------------------------------------------------------------------------------------- the run
def prepare_out(out: Path, fresh: bool) -> None:
    if fresh and out.exists():
        if any(out.iterdir()) and not ((out / "timings.json").is_file() or (out / "data").is_dir()):
            raise SystemExit(f"--fresh: {out} does not look like a folder this script wrote (no timings.json or data/); "
                             "delete it yourself or pick another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> dict:
    out = args.out.resolve()
    prepare_out(out, args.fresh)
    clock = Stopwatch(out)

    # 1. split and poisons
    print("Poisons: `pureebm poison` per attack and scenario (reused when --out already holds them)", flush=True)
    clean_folder, clean_spec = poison(out / "data", "clean", "--attack", "none")
    holdout = out / "data" / "ebm_holdout"
    if not (holdout / "done").is_file():
        pool = load_clean_data("digits", clean_spec["holdout"], clean_spec["split_seed"], 16).pool
        for image, label, index in zip(pool.images, pool.labels, pool.ids):
            (holdout / "train" / str(int(label))).mkdir(parents=True, exist_ok=True)
            chw_to_pil(image).save(holdout / "train" / str(int(label)) / f"{int(index)}.png")
        (holdout / "done").write_text("")
    holdout_count = len(clean_spec["holdout_ids"])
    jobs = []  # (attack, k, name, flags)
    flags = {"badnets": ["--budget", str(args.badnets_budget)], "blended": ["--budget", str(args.blended_budget)],
             "narcissus": ["--budget", str(args.narcissus_budget), "--epsilon", str(args.narcissus_epsilon),
                           "--steps", str(args.narcissus_steps), "--lr", str(args.narcissus_lr), "--surrogate_epochs", str(args.surrogate_epochs)]}
    for attack in TRIGGERED:
        for k, target in enumerate(args.target_classes):
            jobs.append((attack, k, f"{attack}_c{target}", ["--attack", attack, "--target_class", str(target), "--seed", str(k), *flags[attack]]))
    test_source = open_source(clean_folder / "test")
    test_ids = [int(Path(key).stem) for key in test_source.keys]
    if args.gm_targets > len(test_ids):
        raise SystemExit(f"--gm_targets {args.gm_targets}: the test split has only {len(test_ids)} images")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(test_ids))
    for j in range(args.gm_targets):  # distinct target images, an intended class drawn for each
        i = int(order[j])
        intended = (test_source.labels[i] + 1 + int(rng.integers(9))) % 10
        jobs.append(("gradient_matching", j, f"gradient_matching_t{j}", [
            "--attack", "gradient_matching", "--budget", str(args.gm_budget), "--epsilon", str(args.gm_epsilon), "--steps",
            str(args.gm_steps), "--restarts", str(args.gm_restarts), "--seed", str(j), "--target_id", str(test_ids[i]),
            "--intended_class", str(intended), "--surrogate_epochs", str(args.surrogate_epochs)]))
    scenarios = []  # (attack, k, folder, spec)
    for attack, k, name, job_flags in tqdm(jobs, desc="poisons", unit="set", dynamic_ncols=True):
        folder, spec = poison(out / "data", name, *job_flags)
        scenarios.append((attack, k, folder, spec))
    clock.lap("poisons")

    # 2. EBMs
    first_poisoned = next(s for s in scenarios if s[0] == args.poisoned_ebm_attack)
    clean_ckpt = train_ebm("clean_holdout", holdout, out, args.ebm_steps, holdout_count)
    poisoned_ckpt = train_ebm(f"poisoned_{first_poisoned[2].name}", first_poisoned[2], out, args.ebm_steps,
                              len(open_source(first_poisoned[2]).keys))
    clock.lap("ebms")

    # 3. defenses: every distinct training image purified once
    clean_images, clean_labels, clean_ids = load_set(clean_folder)
    original_of = dict(zip(clean_ids, clean_images))
    sets = {"clean": (clean_folder, clean_images, clean_labels, clean_ids)}
    for _attack, _k, folder, _ in scenarios:
        sets[folder.name] = (folder, *load_set(folder))
    store, rows_of = DistinctImages(), {}
    for name, (_folder, images, _labels, ids) in sets.items():  # GM sets need the main T only: their poisons go last
        if not name.startswith("gradient_matching"):
            rows_of[name] = store.add(images, torch.stack([original_of[i] for i in ids]))
    sweep_store = len(store)
    for name, (_folder, images, _labels, ids) in sets.items():
        if name.startswith("gradient_matching"):
            rows_of[name] = store.add(images, torch.stack([original_of[i] for i in ids]))
    all_images, all_originals = torch.stack(store.images), torch.stack(store.originals)
    clean_sha, poisoned_sha = file_sha256(clean_ckpt), file_sha256(poisoned_ckpt)
    key = digest(clean_sha, args.sweep, args.T, args.curve_every, args.batch_size, args.jpeg_quality, sweep_store, all_images)
    cache = out / "purified" / f"clean_ebm_{key}.pt"
    if cache.is_file():
        purified = torch.load(cache, weights_only=True)
    else:
        purifier = Purifier.from_checkpoint(clean_ckpt, steps=max(args.sweep), seed=0)
        curve = list(range(0, max(args.sweep) + 1, args.curve_every))
        purified = purify_distinct(purifier, all_images[:sweep_store], all_originals[:sweep_store], args.sweep, curve,
                                   args.batch_size, "sweep sets")
        rest = purify_distinct(purifier, all_images[sweep_store:], all_originals[sweep_store:], [args.T], [0, args.T],
                               args.batch_size, "Gradient Matching poisons", first_index=sweep_store) if len(store) > sweep_store else None
        purified["jpeg"] = jpeg_distinct(all_images, args.jpeg_quality)
        purified["gm_T"] = rest["snapshots"][args.T] if rest else torch.empty(0, *all_images.shape[1:], dtype=torch.uint8)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(purified, cache)
    name0 = first_poisoned[2].name
    poisoned_key = digest(poisoned_sha, name0, args.sweep, args.batch_size, sets[name0][1])
    poisoned_cache = out / "purified" / f"poisoned_ebm_{poisoned_key}.pt"
    if poisoned_cache.is_file():
        by_poisoned_ebm = torch.load(poisoned_cache, weights_only=True)
    else:
        images0 = sets[name0][1]
        by_poisoned_ebm = purify_distinct(Purifier.from_checkpoint(poisoned_ckpt, steps=max(args.sweep), seed=0), images0,
                                          torch.stack([original_of[i] for i in sets[name0][3]]), args.sweep, [0],
                                          args.batch_size, "its split with the poisoned EBM")["snapshots"]
        torch.save(by_poisoned_ebm, poisoned_cache)
    clock.lap("purification")

    def defended(name: str, defense: str) -> Path:
        """The training set ``name`` after ``defense``, written once into defended/<set>/<defense>-<what made it>."""
        folder, images, labels, ids = sets[name]
        if defense == "none":
            return folder
        rows = torch.tensor(rows_of[name])
        if defense == "jpeg":
            new, made = purified["jpeg"][rows], {"defense": "jpeg", "jpeg_quality": args.jpeg_quality, "key": key}
        elif defense.startswith("pureebm_poisoned"):  # pureebm_poisoned (at T) or pureebm_poisoned_T<t>
            t = int(defense.rsplit("_T", 1)[1]) if "_T" in defense else args.T
            new, made = by_poisoned_ebm[t], {"defense": "pureebm", "checkpoint": str(poisoned_ckpt), "checkpoint_sha256": poisoned_sha,
                                             "steps": t, "key": poisoned_key}
        else:
            t = int(defense[1:])
            if name.startswith("gradient_matching"):  # its clean images were purified with the sweep sets
                new = torch.stack([purified["snapshots"][t][r] if r < sweep_store else purified["gm_T"][r - sweep_store] for r in rows])
            else:
                new = purified["snapshots"][t][rows]
            made = {"defense": "pureebm", "checkpoint": str(clean_ckpt), "checkpoint_sha256": clean_sha, "steps": t, "key": key}
        return write_defended(folder, new, labels, out / "defended" / name / f"{defense}-{made['key']}", made)

    def victim(set_name: str, defended_by: str, seed: int, evaluate_with, **facts) -> dict:
        folder = defended(set_name, defended_by)
        return victims.run(f"{set_name}|{defended_by}|{folder.name}", folder, seed, evaluate_with, **facts)

    # 4. victims
    victims = Victims(out, args.victim_epochs)
    pure_t = [f"T{t}" for t in args.sweep if t > 0]
    sweep_k = range(len(args.target_classes) if args.sweep_scenarios is None else args.sweep_scenarios)
    results, clean_models = [], {}
    for k in range(len(args.target_classes)):  # the floor models: one per victim seed, trained on the clean split
        results.append(victim("clean", "none", 100 + k, lambda m: evaluate(m, clean_folder), attack="clean", scenario=k,
                              defense="none", T=0))
        clean_models[k] = victims.model(f"clean|none|{clean_folder.name}", clean_folder, 100 + k)
    gm_seed = 100  # every Gradient Matching victim trains with the first seed: targets vary, the recipe does not

    def attack_victims(attack: str, k: int, folder: Path, spec: dict, defenses: list[str]) -> None:
        seed = gm_seed if attack == "gradient_matching" else 100 + k
        mags = (1.0, 3.0) if attack == "narcissus" else (1.0,)
        floor = evaluate(clean_models[0 if attack == "gradient_matching" else k], clean_folder, folder, mags)
        target = spec["targets"][0]["id"] if attack == "gradient_matching" else spec["target_class"]
        for defense in defenses:
            t = 0 if defense in ("none", "jpeg") else args.T if defense == "pureebm_poisoned" else int(defense.rsplit("T", 1)[1])
            row = victim(folder.name, defense, seed, lambda m: evaluate(m, folder, folder, mags), attack=attack, scenario=k,
                         target=target, defense=defense, T=t)
            results.append({**row, **{f"floor_{name}": v for name, v in floor.items()}})

    for attack, k, folder, spec in scenarios:
        if attack == "gradient_matching":
            defenses = ["none"] + (["jpeg", f"T{args.T}"] if args.gm_defenses == "always" else [])
        else:
            defenses = ["none", "jpeg"] + [d for d in pure_t if d == f"T{args.T}" or k in sweep_k]
            if folder.name == name0:  # the EBM trained on this very split, at every T of the sweep
                defenses += ["pureebm_poisoned"] + [f"pureebm_poisoned_T{t}" for t in args.sweep if t > 0 and t != args.T]
        attack_victims(attack, k, folder, spec, defenses)
    if args.gm_defenses == "auto":  # defended Gradient Matching victims only when the attack works undefended
        gm = [r for r in results if r["attack"] == "gradient_matching"]
        if any(r["success_x1"] > r["floor_success_x1"] for r in gm):
            for attack, k, folder, spec in [s for s in scenarios if s[0] == "gradient_matching"]:
                attack_victims(attack, k, folder, spec, ["jpeg", f"T{args.T}"])
    clock.lap("victims")

    # 5. plug-ins, beside the table: its sets, purifications and victims are untouched
    plugin_rows, works = plugin_stage(args, out, clean_folder, clean_models, clean_ckpt, clean_sha, original_of, victims,
                                      results, scenarios)
    clock.lap("plugins")

    # 6. report
    from reproduction_report import write_report

    facts = {"holdout_images": holdout_count, "victim_images": len(clean_labels), "test_images": len(test_ids),
             "distinct_images": len(store), "argv": args.argv, "timings": {"this_invocation_s": clock.now, "total_s": clock.total},
             "ebm_checkpoints": {"clean": str(clean_ckpt), "poisoned": str(poisoned_ckpt)}}
    summary = write_report(out, args, results, purified, store, rows_of, sweep_store, name0, facts)
    reproduction_plugins.write(out, plugin_rows, args, works)
    clock.lap("report")
    summary["facts"]["timings"] = {"this_invocation_s": clock.now, "total_s": clock.total}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"Done in {sum(clock.now.values()) / 60:.1f} min (all invocations into {out}: {sum(clock.total.values()) / 60:.1f} min): "
          f"{out / 'results.md'}", flush=True)
    return summary


def plugin_stage(args, out: Path, clean_folder: Path, clean_models: dict, clean_ckpt: Path, clean_sha: str, original_of: dict,
                 victims: "Victims", results: list[dict], scenarios: list) -> tuple[list[dict], dict[str, bool]]:
    """Plug-in attacks (per target class, victims for none, JPEG and every T) and plug-in defenses (against every
    triggered attack that works undefended); rows with their floors, and which attacks work."""
    rows, plugin_scenarios = [], []
    for attack in args.plugin_attacks:
        for k, target in enumerate(args.target_classes):
            folder, spec = poison(out / "data", f"{attack}_c{target}", "--attack", attack, "--target_class", str(target),
                                  "--seed", str(k), *reproduction_plugins.attack_flags(args, attack))
            plugin_scenarios.append((attack, k, folder, spec))
            images, labels, ids = load_set(folder)
            key = digest(clean_sha, args.plugin_sweep, args.batch_size, args.jpeg_quality, images)
            cache = out / "purified" / f"plugin_{folder.name}_{key}.pt"
            if cache.is_file():
                snaps = torch.load(cache, weights_only=True)
            else:
                snaps = purify_distinct(Purifier.from_checkpoint(clean_ckpt, steps=max(args.plugin_sweep), seed=0), images,
                                        torch.stack([original_of[i] for i in ids]), args.plugin_sweep, [0], args.batch_size,
                                        folder.name)["snapshots"]
                snaps["jpeg"] = jpeg_distinct(images, args.jpeg_quality)
                torch.save(snaps, cache)
            floor = evaluate(clean_models[k], clean_folder, folder)
            for defense in ["none", "jpeg", *[f"T{t}" for t in args.plugin_sweep if t > 0]]:
                if defense == "none":
                    defended = folder
                else:
                    new = snaps["jpeg"] if defense == "jpeg" else snaps[int(defense[1:])]
                    made = {"defense": "jpeg", "jpeg_quality": args.jpeg_quality} if defense == "jpeg" else \
                        {"defense": "pureebm", "checkpoint_sha256": clean_sha, "steps": int(defense[1:])}
                    defended = write_defended(folder, new, labels, out / "defended" / folder.name / f"{defense}-{key}", made)
                row = victims.run(f"{folder.name}|{defense}|{defended.name}", defended, 100 + k,
                                  lambda m, folder=folder: evaluate(m, folder, folder), attack=attack, scenario=k,
                                  target=target, defense=defense, T=0 if defense in ("none", "jpeg") else int(defense[1:]))
                rows.append({**row, "stage": "plugin_attack", **{f"floor_{n}": v for n, v in floor.items()}})
    triggered = [s for s in scenarios if s[0] != "gradient_matching"] + plugin_scenarios
    everything = results + rows
    works = {a: mean_of([r["success_x1"] for r in everything if r["attack"] == a and r["defense"] == "none"]) >= 0.8
             for a in {s[0] for s in triggered}}
    for name in args.plugin_defenses:
        for attack, k, folder, _ in triggered:
            if not works[attack]:
                continue
            mags = (1.0, 3.0) if attack == "narcissus" else (1.0,)
            floor = evaluate(clean_models[k], clean_folder, folder, mags)
            defended, settings = reproduction_plugins.defended_by_plugin(name, folder, out, args.batch_size)
            row = victims.run(f"{folder.name}|{name}|{defended.name}", defended, 100 + k,
                              lambda m, folder=folder, mags=mags: evaluate(m, folder, folder, mags), attack=attack,
                              scenario=k, defense=name, T=0, defense_settings=settings)
            rows.append({**row, "stage": "plugin_defense", **{f"floor_{n}": v for n, v in floor.items()}})
            for r in everything:  # the references of its table: the same attack undefended and at the main T
                if r["attack"] == attack and r.get("scenario") == k and r["defense"] in ("none", f"T{args.T}") and r not in rows:
                    rows.append({**r, "stage": r.get("stage", "reference")})
    return rows, works


def mean_of(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    disable_possible_user_warnings()
    run(parse())
