"""LightningCLI for ``pureebm fit/validate/test/predict``: thread count, the whole-run progress bar, checked checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from pureebm_lightning.callbacks.run_progress import RunProgressBar
from pureebm_lightning.checkpoints import check_matches, kind_of, read_checkpoint
from pureebm_lightning.errors import CheckpointError
from pureebm_lightning.runtime import configure_threads

#: ``--ckpt_path`` values that Lightning resolves itself (not files)
SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")
#: where each of the project's modules keeps its weights in a state dict
WEIGHT_PREFIX = {"EBMModule": "energy_net.", "ClassifierModule": "net."}


class PureEBMCLI(LightningCLI):
    """LightningCLI with ``--threads``, :class:`RunProgressBar` unless the config names a progress bar, and a
    ``--ckpt_path`` checked (readable, of the model the config builds) before the run starts."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--threads", type=int | None, default=None,
                            help="CPU threads of the computation (default: one per core idle when the run starts)")

    def before_instantiate_classes(self) -> None:
        configure_threads(self._get(self.config, "threads"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in [*given, *extra]):
            extra.append(RunProgressBar())
        return self._instantiate_trainer(config, extra)

    def _parse_ckpt_path(self) -> None:
        """Lightning's merge of the checkpoint's hyper-parameters into the model config, after checking the file:
        an empty, truncated or other model's checkpoint is one line naming the problem, not a traceback."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in SPECIAL_CHECKPOINTS or str(ckpt_path).startswith(("hf://", "registry:")):
            return
        ckpt = read_checkpoint(ckpt_path)
        there = (ckpt.get("hyper_parameters") or {}).get("_class_path")
        model = self.config[self.config.subcommand].get("model")
        here = getattr(model, "class_path", None)
        prefix = WEIGHT_PREFIX.get(str(here).rsplit(".", 1)[-1])
        if prefix and not all(k.startswith(prefix) for k in ckpt["state_dict"]):  # also without a recorded class
            raise CheckpointError(f"{ckpt_path}: {kind_of(ckpt)}, but the config builds {here.rsplit('.', 1)[-1]}: "
                                  "pass the config the checkpoint was trained with")
        if there and here and there.rsplit(".", 1)[-1] != here.rsplit(".", 1)[-1]:
            raise CheckpointError(f"{ckpt_path}: {kind_of(ckpt)}, which holds {there.rsplit('.', 1)[-1]}, but the config builds "
                                  f"{here.rsplit('.', 1)[-1]}: pass the config the checkpoint was trained with")
        super()._parse_ckpt_path()

    def _check_checkpoint(self) -> None:
        ckpt_path = self._get(self.config, "ckpt_path") if self.subcommand else None
        if ckpt_path is None or str(ckpt_path) in SPECIAL_CHECKPOINTS or str(ckpt_path).startswith(("hf://", "registry:")):
            return
        check_matches(read_checkpoint(ckpt_path), self.model, Path(ckpt_path))

    def before_fit(self) -> None:
        self._check_checkpoint()

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def before_predict(self) -> None:
        self._check_checkpoint()
