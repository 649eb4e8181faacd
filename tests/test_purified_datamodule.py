"""PurifiedDataModule: purify on the training device, cache once, or re-purify every epoch; DDP shares the work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Trainer

from pureebm_lightning.data import PurifiedDataModule
from pureebm_lightning.sources import open_source

from .conftest import ROOT, write_digit_folder
from .recording_module import RecordingModule


def fit(dm, epochs):
    module = RecordingModule()
    Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(module, dm)
    return module


def test_purifies_once_caches_and_trains_on_purified_images(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    write_digit_folder(data, 24)
    source = open_source(data)
    dm = PurifiedDataModule(str(data), str(grey_ebm), steps=10, batch_size=8, crop_padding=0, hflip=False, cache_dir=str(tmp_path / "cache"))
    module = fit(dm, epochs=2)
    assert dm.purified_now == 24
    (cache,) = (tmp_path / "cache").iterdir()  # <defense>-<run key>, in the purify layout
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and cache.name == f"pureebm-{manifest['run_key'][:16]}"
    assert (manifest["steps"], manifest["seed"], manifest["batch_size"]) == (10, 0, 256)
    for _epoch, x, _y in module.seen:
        assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    # labels travel with their images: match each seen image to its purified file
    purified = {tuple(((dm.train_set.load(i).float() / 127.5) - 1).flatten().tolist()): source.labels[i] for i in range(24)}
    for _, x, y in module.seen:
        assert [purified[tuple(img.flatten().tolist())] for img in x] == y.tolist()
    # a later run (and every later epoch) reads the cache instead of purifying again
    again = PurifiedDataModule(str(data), str(grey_ebm), steps=10, batch_size=8, crop_padding=0, hflip=False, cache_dir=str(tmp_path / "cache"))
    fit(again, epochs=1)
    assert again.purified_now == 0


def test_every_epoch_mode_purifies_each_epoch_with_fresh_noise(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    write_digit_folder(data, 8)
    dm = PurifiedDataModule(str(data), str(grey_ebm), steps=10, batch_size=8, crop_padding=0, hflip=False, every_epoch=True)
    module = fit(dm, epochs=2)
    (e0, x0, y0), (e1, x1, y1) = module.seen
    assert (e0, e1) == (0, 1) and not (tmp_path / "poisoned_purify_cache").exists()
    raw = torch.stack([open_source(data).load(i) for i in range(8)]).float() / 127.5 - 1
    # both epochs moved the images, by different noise
    assert not torch.equal(x0.sort(0).values, x1.sort(0).values)
    assert (x0.mean() - raw.mean()).abs() < 0.2 and x0.shape == raw.shape
    assert sorted(y0.tolist()) == sorted(y1.tolist()) == sorted(open_source(data).labels)


@pytest.mark.slow
def test_under_ddp_each_rank_purifies_its_own_share(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    write_digit_folder(data, 20)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "tests" / "recording_module.py")
    proc = subprocess.run([sys.executable, script, str(data), str(grey_ebm), str(tmp_path / "report")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report.rank{r}").read_text()) for r in (0, 1)]
    # 5 blocks of 4 images: rank 0 takes blocks 0, 2, 4 and rank 1 blocks 1, 3; each image purified once
    assert [r["purified_now"] for r in reports] == [12, 8]
    assert all(r["batches"] == 3 for r in reports)  # then each rank trains on its half of all 20 (batches of 4)
    cache = next((tmp_path / "poisoned_purify_cache").iterdir())
    assert len(list(cache.rglob("*.png"))) == 20
