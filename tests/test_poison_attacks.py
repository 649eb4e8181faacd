"""`pureebm poison --attack`: budgets, l_inf bounds and labels measured on the written folders, manifests,
objectives that go down, and the folder working as input to the rest of the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pureebm_lightning.cli import main
from pureebm_lightning.images import quantise, to_signed_unit
from pureebm_lightning.poison_spec import PoisonSpec
from pureebm_lightning.poisoning.attacks.badnets import checkerboard
from pureebm_lightning.poisoning.attacks.gradient_matching import GradientMatching
from pureebm_lightning.poisoning.attacks.narcissus import optimise_trigger
from pureebm_lightning.poisoning.clean_data import load_clean_data
from pureebm_lightning.poisoning.importers import read_indexed_folder
from pureebm_lightning.poisoning.trigger_modes import apply_trigger
from pureebm_lightning.splits import Split
from pureebm_lightning.surrogate import surrogate_net

from .conftest import TINY_POISON_DATA

FAST_OPT = ["--surrogate_epochs", "2", "--steps", "40"]
MANIFEST_KEYS = {"attack", "kind", "clean_label", "train_count", "poison_count", "poison_share", "poison_indices",
                 "changed_pixels_ids", "relabelled_ids", "linf_255", "classes", "data", "holdout", "holdout_ids", "seed",
                 "command", "version", "created"}


def poison(out: Path, *flags: str) -> dict:
    main(["poison", "--out", str(out), *TINY_POISON_DATA, *flags])
    return json.loads((out / "poison.json").read_text())


def read_back(folder: Path) -> Split:
    """The written train/ split, by id (file name), as the victim will see it."""
    split, classes = read_indexed_folder(folder / "train", "L")
    return Split(split.images, torch.as_tensor([int(classes[i]) for i in split.labels]), split.ids)


@pytest.fixture(scope="module")
def clean() -> Split:
    return load_clean_data("digits", holdout=0.2, split_seed=0, image_size=8).train


def test_badnets_poisons_the_budget_with_the_patch_and_relabels_only_them(tmp_path, clean):
    spec = poison(tmp_path / "p", "--attack", "badnets", "--budget", "0.1", "--target_class", "3")
    got = read_back(tmp_path / "p")
    assert torch.equal(got.ids, clean.ids)
    changed = (got.images != clean.images).flatten(1).any(1)
    relabelled = got.labels != clean.labels
    assert int(changed.sum()) == round(0.1 * len(clean)) == spec["poison_count"] == len(spec["poison_indices"])
    assert torch.equal(changed, relabelled)  # dirty label: exactly the poisoned images are relabelled ...
    assert (got.labels[changed] == 3).all() and (clean.labels[changed] != 3).all()  # ... from another class to the target
    assert sorted(got.ids[changed].tolist()) == sorted(spec["poison_indices"])
    r, c = spec["trigger"]["position"]
    assert torch.equal(got.images[changed][:, :, r : r + 3, c : c + 3], checkerboard(1, 3).expand(int(changed.sum()), 1, 3, 3))
    outside = got.images[changed].clone()
    outside[:, :, r : r + 3, c : c + 3] = clean.images[changed][:, :, r : r + 3, c : c + 3]
    assert torch.equal(outside, clean.images[changed])  # nothing but the patch changed
    assert MANIFEST_KEYS <= set(spec) and spec["linf_255"] == 255 and spec["clean_label"] is False
    assert PoisonSpec.find(tmp_path / "p").trigger_array().shape == (1, 3, 3)


def test_blended_mixes_the_pattern_at_alpha_into_the_budget(tmp_path, clean):
    spec = poison(tmp_path / "p", "--attack", "blended", "--budget", "0.05", "--alpha", "0.2")
    got = read_back(tmp_path / "p")
    pattern = torch.as_tensor(np.load(tmp_path / "p" / "trigger.npy"))[0]
    rows = torch.isin(got.ids, torch.as_tensor(spec["poison_indices"]))
    assert int(rows.sum()) == round(0.05 * len(clean)) == spec["poison_count"]
    expected = (0.8 * clean.images[rows].float() + 0.2 * ((pattern + 1) * 127.5)).round().to(torch.uint8)
    assert (got.images[rows].int() - expected.int()).abs().max() <= 1  # the stored 8-bit blend
    assert torch.equal(got.images[~rows], clean.images[~rows]) and torch.equal(got.labels[~rows], clean.labels[~rows])
    assert (got.labels[rows] == 0).all()
    # at test time the same blend is applied to clean images
    blended = apply_trigger(to_signed_unit(clean.images[:2]), pattern, {"mode": "blend", "alpha": 0.2})
    assert torch.allclose(blended, 0.8 * to_signed_unit(clean.images[:2]) + 0.2 * pattern, atol=1e-6)


def test_narcissus_is_clean_label_inside_its_linf_ball_on_the_pixel_grid_and_lowers_its_objective(tmp_path, clean):
    spec = poison(tmp_path / "p", "--attack", "narcissus", "--budget", "0.05", "--epsilon", "8", "--target_class", "2", "--lr", "0.05",
                  *FAST_OPT)
    got = read_back(tmp_path / "p")
    assert torch.equal(got.labels, clean.labels) and spec["relabelled_ids"] == [] and spec["clean_label"] is True
    diff = got.images.int() - clean.images.int()
    changed = diff.flatten(1).abs().amax(1) > 0
    poisoned = torch.isin(got.ids, torch.as_tensor(spec["poison_indices"]))
    assert torch.equal(changed, poisoned) and int(changed.sum()) == spec["poison_count"] == round(0.05 * len(clean))
    assert (clean.labels[poisoned] == 2).all()  # only target-class images carry the trigger
    assert 0 < diff.abs().max() <= 8 and spec["linf_255"] == int(diff.abs().max())
    steps = torch.as_tensor(np.load(tmp_path / "p" / "trigger.npy")) * 127.5
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 8  # whole 1/255 steps
    # stored images hold exactly the trigger (but where 0..255 clips it): storing neither erased nor doubled it
    unclipped = (clean.images[poisoned].int() + steps.round().int()).clamp(0, 255)
    assert torch.equal(got.images[poisoned].int(), unclipped)
    objective = spec["objective"]  # over all target-class images, without augmentation (the per-step loss is noisy)
    assert objective["trigger"] < objective["no_trigger"]
    assert MANIFEST_KEYS | {"target_class", "trigger", "epsilon_255", "steps", "lr", "surrogate_epochs"} <= set(spec)
    assert spec["trigger"] == {"mode": "additive", "magnification": 1.0, "file": "trigger.npy"}


def test_narcissus_trigger_optimisation_lowers_the_target_loss_of_a_trained_net():
    """On a surrogate that has learned the digits, the trigger lowers cross-entropy towards a target class on
    images of other classes (measured without augmentation) and stays inside the ball."""
    data = load_clean_data("digits", holdout=0.0, image_size=8).train
    torch.manual_seed(0)
    net = surrogate_net((1, 8, 8), 10)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = to_signed_unit(data.images), data.labels
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    others = x[y != 5][:200]
    trigger, history = optimise_trigger(net, others, 5, epsilon=16, steps=60, lr=0.05, max_shift=0, progress=False)
    ce = lambda d: torch.nn.functional.cross_entropy(net((others + d).clamp(-1, 1)), torch.full((len(others),), 5)).item()
    assert ce(trigger) < ce(torch.zeros_like(trigger)) - 1.0  # measured: 12.2 -> 9.8 nats
    assert trigger.abs().max() <= 32 / 255 + 1e-6
    assert np.mean(history[-10:]) < np.mean(history[:10])


def test_gradient_matching_objective_is_zero_when_the_poison_is_the_target_with_the_intended_label():
    torch.manual_seed(0)
    net = surrogate_net((1, 8, 8), 10).eval()
    target = torch.rand(1, 8, 8) * 2 - 1
    objective = GradientMatching(net, target, intended_class=4)
    assert objective(target[None], torch.tensor([4]), create_graph=False).item() == pytest.approx(0.0, abs=1e-5)
    assert objective(target[None], torch.tensor([7]), create_graph=False).item() > 0.05  # another label: another direction


def test_gradient_matching_is_clean_label_targeted_and_lowers_its_objective(tmp_path, clean):
    spec = poison(tmp_path / "p", "--attack", "gradient_matching", "--budget", "0.05", "--epsilon", "16",
                  "--restarts", "2", "--seed", "3", *FAST_OPT)
    got = read_back(tmp_path / "p")
    assert torch.equal(got.labels, clean.labels) and spec["clean_label"] is True
    diff = (got.images.int() - clean.images.int()).abs().flatten(1).amax(1)
    assert 0 < diff.max() <= 16 and spec["linf_255"] == int(diff.max())
    poisoned = torch.isin(got.ids, torch.as_tensor(spec["poison_indices"]))
    assert int(poisoned.sum()) == spec["poison_count"] == round(0.05 * len(clean))
    assert (diff[~poisoned] == 0).all()
    (target,) = spec["targets"]
    assert (clean.labels[poisoned] == target["intended_class"]).all()  # poisons come from the intended class
    assert target["true_class"] != target["intended_class"]
    assert (tmp_path / "p" / target["file"]).is_file()
    test_ids = [int(p.stem) for p in (tmp_path / "p" / "test").rglob("*.png")]
    assert target["id"] not in test_ids and len(test_ids) == len(load_clean_data("digits", image_size=8).test) - 1
    objective = spec["objective"]
    assert len(objective["restarts_final"]) == 2
    assert objective["best_final"] == min(objective["restarts_final"]) < objective["no_perturbation"]
    assert objective["best_last_step"] < objective["best_first_step"]  # lowered over its steps, not only at the end
    assert MANIFEST_KEYS | {"targets", "epsilon_255", "steps", "restarts", "step_size_255"} <= set(spec)
    assert PoisonSpec.find(tmp_path / "p").targets[0]["intended_class"] == target["intended_class"]


def test_quantise_keeps_whole_pixel_steps_inside_the_ball():
    trigger = torch.tensor([0.05, -0.05, 0.004, 1.0])
    steps = quantise(trigger, epsilon=4)
    assert steps.tolist() == [4, -4, 1, 4]


def test_attack_none_writes_the_same_split_unpoisoned_and_reads_as_clean(tmp_path, clean):
    spec = poison(tmp_path / "p", "--attack", "none")
    got = read_back(tmp_path / "p")
    assert torch.equal(got.images, clean.images) and torch.equal(got.labels, clean.labels)
    assert spec["poison_count"] == 0 and spec["linf_255"] == 0
    assert PoisonSpec.find(tmp_path / "p") is None


def test_holdout_is_disjoint_from_the_victims_training_set_and_recorded(tmp_path, clean):
    spec = poison(tmp_path / "p", "--attack", "badnets", "--holdout", "0.3")
    train_ids = {int(p.stem) for p in (tmp_path / "p" / "train").rglob("*.png")}
    test_ids = {int(p.stem) for p in (tmp_path / "p" / "test").rglob("*.png")}
    assert len(spec["holdout_ids"]) == round(0.3 * (len(train_ids) + len(spec["holdout_ids"])))
    assert not train_ids & set(spec["holdout_ids"]) and not test_ids & (train_ids | set(spec["holdout_ids"]))


def test_user_errors_are_one_line_and_nothing_is_overwritten_silently(tmp_path, capsys):
    with pytest.raises(SystemExit, match="either --attack"):
        main(["poison", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="only .* of class 0"):
        main(["poison", "--out", str(tmp_path / "x"), *TINY_POISON_DATA, "--attack", "narcissus", "--budget", "0.5"])
    with pytest.raises(SystemExit, match="no such folder"):
        main(["poison", "--out", str(tmp_path / "x"), "--attack", "badnets", "--data", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="--epsilon .* 1..255"):
        main(["poison", "--out", str(tmp_path / "x"), *TINY_POISON_DATA, "--attack", "narcissus", "--epsilon", "-8"])
    with pytest.raises(SystemExit, match="no --holdout"):
        main(["poison", "--out", str(tmp_path / "x"), *TINY_POISON_DATA, "--import", "narcissus_trigger", "--source", "t.npy", "--holdout", "0.2"])
    with pytest.raises(SystemExit, match="only .* of class 3"):  # refused before the surrogate trains
        main(["poison", "--out", str(tmp_path / "x"), *TINY_POISON_DATA, "--attack", "narcissus", "--budget", "0.2", "--target_class", "3"])
    poison(tmp_path / "p", "--attack", "badnets")
    with pytest.raises(SystemExit, match="exists"):
        poison(tmp_path / "p", "--attack", "blended")
    assert poison(tmp_path / "p", "--attack", "blended", "--overwrite")["attack"] == "blended"
    assert oct((tmp_path / "p").stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not the temp folder's 0700
    (tmp_path / "handmade").mkdir()  # a poison.json written by hand (README shows the format): not ours to delete
    (tmp_path / "handmade" / "poison.json").write_text('{"attack": "x", "kind": "targeted", "targets": [{"file": "a.png"}]}')
    with pytest.raises(SystemExit, match="not a poisoned folder"):
        poison(tmp_path / "handmade", "--attack", "badnets", "--overwrite")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    with pytest.raises(SystemExit, match="not a poisoned folder"):
        poison(tmp_path / "mine", "--attack", "badnets", "--overwrite")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep"
    purified = tmp_path / "purified"  # a purify output carries a copy of poison.json: still not replaced
    purified.mkdir()
    (purified / "poison.json").write_text(json.dumps({"command": {}, "version": "0.1.0"}))
    (purified / "manifest.json").write_text("{}")
    with pytest.raises(SystemExit, match="purify output"):
        poison(purified, "--attack", "badnets", "--overwrite")


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_the_old_folder_whole_and_nothing_half_written(tmp_path, monkeypatch):
    from pureebm_lightning.poisoning import poisoned_folder

    poison(tmp_path / "p", "--attack", "badnets")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    write_split = poisoned_folder._write_split

    def fail_on_test(folder, split, classes):
        if folder.name == "test":
            raise OSError("disk full")
        write_split(folder, split, classes)

    monkeypatch.setattr(poisoned_folder, "_write_split", fail_on_test)
    with pytest.raises(SystemExit, match="disk full"):  # one line for the user, and nothing lost
        poison(tmp_path / "p", "--attack", "blended", "--overwrite")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # no hidden partial folder either
    assert json.loads((tmp_path / "p" / "poison.json").read_text())["attack"] == "badnets"


def test_attacker_data_replaces_the_holdout_and_is_recorded(tmp_path, clean):

    from pureebm_lightning.images import chw_to_pil

    pool = load_clean_data("digits", holdout=0.2, image_size=8).pool
    for image, label, i in zip(pool.images[:60], pool.labels[:60].tolist(), pool.ids[:60].tolist()):
        (tmp_path / "mine" / str(label)).mkdir(parents=True, exist_ok=True)
        chw_to_pil((image)).save(tmp_path / "mine" / str(label) / f"{i}.png")
    spec = poison(tmp_path / "p", "--attack", "narcissus", "--attacker_data", str(tmp_path / "mine"), *FAST_OPT)
    assert spec["holdout"] == 0 and spec["holdout_ids"] == [] and spec["attacker_data"] == str(tmp_path / "mine")
    assert spec["train_count"] == len(load_clean_data("digits", holdout=0.0, image_size=8).train)
    assert spec["surrogate_trained_on"] == "the attacker's pool of 60 images"


def test_a_poisoned_folder_goes_through_purify_and_keeps_its_attack(tmp_path, grey_ebm):
    poison(tmp_path / "p", "--attack", "badnets", "--budget", "0.05", "--holdout", "0.9")  # a small set: fast
    main(["purify", "--data", str(tmp_path / "p"), "--ckpt_path", str(grey_ebm), "--steps", "2", "--num_workers", "0",
          "--trainer.enable_progress_bar", "false"])
    purified = tmp_path / "p_purified"
    assert json.loads((purified / "poison.json").read_text()) == json.loads((tmp_path / "p" / "poison.json").read_text())
    assert (purified / "trigger.npy").read_bytes() == (tmp_path / "p" / "trigger.npy").read_bytes()
    assert sorted(p.name for p in (purified / "test").rglob("*.png")) == sorted(p.name for p in (tmp_path / "p" / "test").rglob("*.png"))
    from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule

    dm = PoisonedSetDataModule(str(purified), batch_size=8)
    dm.setup("fit")
    assert dm.describe()["defense"] == "PureEBM T=2" and dm.describe()["attack"] == "badnets x1"
    assert len(dm.poison_test_set) == sum(1 for p in (purified / "test").rglob("*.png") if p.parent.name != "0")


def test_a_surrogate_is_trained_once_per_process_for_the_same_data_and_settings():
    """The memo returns a copy of the same model and leaves the random state that training left, so an attack's
    result does not depend on whether its surrogate was trained or remembered; other settings train again."""
    from pureebm_lightning import surrogate
    from pureebm_lightning.bundled_digits import digits_images
    from pureebm_lightning.images import to_uint8
    from pureebm_lightning.splits import Split

    x, y = digits_images(8)
    split = Split(to_uint8(x[:64]), y[:64], torch.arange(64))

    def weights(module):
        return [t.clone() for t in module.state_dict().values()]

    surrogate._TRAINED.clear()
    trained = surrogate.train_surrogate(split, 10, 1, seed=3, accelerator="cpu", progress=False)
    after_training = torch.rand(4)
    remembered = surrogate.train_surrogate(split, 10, 1, seed=3, accelerator="cpu", progress=False)
    after_memo = torch.rand(4)
    assert remembered is not trained and all(torch.equal(a, b) for a, b in zip(weights(trained), weights(remembered)))
    assert torch.equal(after_training, after_memo)
    for p in remembered.parameters():  # a copy: changing it (Narcissus' warm-up does) leaves the memo alone
        p.data.add_(1.0)
    again = surrogate.train_surrogate(split, 10, 1, seed=3, accelerator="cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(trained), weights(again)))
    other = surrogate.train_surrogate(split, 10, 1, seed=4, accelerator="cpu", progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(weights(trained), weights(other)))
    surrogate._TRAINED.clear()
