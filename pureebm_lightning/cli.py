"""The ``pureebm`` command: LightningCLI over the project's modules and data modules."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> None:
    """Entry point of ``pureebm``; ``args`` replaces ``sys.argv[1:]`` (for tests)."""
    LightningCLI(  # models and data chosen by class_path in YAML
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
