"""``pureebm purify --data poisoned/ --ckpt_path ebm.ckpt``: purify a poisoned training set on disk."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info

from pureebm_lightning.callbacks.purification import ImagesPerSecondBar, PurifiedWriter
from pureebm_lightning.callbacks.speed_options import SpeedOptions
from pureebm_lightning.purification.diagnostics import diagnostic_points, write_diagnostics
from pureebm_lightning.purification.purified_store import PurifiedStore
from pureebm_lightning.purification.jpeg_purifier import JPEGPurifier
from pureebm_lightning.purification.purifier import Purifier
from pureebm_lightning.purification.purify_module import PurifyModule
from pureebm_lightning.purification.sources import PoisonedDataError, open_source

TRAINER_OPTIONS_SET_HERE = {"callbacks", "logger", "inference_mode", "enable_checkpointing", "use_distributed_sampler"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pureebm purify",
        description="Purify a poisoned training set: every training image becomes T Langevin steps of a trained EBM "
        "started at it (clamped to [-1, 1], stored as 8 bits), written with the same layout and file names.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--data", type=str, required=True,
                        help="poisoned folder: <class>/<file>, train/<class>/<file> (other splits copied), or poisoned_training_{data,labels}.npy")
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="EBM checkpoint written by `pureebm fit`")
    parser.add_argument("--jpeg_quality", type=int | None, default=None,
                        help="instead of an EBM: the JPEG baseline defense at this quality (e.g. 75)")
    parser.add_argument("--out", type=str | None, default=None, help="output folder (default: <data>_purified beside the input)")
    parser.add_argument("--steps", type=int, default=150, help="T, Langevin steps per image (paper: 150 from scratch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Langevin noise")
    parser.add_argument("--batch_size", type=int, default=128,
                        help="images per batch and device; also the block whose noise is seeded together (results depend on it)")
    parser.add_argument("--num_workers", type=int, default=2, help="data-loading worker processes per device")
    parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                        help="replace another run's output in --out and purify every image again")
    parser.add_argument("--diagnostics", action=ActionYesNo, default=False,
                        help="record mean energy and L2 distance from the start along the chain: purify_diagnostics.csv/.png")
    parser.add_argument("--diagnostic_points", type=int, default=10, help="intervals between recorded steps")
    group = parser.add_argument_group("GPU speed (SpeedOptions; bf16 is --trainer.precision bf16-mixed)")
    group.add_argument("--tf32", action=ActionYesNo, default=False, help="TF32 matmuls and convolutions (changes numerics)")
    group.add_argument("--channels_last", action=ActionYesNo, default=False, help="channels-last energy net and chains")
    group.add_argument("--compile", action=ActionYesNo, default=False, help="torch.compile the energy network")
    parser.add_class_arguments(Trainer, "trainer", instantiate=False, skip=TRAINER_OPTIONS_SET_HERE)
    return parser


def purify(argv: list[str]) -> None:
    """Run ``pureebm purify`` with ``argv`` (the arguments after ``purify``)."""
    cfg = build_parser().parse_args(argv)
    if cfg.diagnostic_points < 1:
        raise PoisonedDataError(f"--diagnostic_points must be at least 1, got {cfg.diagnostic_points}")
    if (cfg.ckpt_path is None) == (cfg.jpeg_quality is None):
        raise PoisonedDataError("give either --ckpt_path (PureEBM) or --jpeg_quality (the JPEG baseline)")
    if cfg.jpeg_quality is not None and (cfg.tf32 or cfg.channels_last or cfg.compile):
        raise PoisonedDataError("--tf32, --channels_last and --compile speed up an EBM: they do not apply to --jpeg_quality")
    if cfg.jpeg_quality is not None and cfg.diagnostics:
        raise PoisonedDataError("--diagnostics follows an EBM's Langevin chain: it needs --ckpt_path, not --jpeg_quality")
    if cfg.jpeg_quality is not None and not 1 <= cfg.jpeg_quality <= 95:
        raise PoisonedDataError(f"--jpeg_quality must be in 1..95, got {cfg.jpeg_quality}")
    source = open_source(cfg.data)
    suffix = "_purified" if cfg.ckpt_path else f"_jpeg{cfg.jpeg_quality}"
    out = Path(cfg.out) if cfg.out else source.root.resolve().with_name(source.root.resolve().name + suffix)
    if cfg.jpeg_quality is not None:
        purifier = JPEGPurifier(cfg.jpeg_quality)
    else:
        purifier = Purifier.from_checkpoint(cfg.ckpt_path, steps=cfg.steps, seed=cfg.seed)
    purifier.check_input(source.shape, source.root)
    aliases = {"None": "32-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
    precision = aliases.get(str(cfg.trainer.precision), str(cfg.trainer.precision))
    numerics = {"precision": precision, "tf32": cfg.tf32}  # a resumed run must compute as the first did
    store = PurifiedStore(source, out, {**purifier.settings(), "batch_size": cfg.batch_size, **numerics})
    store.check(cfg.overwrite)  # read-only, on every rank before anything starts: all refuse together
    manifest = store.read_manifest()
    if not cfg.overwrite and manifest and manifest.get("complete"):
        rank_zero_info(f"Nothing to do: all {len(source)} images of {source.root} are purified in {out}")
        return

    trainer_options = {k: v for k, v in cfg.trainer.as_dict().items() if k not in TRAINER_OPTIONS_SET_HERE}
    show_progress = trainer_options.get("enable_progress_bar") is not False
    speed = SpeedOptions(cfg.tf32, cfg.channels_last, cfg.compile) if cfg.ckpt_path else None  # TF32 off unless --tf32
    trainer = Trainer(**trainer_options, inference_mode=False, use_distributed_sampler=False, logger=False,
                      enable_checkpointing=False,
                      callbacks=[PurifiedWriter(store), *([ImagesPerSecondBar()] if show_progress else []), *([speed] if speed else [])])
    points = diagnostic_points(cfg.steps, cfg.diagnostic_points) if cfg.diagnostics else None
    module = PurifyModule(purifier, store, cfg.batch_size, cfg.overwrite, cfg.num_workers, points)
    trainer.predict(module, return_predictions=False)
    if trainer.is_global_zero:
        if module.diagnostics is not None:
            csv_path, png_path = write_diagnostics(module.diagnostics, out, title=f"{source.root.name}, {purifier.describe()}")
            rank_zero_info(f"Diagnostics ({module.diagnostics['images']} images purified in this run): {csv_path}, {png_path}")
        rank_zero_info(f"Purified {len(source)} images ({purifier.describe()}) into {out}")
