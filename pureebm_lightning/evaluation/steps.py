"""The evaluation's steps as the package's own commands run them: `pureebm poison`, `pureebm fit` of an EBM and of a victim."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path

from pureebm_lightning.evaluation.settings import EBMRecipe, VictimRecipe, config_path


@contextlib.contextmanager
def working_dir(path: Path):
    """Run inside ``path`` (created), so that a config's relative run folders land there."""
    path.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def poison(data: Path, name: str, *flags: str) -> tuple[Path, dict]:
    """`pureebm poison` into data/<name>-<hash of the flags>; a folder made with the same flags is reused."""
    from pureebm_lightning.poisoning.command import poison as pureebm_poison

    out = data / f"{name}-{hashlib.sha1(' '.join(flags).encode()).hexdigest()[:8]}"
    if not (out / "poison.json").is_file():
        pureebm_poison(["--out", str(out), "--progress", "false", "--overwrite", *flags])
    return out, json.loads((out / "poison.json").read_text())


def last_checkpoint(workdir: Path) -> Path | None:
    """The ``last.ckpt`` a run under ``workdir`` saved (wherever its config puts its checkpoints), or None."""
    found = sorted(workdir.glob("**/checkpoints/last.ckpt"))
    return found[0] if found else None


def train_ebm(recipe: EBMRecipe, name: str, root: Path, out: Path, images: int, grayscale: bool, train_dir: str = "train",
              image_size: int | None = None) -> Path:
    """``recipe`` on the images under ``root/train_dir`` (``<class>/<image>``, resized to ``image_size`` if given);
    its last checkpoint. The run folder is named by the set and the steps, and records what else made it
    (``recipe.json``): other settings train in a folder of their own. An interrupted run resumes from its last
    checkpoint."""
    from pureebm_lightning.lightning_cli import make_cli

    identity = {"config": recipe.config, "args": list(recipe.args), "batch_size": recipe.batch_size,
                "root": str(root.relative_to(out)) if root.is_relative_to(out) else str(root),
                "train_dir": train_dir, "grayscale": grayscale, "image_size": image_size}
    workdir = out / "ebm" / f"{name}_{recipe.steps}steps"
    made = workdir / "recipe.json"
    if made.is_file() and json.loads(made.read_text()) != identity:  # a folder without it is an earlier release's: kept
        workdir = workdir.with_name(f"{workdir.name}-{hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]}")
    if (workdir / "done").is_file():
        return last_checkpoint(workdir)
    epochs = max(1, math.ceil(recipe.steps / max(1, images // recipe.batch_size)))
    milestones = [max(1, round(0.75 * epochs)), max(1, round(0.9 * epochs))]
    print(f"EBM {name}: {images} images, {epochs} epochs ({recipe.steps} iterations of batch {recipe.batch_size})", flush=True)
    resize = [f"--data.image_size={image_size}"] if image_size else []
    with working_dir(workdir):
        (workdir / "recipe.json").write_text(json.dumps(identity, indent=1))
        resume = last_checkpoint(workdir)
        cli = make_cli(["--config", str(config_path(recipe.config)), "--data", "pureebm_lightning.data.ImageFolderDataModule",
                        "--data.root", str(root), "--data.train_dir", train_dir, "--data.grayscale", str(grayscale).lower(),
                        "--data.batch_size", str(recipe.batch_size), "--data.num_workers", "0", *resize,
                        f"--trainer.max_epochs={epochs}", f"--trainer.max_steps={recipe.steps}",
                        f"--model.init_args.lr_scheduler.init_args.milestones={milestones}",
                        "--trainer.enable_model_summary=false", *recipe.args], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(resume) if resume else None)
    (workdir / "done").write_text(f"{cli.trainer.global_step} iterations on {root}\n")
    return last_checkpoint(workdir)


def train_victim(recipe: VictimRecipe, folder: Path, workdir: Path, seed: int):
    """``recipe`` trained on ``folder`` (no per-epoch validation: the test split is only used at the end); the
    model in eval mode and its checkpoint."""
    from pureebm_lightning.lightning_cli import make_cli

    milestones = [max(1, round(recipe.epochs * m)) for m in recipe.milestones]
    configs = [flag for path in recipe.configs for flag in ("--config", str(config_path(path)))]
    with working_dir(workdir):
        cli = make_cli([*configs, f"--data.init_args.data={folder}", f"--seed_everything={seed}",
                        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
                        f"--trainer.max_epochs={recipe.epochs}", "--trainer.limit_val_batches=0",
                        f"--model.init_args.lr_scheduler.init_args.milestones={milestones}", *recipe.args], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model.eval()
