"""The options of ``pureebm purify`` (parsed without importing torch or Lightning, so that ``--help`` answers at once)."""

from __future__ import annotations

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from pureebm_lightning.option_value import option_value

#: the Trainer options purification honours (the rest of Lightning's Trainer does not apply to it)
TRAINER_OPTIONS = {
    "accelerator": (str, "auto", "cpu, gpu, tpu, mps or auto"),
    "devices": (int | str | list[int], "auto", "devices per node (a count, a list of indices, or auto)"),
    "num_nodes": (int, 1, "machines (DDP; under SLURM, sbatch's --nodes)"),
    "strategy": (str, "auto", "auto, or ddp for several devices"),
    "precision": (str | int | None, None, "numerics of the energy net: 32-true (default) or bf16-mixed (changes results)"),
    "enable_progress_bar": (bool | None, None, "the progress bar with images per second (false for logs)"),
    "enable_model_summary": (bool | None, None, "Lightning's model summary at the start"),
}


DEFENSES_PACKAGE = "pureebm_lightning.defenses"
#: defenses with options of their own at the top level (the others take theirs as --<defense>.<option>)
TOP_LEVEL = {"pureebm": "--ckpt_path, --steps, --seed", "jpeg": "--jpeg_quality"}


def defense_named(argv: list[str]) -> str | None:
    """The defense ``argv`` names with ``--defense`` or a ``--config`` YAML's ``defense:`` (None: PureEBM or JPEG, from
    --ckpt_path or --jpeg_quality)."""
    return option_value(argv, "defense")


def build_parser(defense: str | None = None) -> ArgumentParser:
    """The options of ``pureebm purify``; with ``defense`` (not pureebm or jpeg), its options as ``--<defense>.<option>``,
    from its class's signature (which imports it)."""
    from pureebm_lightning.registry import Registry

    defenses = Registry("defense", (DEFENSES_PACKAGE,), by_module=True).names()  # listed without importing them
    parser = ArgumentParser(
        prog="pureebm purify",
        description="Purify a poisoned training set: every training image becomes T Langevin steps of a trained EBM "
        "started at it (clamped to [-1, 1], stored as 8 bits), written with the same layout and file names. "
        "Other splits (test/, targets/, poison.json) are copied unchanged. An interrupted run finishes with the same "
        "command; one run at a time writes an output folder. Other defenses: --defense NAME (" + ", ".join(defenses) +
        "; `pureebm purify --defense NAME --help` for its options).",
    )
    parser.add_argument("--defense", type=str | None, default=None,
                        help="the defense (default: pureebm with --ckpt_path, jpeg with --jpeg_quality); one of " + ", ".join(defenses))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--data", type=str, required=True,
                        help="poisoned folder: <class>/<file>, train/<class>/<file> (other splits copied), or poisoned_training_{data,labels}.npy")
    parser.add_argument("--ckpt_path", type=str | None, default=None,
                        help="the EBM: a checkpoint written by `pureebm fit`, a folder written by `pureebm export` or "
                        "in the authors' layout, or a Hugging Face Hub repo hf://owner/name[@revision]")
    parser.add_argument("--jpeg_quality", type=int | None, default=None,
                        help="instead of an EBM: the JPEG baseline defense at this quality (e.g. 75)")
    parser.add_argument("--out", type=str | None, default=None, help="output folder (default: <data>_purified beside the input)")
    parser.add_argument("--steps", type=int | None, default=None, help="PureEBM: T, Langevin steps per image (default: the T a pretrained EBM's config recommends, else 150, the paper's)")
    parser.add_argument("--seed", type=int | None, default=None, help="PureEBM: seed of the Langevin noise (default 0)")
    parser.add_argument("--batch_size", type=int, default=128,
                        help="images per batch and device; also the block whose noise is seeded together (results depend on it)")
    parser.add_argument("--num_workers", type=int | None, default=None,
                        help="data-loading worker processes per device (default: 0 on CPU, where workers take cores from "
                        "the computation, 2 on accelerators)")
    parser.add_argument("--threads", type=int | None, default=None,
                        help="CPU threads of the computation (default: one per core idle when the run starts)")
    parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                        help="replace another run's output in --out and purify every image again")
    parser.add_argument("--diagnostics", action=ActionYesNo, default=False,
                        help="record mean energy and L2 distance from the start along the chain: purify_diagnostics.csv/.png")
    parser.add_argument("--diagnostic_points", type=int, default=10, help="intervals between recorded steps")
    group = parser.add_argument_group("Stopping rule (PureEBM: each chain stops on its own instead of a fixed --steps)")
    group.add_argument("--stop", type=str | None, default=None,
                       help="energy: stop a chain once its energy has stayed below the --stop_quantile of clean images' "
                       "chain energies for --stop_patience steps (at most --stop_max_steps)")
    group.add_argument("--stop_calibration", type=str | None, default=None,
                       help="clean held-out images (a folder, or digits) whose chains set the threshold (default: the "
                       "calibration a `pureebm export --data` folder stores)")
    group.add_argument("--stop_calibration_steps", type=int | None, default=None,
                       help="length of the clean calibration chains; their energies from half way on are pooled "
                       "(default 150, or the stored calibration's; 0: the clean images' own energies)")
    group.add_argument("--stop_calibration_images", type=int, default=1000,
                       help="at most this many --stop_calibration images, evenly spread (the calibration runs on CPU)")
    group.add_argument("--stop_quantile", type=float, default=0.5, help="the quantile of clean chain energies a chain must reach")
    group.add_argument("--stop_threshold", type=float | None, default=None, help="the energy threshold itself (no calibration)")
    group.add_argument("--stop_patience", type=int, default=10, help="consecutive steps below the threshold before stopping")
    group.add_argument("--stop_min_steps", type=int, default=0, help="steps every chain takes before it may stop")
    group.add_argument("--stop_max_steps", type=int, default=1000, help="the cap on the steps of any chain")
    group = parser.add_argument_group("GPU speed (SpeedOptions; bf16 is --trainer.precision bf16-mixed)")
    group.add_argument("--tf32", action=ActionYesNo, default=False, help="TF32 matmuls and convolutions (changes numerics)")
    group.add_argument("--channels_last", action=ActionYesNo, default=False, help="channels-last energy net and chains")
    group.add_argument("--compile", action=ActionYesNo, default=False, help="torch.compile the energy network")
    group = parser.add_argument_group("Devices (Lightning Trainer options that purification honours)")
    for name, (kind, default, text) in TRAINER_OPTIONS.items():
        group.add_argument(f"--trainer.{name}", type=kind, default=default, help=text)
    if defense is not None and defense not in TOP_LEVEL and defense in defenses:
        from pureebm_lightning.defenses import DEFENSES

        parser.add_class_arguments(DEFENSES[defense], nested_key=defense)
    return parser
