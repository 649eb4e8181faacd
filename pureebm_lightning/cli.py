"""The ``pureebm`` command: LightningCLI over the project's modules and data modules."""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def _end_process_group() -> None:
    """Destroy a DDP process group the run left (Lightning keeps it for reuse): a live gloo group can abort
    the interpreter at exit ("terminate called without an active exception"), failing a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(args: list[str] | None = None) -> None:
    """Entry point of ``pureebm``; ``args`` replaces ``sys.argv[1:]`` (for tests).

    ``poison`` and ``purify`` have their own parsers: LightningCLI reserves ``--data`` for a data module, and
    ``pureebm purify --data poisoned/`` must name a folder.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["purify"]:
        from pureebm_lightning.purification import PoisonedDataError
        from pureebm_lightning.purification.command import purify
        from pureebm_lightning.purification.purified_store import PurificationConflict

        try:
            purify(argv[1:])
        except (PoisonedDataError, PurificationConflict, FileNotFoundError) as err:  # the user's input: no traceback
            raise SystemExit(f"pureebm purify: error: {err}") from err
        _end_process_group()
        return
    if argv[:1] == ["poison"]:
        from pureebm_lightning.poisoning.command import poison
        from pureebm_lightning.purification import PoisonedDataError

        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            poison(argv[1:])
        except (PoisonedDataError, OSError, MisconfigurationException) as err:  # the user's input: no traceback
            raise SystemExit(f"pureebm poison: error: {err}") from err
        return
    if argv[:1] in (["-h"], ["--help"]) or not argv:
        print("pureebm poison --attack NAME --out POISONED_DIR: make a poisoned training set, or --import FORMAT "
              "--source PATH to read one (`pureebm poison --help`)\n"
              "pureebm purify --data POISONED_DIR --ckpt_path EBM.ckpt: purify a poisoned training set "
              "(`pureebm purify --help` lists its options)\n")
    make_cli(args)
    _end_process_group()


def make_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The LightningCLI of ``pureebm fit/validate/test/predict``; ``run=False`` only builds the model, data module
    and trainer from ``args`` (configs and flags, no subcommand), for scripts that drive them."""
    return LightningCLI(  # models and data chosen by class_path in YAML
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
