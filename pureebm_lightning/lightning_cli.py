"""LightningCLI for ``pureebm fit/validate/test/predict``: thread count, the whole-run progress bar, checked checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from pureebm_lightning.callbacks.run_progress import RunProgressBar
from pureebm_lightning.checkpoints import (
    KINDS,
    check_matches,
    read_checkpoint,
    require_kind,
)
from pureebm_lightning.runtime import configure_threads

#: ``--ckpt_path`` values that Lightning resolves itself (not files)
SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")


def _checkpoint_file(ckpt_path: Any) -> str | None:
    """``--ckpt_path`` when it names a file (not one of Lightning's special values or a registry)."""
    if not ckpt_path or str(ckpt_path) in SPECIAL_CHECKPOINTS or str(ckpt_path).startswith(("hf://", "registry:")):
        return None
    return str(ckpt_path)


class PureEBMCLI(LightningCLI):
    """LightningCLI with ``--threads``, :class:`RunProgressBar` unless the config names a progress bar, and a
    ``--ckpt_path`` checked (readable, of the model the config builds) before the run starts."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--threads", type=int | None, default=None,
                            help="CPU threads of the computation (default: one per core idle when the run starts)")

    def before_instantiate_classes(self) -> None:
        configure_threads(self._get(self.config, "threads"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, RunProgressBar()])
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Lightning's merge of the checkpoint's hyper-parameters into the model config, after checking the file:
        an empty, truncated or other model's checkpoint is one line naming the problem, not a traceback (nor
        jsonargparse's usage text for hyper-parameters that do not fit)."""
        self._checkpoint = None
        path = _checkpoint_file(self.config[self.config.subcommand].get("ckpt_path")) if self.config.get("subcommand") else None
        if path is None:
            return
        self._checkpoint = read_checkpoint(path)
        model = str(getattr(self.config[self.config.subcommand].get("model"), "class_path", "")).rsplit(".", 1)[-1]
        if model in KINDS:
            require_kind(self._checkpoint, model, path, f"the config's {model}")
        super()._parse_ckpt_path()

    def after_instantiate_classes(self) -> None:
        """The checkpoint's weights must be those of the model built (names and shapes), before any subcommand runs."""
        if getattr(self, "_checkpoint", None) is not None:
            check_matches(self._checkpoint, self.model, Path(self.config[self.subcommand].ckpt_path))


def make_cli(args: list[str] | None = None, run: bool = True) -> PureEBMCLI:
    """The LightningCLI of ``pureebm fit/validate/test/predict``; ``run=False`` only builds the model, data module
    and trainer from ``args`` (configs and flags, no subcommand), for scripts that drive them."""
    from lightning.pytorch import LightningDataModule, LightningModule

    return PureEBMCLI(  # models and data chosen by class_path in YAML
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
