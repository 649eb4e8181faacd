"""The classifier: every architecture gives logits; it trains through the three data paths via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pureebm_lightning.classifier_nets import SmallCNN, SmallImageClassifier
from pureebm_lightning.cli import main

from .conftest import CONFIGS, QUICK_CLASSIFIER, write_digit_folder


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pureebm"])


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "mobilenet_v2", "densenet121"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_each_architecture_gives_logits_for_a_batch_of_small_images(arch, in_channels):
    net = SmallImageClassifier(arch, num_classes=7, in_channels=in_channels)  # train mode: batch-norm statistics of the batch
    x = torch.randn(3, in_channels, 32, 32)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1], rtol=1e-3, atol=0)  # depends on the input


def test_small_cnn_gives_logits_for_digits():
    assert SmallCNN(10, 1)(torch.randn(4, 1, 16, 16)).shape == (4, 10)
    assert SmallCNN(10, 1)(torch.randn(4, 1, 8, 8)).shape == (4, 10)




@pytest.mark.slow
@pytest.mark.parametrize("data_config", ["digits_poisoned", "digits_purified", "digits_purify_on_the_fly"])
def test_the_classifier_trains_for_an_epoch_through_each_data_path(tmp_path, monkeypatch, grey_ebm, data_config):
    monkeypatch.chdir(tmp_path)
    keys = write_digit_folder(tmp_path / "poisoned/digits", 120)
    write_digit_folder(tmp_path / "poisoned/digits", 40, split="test")
    np.save(tmp_path / "poisoned/digits/trigger.npy", np.full((1, 8, 8), 0.1, np.float32))
    (tmp_path / "poisoned/digits/poison.json").write_text(json.dumps({
        "attack": "uniform-shift", "kind": "triggered", "target_class": 3,
        "trigger": {"file": "trigger.npy", "mode": "additive", "magnification": 1}}))
    if data_config == "digits_purified":
        main(["purify", "--data=poisoned/digits", f"--ckpt_path={grey_ebm}", "--steps=5", "--num_workers=0",
              "--trainer.enable_progress_bar=false"])
    extra = [f"--data.init_args.ckpt_path={grey_ebm}", "--data.init_args.steps=5"] if data_config.endswith("fly") else []
    main(["fit", "--config", str(CONFIGS / "classifier_digits.yaml"), "--config", str(CONFIGS / f"data/{data_config}.yaml"),
          *QUICK_CLASSIFIER, *extra])
    run = f"classifier_{data_config}"
    ckpt = tmp_path / f"runs/{run}/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["epoch"] == 0 and saved["global_step"] == -(-len(keys) // 64)  # one epoch of 120 images, batch 64
    main(["test", "--config", str(CONFIGS / "classifier_digits.yaml"), "--config", str(CONFIGS / f"data/{data_config}.yaml"),
          *QUICK_CLASSIFIER, *extra, f"--ckpt_path={ckpt}"])
    # natural accuracy on the clean test/ split reached the run's CSV log (40 images; chance is 10 %)
    (metrics,) = (tmp_path / "runs" / run).glob("version_1/metrics.csv")
    header, *rows = metrics.read_text().splitlines()
    column = header.split(",").index("test/accuracy")
    correct = float(rows[-1].split(",")[column]) * 40  # a share of the 40 test images: a whole number of them
    assert abs(correct - round(correct)) < 1e-4 and len(rows) == 1
    # the results table names the attack (from poison.json, copied by purify) and the defense of the data path
    defense = {"digits_poisoned": "none", "digits_purified": "PureEBM T=5", "digits_purify_on_the_fly": "PureEBM T=5 (on the fly)"}
    row = next(line for line in (tmp_path / "results/results.md").read_text().splitlines() if "uniform-shift" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["uniform-shift x1", defense[data_config], "1"]
    assert all(c != "-" for c in cells[3:6])  # natural accuracy and poison success were both measured


def test_test_labels_follow_class_names_when_the_test_split_lacks_a_class(tmp_path):
    from PIL import Image

    from pureebm_lightning.data import PoisonedSetDataModule

    for split, classes in (("train", ["ant", "bee", "cat"]), ("test", ["bee", "cat"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (4, 4)).save(tmp_path / split / name / "0.png")
    dm = PoisonedSetDataModule(str(tmp_path), crop_padding=0, hflip=False)
    dm.setup()
    assert dm.train_set.labels == [0, 1, 2]
    assert dm.test_set.labels == [1, 2]  # bee and cat keep their training indices


def test_in_memory_training_images_are_the_images_on_disk(tmp_path):
    from pureebm_lightning.data import PoisonedSetDataModule

    from .conftest import write_digit_folder

    write_digit_folder(tmp_path, count=30, rgb=True)
    on_disk = PoisonedSetDataModule(str(tmp_path), crop_padding=0, hflip=False)
    cached = PoisonedSetDataModule(str(tmp_path), crop_padding=0, hflip=False, in_memory=True)
    for dm in (on_disk, cached):
        dm.setup("fit")
    assert len(cached.train_set) == 30
    for i in range(30):
        a, b = on_disk.train_set[i], cached.train_set[i]
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
