"""``pureebm purify --data poisoned/ --ckpt_path ebm.ckpt`` (or a pretrained folder, or ``hf://owner/name``): purify a
poisoned training set on disk."""

from __future__ import annotations

import json
from pathlib import Path

from pureebm_lightning.errors import UsageError
from pureebm_lightning.purification.options import build_parser, defense_named


def check_arguments(cfg) -> None:
    """Every check that needs no file: before anything is loaded."""
    from pureebm_lightning.purification.options import DEFENSES_PACKAGE, TOP_LEVEL
    from pureebm_lightning.registry import Registry

    defense = cfg.defense or ("pureebm" if cfg.ckpt_path is not None else "jpeg" if cfg.jpeg_quality is not None else None)
    if defense is None:
        raise UsageError("give either --ckpt_path (PureEBM) or --jpeg_quality (the JPEG baseline), or --defense NAME")
    known = Registry("defense", (DEFENSES_PACKAGE,), by_module=True).names()
    if defense not in known:
        raise UsageError(f"--defense {defense}: unknown; the defenses are {', '.join(known)}")
    if defense == "pureebm" and (cfg.ckpt_path is None or cfg.jpeg_quality is not None):
        raise UsageError("give either --ckpt_path (PureEBM) or --jpeg_quality (the JPEG baseline)")
    if defense == "jpeg" and (cfg.jpeg_quality is None or cfg.ckpt_path is not None):
        raise UsageError("give either --ckpt_path (PureEBM) or --jpeg_quality (the JPEG baseline)")
    if defense != "pureebm" and (cfg.steps is not None or cfg.seed is not None):
        raise UsageError(f"--steps and --seed are PureEBM's; --defense {defense} takes its own as --{defense}.<option>")
    if defense not in TOP_LEVEL and (cfg.ckpt_path is not None or cfg.jpeg_quality is not None):
        raise UsageError(f"--defense {defense} takes its options as --{defense}.<option>, not --ckpt_path or --jpeg_quality")
    cfg.defense = defense
    cfg.seed = 0 if cfg.seed is None else cfg.seed
    for name, low in (("steps", 0), ("batch_size", 1), ("diagnostic_points", 1)):
        if getattr(cfg, name) is not None and getattr(cfg, name) < low:
            raise UsageError(f"--{name} must be at least {low}, got {getattr(cfg, name)}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise UsageError(f"--num_workers must be at least 0, got {cfg.num_workers}")
    if defense != "pureebm" and (cfg.tf32 or cfg.channels_last or cfg.compile):
        raise UsageError("--tf32, --channels_last and --compile speed up an EBM: they need --ckpt_path")
    if defense != "pureebm" and cfg.diagnostics:
        raise UsageError("--diagnostics follows an EBM's Langevin chain: it needs --ckpt_path")
    if cfg.stop is not None:
        if cfg.stop != "energy":
            raise UsageError(f"--stop {cfg.stop}: unknown; the stopping rules are: energy")
        if defense != "pureebm":
            raise UsageError("--stop stops an EBM's Langevin chains: it needs --ckpt_path")
        if cfg.steps is not None or cfg.diagnostics:
            raise UsageError("--stop sets each chain's steps itself: drop --steps (the cap is --stop_max_steps) and --diagnostics")
        if cfg.compile:
            raise UsageError("--stop computes only the chains still running, a batch size that changes every step, which "
                             "--compile would recompile for: drop one of them")
        if not 0 < cfg.stop_quantile < 1 or cfg.stop_patience < 1 or not 0 <= cfg.stop_min_steps <= cfg.stop_max_steps or cfg.stop_max_steps < 1:
            raise UsageError("--stop_quantile must be in (0, 1), --stop_patience at least 1, and 0 <= --stop_min_steps <= "
                             "--stop_max_steps (at least 1)")
        if cfg.stop_calibration_steps is not None and cfg.stop_calibration_steps < 0 or cfg.stop_calibration_images < 1:
            raise UsageError(f"--stop_calibration_steps must be at least 0 and --stop_calibration_images at least 1, got "
                             f"{cfg.stop_calibration_steps} and {cfg.stop_calibration_images}")
        if cfg.stop_threshold is not None and (cfg.stop_calibration is not None or cfg.stop_calibration_steps is not None):
            raise UsageError("--stop_threshold is the threshold itself: drop --stop_calibration and --stop_calibration_steps")
    if cfg.jpeg_quality is not None and not 1 <= cfg.jpeg_quality <= 95:
        raise UsageError(f"--jpeg_quality must be in 1..95, got {cfg.jpeg_quality}")


def make_defense(cfg, out: Path):
    """The defense ``cfg`` asks for (after :func:`check_arguments`); ``out``: the output folder (a stopping rule
    calibrated by an unfinished run there is reused)."""
    from pureebm_lightning.defenses import DEFENSES

    if cfg.defense == "pureebm":  # a checkpoint, a pretrained folder or hf://owner/name[@revision]
        purifier = DEFENSES["pureebm"].from_source(cfg.ckpt_path, steps=cfg.steps, seed=cfg.seed)
        if cfg.stop is not None:
            purifier.stop = energy_stop(cfg, purifier, out)
            purifier.steps = purifier.stop.max_steps
        cfg.steps = purifier.steps  # without --steps: the EBM's recommended T, else 150
        return purifier
    if cfg.defense == "jpeg":
        return DEFENSES["jpeg"](cfg.jpeg_quality)
    options = cfg.get(cfg.defense)
    return DEFENSES[cfg.defense](**(options.as_dict() if options is not None else {}))


def energy_stop(cfg, purifier, out: Path):
    """The energy stopping rule ``cfg`` asks for: its threshold given, calibrated on the chains of ``--stop_calibration``'s
    clean images (or taken from the unfinished run in ``out`` that calibrated it so), or read from the calibration an
    exported EBM stores."""
    from dataclasses import replace

    from pureebm_lightning.stopping_rule import CALIBRATION_STEPS, EnergyStop, calibrate

    rule = dict(patience=cfg.stop_patience, min_steps=cfg.stop_min_steps, max_steps=cfg.stop_max_steps)
    if cfg.stop_threshold is not None:
        return EnergyStop(cfg.stop_threshold, **rule)
    steps = cfg.stop_calibration_steps
    if cfg.stop_calibration is not None:
        data = cfg.stop_calibration if cfg.stop_calibration == "digits" else str(Path(cfg.stop_calibration).expanduser().resolve())
        steps = CALIBRATION_STEPS if steps is None else steps
        clean = calibration_images(cfg.stop_calibration, purifier.image_shape, cfg.stop_calibration_images)
        wanted = EnergyStop(0.0, **rule, quantile=cfg.stop_quantile, calibration_steps=steps, calibration_data=data,
                            calibration_images=len(clean))
        earlier = earlier_rule(out) if not cfg.overwrite else None
        if earlier is not None and {**earlier, "threshold": 0.0} == wanted.settings():
            return EnergyStop(**{k: v for k, v in earlier.items() if k != "rule"})  # resuming: calibrated already
        threshold = calibrate(purifier.sampler, purifier.energy_net, clean, cfg.stop_quantile, steps, seed=0)
        return replace(wanted, threshold=threshold)
    stored = purifier.stop_calibration or {}
    value = (stored.get("energy_quantiles") or {}).get(f"{cfg.stop_quantile:g}")
    if value is None or "steps" not in stored or (steps is not None and steps != stored["steps"]):
        why = (f"this EBM stores no calibration of quantile {cfg.stop_quantile:g}" if value is None or "steps" not in stored
               else f"this EBM's stored calibration ran {stored['steps']} steps, not {steps}")
        raise UsageError(f"--stop energy needs its threshold: --stop_calibration with clean held-out images, or "
                         f"--stop_threshold ({why}; `pureebm export --data` stores one)")
    return EnergyStop(float(value), **rule, quantile=cfg.stop_quantile, calibration_steps=int(stored["steps"]),
                      calibration_data="stored", calibration_images=stored.get("images"))


def earlier_rule(out: Path) -> dict | None:
    """The stopping rule an unfinished run in ``out`` recorded, if any."""
    manifest = out / "manifest.json"
    try:
        found = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except (OSError, ValueError):
        return None
    rule = found.get("stop")
    return rule if isinstance(rule, dict) and rule.get("rule") == "energy" else None


def calibration_images(data: str, shape, count: int | None = None):
    """Up to ``count`` clean images ([-1, 1]), evenly spread, for the stopping rule: a folder ``pureebm purify`` reads,
    or ``digits``."""
    from pureebm_lightning.pretrained.export import gap_images
    from pureebm_lightning.stopping_rule import CALIBRATION_IMAGES

    count = CALIBRATION_IMAGES if count is None else count
    if shape is None:
        from pureebm_lightning.sources import open_source

        shape = open_source(data).shape
    return gap_images(data, tuple(shape), count)


def purify(argv: list[str]) -> None:
    """Run ``pureebm purify`` with ``argv`` (the arguments after ``purify``)."""
    cfg = build_parser(defense_named(argv)).parse_args(argv)
    check_arguments(cfg)

    from lightning.pytorch import Trainer
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.utilities import rank_zero_info

    from pureebm_lightning.callbacks.images_per_second import ImagesPerSecondBar
    from pureebm_lightning.callbacks.speed_options import SpeedOptions
    from pureebm_lightning.purification.diagnostics import (
        diagnostic_points,
        write_diagnostics,
    )
    from pureebm_lightning.purification.output_lock import OutputLock
    from pureebm_lightning.purification.purified_store import PurifiedStore
    from pureebm_lightning.purification.purify_module import PurifyModule
    from pureebm_lightning.purification.run import PurificationRun
    from pureebm_lightning.runtime import configure_threads
    from pureebm_lightning.sources import open_source

    configure_threads(cfg.threads)
    source = open_source(cfg.data)
    suffix = {"pureebm": "_purified", "jpeg": f"_jpeg{cfg.jpeg_quality}"}.get(cfg.defense, f"_{cfg.defense}")
    out = Path(cfg.out) if cfg.out else source.root.resolve().with_name(source.root.resolve().name + suffix)
    OutputLock(out).refuse_if_held()  # another run writing there: say so now, not after loading the EBM
    purifier = make_defense(cfg, out)
    purifier.check_input(source.shape, source.root)
    aliases = {"None": "32-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
    precision = aliases.get(str(cfg.trainer.precision), str(cfg.trainer.precision))
    numerics = {"precision": precision, "tf32": cfg.tf32}  # a resumed run must compute as the first did
    store = PurifiedStore(source, out, {**purifier.settings(), "batch_size": cfg.batch_size, **numerics}, purifier.record())
    store.check(cfg.overwrite)  # read-only, on every rank before anything starts: all refuse together
    manifest = store.read_manifest()
    if not cfg.overwrite and manifest and manifest.get("complete"):
        rank_zero_info(f"Nothing to do: all {len(source)} images of {source.root} are purified in {out}")
        return

    trainer_options = {k: v for k, v in cfg.trainer.as_dict().items() if v is not None}
    show_progress = trainer_options.get("enable_progress_bar") is not False
    speed = SpeedOptions(cfg.tf32, cfg.channels_last, cfg.compile) if cfg.defense == "pureebm" else None  # TF32 off unless --tf32
    trainer = Trainer(**trainer_options, inference_mode=False, use_distributed_sampler=False, logger=False,
                      enable_checkpointing=False,
                      callbacks=[*([ImagesPerSecondBar()] if show_progress else []), *([speed] if speed else [])])
    points = diagnostic_points(cfg.steps, cfg.diagnostic_points) if cfg.diagnostics else None
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)  # workers there take cores from the computation
    workers = cfg.num_workers if cfg.num_workers is not None else (0 if on_cpu else 2)
    module = PurifyModule(PurificationRun(purifier, store, cfg.batch_size, workers, points), cfg.overwrite)
    try:
        trainer.predict(module, return_predictions=False)
    finally:
        store.lock.release()
    if trainer.is_global_zero:
        if module.diagnostics is not None:
            csv_path, png_path = write_diagnostics(module.diagnostics, out, title=f"{source.root.name}, {purifier.describe()}")
            rank_zero_info(f"Diagnostics ({module.diagnostics['images']} images purified in this run): {csv_path}, {png_path}")
        summary = store.record.get("stop_steps")  # every image's steps, gathered when the output completed
        if summary and summary["images"]:
            rank_zero_info(f"Stopping rule: {summary['mean_steps']:.1f} steps per image on average, at most {summary['max_steps']} "
                           f"(all {summary['images']} images of the output: {out / summary['file']})")
        rank_zero_info(f"Purified {len(source)} images ({purifier.describe()}) into {out}")
