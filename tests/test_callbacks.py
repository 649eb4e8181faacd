"""ChainImageLogger: grids of chains and data reach TensorBoard, or PNG files when there is no image logger."""

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pureebm_lightning import ConvNetEnergy, EBMModule, LangevinSampler
from pureebm_lightning.callbacks import ChainImageLogger
from pureebm_lightning.data import DigitsDataModule


def fit(tmp_path, logger, steps=4):
    module = EBMModule(ConvNetEnergy(1, 4, 8), bank_size=32, sampler=LangevinSampler(n_steps=2))
    trainer = Trainer(
        default_root_dir=tmp_path, max_steps=steps, accelerator="cpu", logger=logger, enable_progress_bar=False,
        enable_checkpointing=False, limit_val_batches=0, callbacks=[ChainImageLogger(every_n_steps=2, num_images=16)],
    )
    trainer.fit(module, DigitsDataModule(image_size=8, batch_size=16))
    return trainer


def test_grids_go_to_tensorboard(tmp_path):
    trainer = fit(tmp_path, TensorBoardLogger(tmp_path, name="tb"))
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["images/chains", "images/data"]
    chains = events.Images("images/chains")
    assert [e.step for e in chains] == [2, 4]
    assert (chains[0].width, chains[0].height) == (4 * 9 + 1, 4 * 9 + 1)  # 16 8x8 images, 4 a row, 1-pixel padding


def test_without_an_image_logger_grids_are_png_files(tmp_path):
    trainer = fit(tmp_path, CSVLogger(tmp_path, name="csv"))
    out = tmp_path / "csv" / "version_0" / "chain_images"
    assert sorted(p.name for p in out.iterdir()) == [
        "chains_step0000002.png", "chains_step0000004.png", "data_step0000002.png", "data_step0000004.png"
    ]
    grid = np.asarray(Image.open(out / "data_step0000004.png"))
    assert grid.shape[:2] == (37, 37) and grid.max() > 200 and grid.min() < 50  # real digits: white strokes on black
    assert trainer.global_step == 4
