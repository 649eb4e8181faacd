"""The ``pureebm`` command: LightningCLI over the project's modules and data modules, plus ``poison``, ``purify`` and ``evaluate``.

Heavy modules (torch, Lightning) are imported only once a command runs, so ``pureebm --help`` answers at once.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

HELP = """usage: pureebm COMMAND [options]

Defend a classifier against poisoned training data with an energy-based model (PureEBM).

commands:
  fit        train a model from a config: an EBM (configs/ebm*.yaml) or a classifier (configs/classifier*.yaml)
  validate   validate a model from a config and a checkpoint (--ckpt_path)
  test       test a model: natural accuracy, poison success for a poisoned folder (--ckpt_path)
  predict    run a model's predict loop
  poison     make a poisoned training set (--attack NAME), or import another tool's (--import FORMAT --source PATH)
  purify     purify a poisoned training set: pureebm purify --data POISONED_DIR --ckpt_path EBM.ckpt (or FOLDER, hf://OWNER/NAME)
  export     write a trained EBM as a Hub-ready folder: pureebm export --ckpt_path EBM.ckpt --out my-ebm/
  evaluate   the paper's protocol end to end (attacks, EBMs, defenses, victims, report): --config configs/evaluate/digits.yaml

`pureebm COMMAND --help` lists a command's options; `pureebm fit --config configs/ebm_digits.yaml` is a start."""

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


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
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return
    command = argv[0]
    if command not in ("poison", "purify", "export", "evaluate", *LIGHTNING_COMMANDS):
        raise SystemExit(f"pureebm: error: unknown command {command!r}; the commands are fit, validate, test, predict, "
                         "poison, purify, export and evaluate (`pureebm --help`)")
    if command in ("poison", "purify", "export", "evaluate") and any(a in ("-h", "--help") for a in argv[1:]):
        _parser(command, argv[1:]).print_help()  # without torch or Lightning, unless a plug-in's options are asked for
        return
    from pureebm_lightning.runtime import quiet_lightning

    quiet_lightning()
    try:
        if command == "purify":
            from pureebm_lightning.purification.command import purify

            purify(argv[1:])
        elif command == "poison":
            from pureebm_lightning.poisoning.command import poison

            poison(argv[1:])
        elif command == "export":
            from pureebm_lightning.pretrained.command import export

            export(argv[1:])
        elif command == "evaluate":
            from pureebm_lightning.evaluation.command import evaluate

            evaluate(argv[1:])
        else:
            make_cli(args)
    except Exception as err:
        from pureebm_lightning.errors import is_user_error, one_line

        if not is_user_error(err):
            raise
        raise SystemExit(f"pureebm {command}: error: {one_line(err)}") from err
    finally:
        if "torch" in sys.modules:  # nothing to end when torch was never loaded
            _end_process_group()


def _parser(command: str, argv: list[str]):
    if command == "export":
        from pureebm_lightning.pretrained.command import build_parser as export_parser

        return export_parser()
    if command == "evaluate":
        from pureebm_lightning.evaluation.command import build_parser

        return build_parser()
    if command == "purify":
        from pureebm_lightning.purification.options import build_parser, defense_named

        return build_parser(defense_named(argv))
    from pureebm_lightning.poisoning.options import attack_named, build_parser

    return build_parser(attack_named(argv))


def make_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The LightningCLI of ``pureebm fit/validate/test/predict`` (:func:`pureebm_lightning.lightning_cli.make_cli`);
    ``run=False`` only builds the model, data module and trainer from ``args``, for scripts that drive them."""
    from pureebm_lightning.lightning_cli import make_cli as build

    return build(args, run)


if __name__ == "__main__":
    main()
