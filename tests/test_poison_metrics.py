"""Poison success from poison.json: triggers, the metric on hand-made batches, the results table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch import nn

from pureebm_lightning import ClassifierModule
from pureebm_lightning.callbacks import ResultsTable
from pureebm_lightning.data import PoisonedSetDataModule
from pureebm_lightning.poisoning.trigger_modes import apply_trigger


def test_trigger_modes_by_hand():
    x = torch.zeros(1, 1, 3, 3)
    trigger = torch.full((1, 3, 3), 0.4)
    assert torch.allclose(apply_trigger(x, trigger, {"mode": "additive", "magnification": 3}), torch.full_like(x, 1.0))  # clamped
    assert torch.allclose(apply_trigger(x + 0.5, trigger, {"mode": "blend", "alpha": 0.25}), torch.full_like(x, 0.475))
    patched = apply_trigger(x, torch.ones(1, 2, 2), {"mode": "patch", "position": [1, 1]})
    assert patched.sum() == 4 and patched[0, 0, 1:, 1:].eq(1).all() and patched[0, 0, 0].eq(0).all()
    with pytest.raises(ValueError, match="unknown trigger mode"):
        apply_trigger(x, trigger, {"mode": "stamp"})


class CornerNet(nn.Module):
    """Predicts class 1 exactly when the top-left pixel exceeds 0.25 (inputs arrive as [-1, 1] images)."""

    def forward(self, x):
        score = 10 * (x[:, 0, 0, 0] - 0.25)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def save(path, corner_value):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((4, 4), np.uint8)
    pixels[0, 0] = corner_value
    Image.fromarray(pixels, "L").save(path)


def make_folder(root, spec):
    for label in ("0", "1"):
        save(root / "train" / label / "a.png", 0)
    # class 0: corners 0, 0, 128 (-1, -1, 0.004 in [-1, 1]); class 1: corners 255, 255 (1.0)
    for name, value in (("a", 0), ("b", 0), ("c", 128)):
        save(root / "test/0" / f"{name}.png", value)
    for name in ("d", "e"):
        save(root / "test/1" / f"{name}.png", 255)
    (root / "poison.json").write_text(json.dumps(spec))


def evaluate(root, tmp_path, **kwargs):
    dm = PoisonedSetDataModule(str(root), crop_padding=0, hflip=False, batch_size=2, **kwargs)
    module = ClassifierModule(CornerNet(), num_classes=2, mean=(0.5,), std=(0.5,))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ResultsTable(str(tmp_path / "results"))])
    return trainer.test(module, dm, verbose=False, ckpt_path=None)


def test_triggered_success_counts_non_target_images_flipped_to_the_target(tmp_path):
    np.save(tmp_path / "trigger.npy", np.pad(np.full((1, 1, 1), 0.5, np.float32), ((0, 0), (0, 3), (0, 3))))
    make_folder(tmp_path / "set", {"attack": "corner", "kind": "triggered", "target_class": 1,
                                   "trigger": {"file": "../trigger.npy", "mode": "additive", "magnification": 1}})
    clean, poisoned = evaluate(tmp_path / "set", tmp_path)
    assert clean["test/accuracy"] == 1.0
    # only the non-target (class 0) images count; with the trigger their corners are -0.5, -0.5, 0.504:
    assert poisoned["test/poison_success"] == pytest.approx(1 / 3)
    md = (tmp_path / "results/results.md").read_text()
    assert "| corner x1 | none | 1 | 100.00 ± n/a | 33.33 ± n/a | 33.33 | - |" in md  # one run: no spread to show
    assert (tmp_path / "results/results.csv").is_file() and (tmp_path / "results/runs.csv").is_file()

    # test-time magnification x3 (the Narcissus paper's): corners -1 + 1.5 = 0.5 flip all three
    _, poisoned = evaluate(tmp_path / "set", tmp_path, magnification=3)
    assert poisoned["test/poison_success"] == 1.0
    assert "| corner x3 | none | 1 |" in (tmp_path / "results/results.md").read_text()

    # the floor: a model trained on a clean folder, tested against the attack's spec
    clean = tmp_path / "clean"
    make_folder(clean, {})
    (clean / "poison.json").unlink()
    _, floor = evaluate(clean, tmp_path, poison_spec=str(tmp_path / "set/poison.json"))
    assert floor["test/poison_success"] == pytest.approx(1 / 3)
    assert "| corner x1 | clean training data (floor) | 1 |" in (tmp_path / "results/results.md").read_text()


def test_targeted_success_counts_targets_classified_as_intended(tmp_path):
    save(tmp_path / "set/targets/t1.png", 255)  # CornerNet says 1: intended 1 -> success
    save(tmp_path / "set/targets/t2.png", 0)  # says 0: intended 1 -> failure
    save(tmp_path / "set/targets/t3.png", 0)  # says 0: intended 0 -> success
    make_folder(tmp_path / "set", {"attack": "gm", "kind": "targeted", "targets": [
        {"file": "targets/t1.png", "intended_class": 1}, {"file": "targets/t2.png", "intended_class": 1},
        {"file": "targets/t3.png", "intended_class": 0}]})
    _, poisoned = evaluate(tmp_path / "set", tmp_path)
    assert poisoned["test/poison_success"] == pytest.approx(2 / 3)
    # pooled k/n with its Wilson interval (2/3: 20.8 % to 93.9 %)
    assert "| gm | none | 1 | 100.00 ± n/a | 66.67 ± n/a | 66.67 | 2/3 [20.8, 93.9] |" in (tmp_path / "results/results.md").read_text()


def test_results_table_averages_class_means_and_spreads_over_seeds(tmp_path):
    from pureebm_lightning.callbacks.results_table import aggregate

    def run(defense, target, natural, success):
        return {"attack": "a", "kind": "triggered", "defense": defense, "target_class": target,
                "natural_accuracy": natural, "poison_success": success}

    runs = [run("none", "0", "0.9", "0.8"), run("none", "0", "0.7", "0.6"), run("none", "1", "0.8", "0.1"),
            run("none", "2", "0.8", "nan"), run("JPEG q=75", "0", "0.8", "0.0")]
    (jpeg, none) = aggregate(runs)
    assert none["runs"] == 4 and none["natural_accuracy_mean"] == pytest.approx(0.8)
    assert none["poison_success_mean"] == pytest.approx(0.4)  # classes 0 (mean 0.7) and 1 (0.1); nan skipped
    assert none["poison_success_seed_std"] == pytest.approx(0.1414, abs=1e-4)  # only class 0 has two seeds
    assert none["poison_success_max"] == pytest.approx(0.7)
    assert jpeg["runs"] == 1 and jpeg["poison_success_seed_std"] is None
