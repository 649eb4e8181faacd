"""`pureebm poison --import`: small fixtures in each foreign format round-trip to the same images, labels and
poison ids; pickles are read only when trusted."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pureebm_lightning.cli import main
from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.data.digits import digits_images
from pureebm_lightning.poisoning.clean_data import Split, load_clean_splits
from pureebm_lightning.purification.sources import chw_to_pil
from pureebm_lightning.poisoning.importers import read_indexed_folder

POISONED_ROWS = [2, 5, 11]


def save(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    chw_to_pil((image)).save(path)


def write_split(folder: Path, split: Split, classes: list[str]) -> None:
    for image, label, i in zip(split.images, split.labels.tolist(), split.ids.tolist()):
        save(folder / classes[label] / f"{i}.png", image)


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory) -> Path:
    """A clean RGB 8x8 digits set as train/<class>/<id>.png and test/<class>/<id>.png (the local clean dataset),
    with ids that are not positions and do not sort as text (3, 10, 17, ...: "10.png" < "3.png")."""
    root = tmp_path_factory.mktemp("clean")
    x, y = digits_images(8, rgb=True)
    images = ((x + 1) * 127.5).round().to(torch.uint8)
    for split, rows in (("train", range(0, 90)), ("test", range(90, 120))):
        for i in rows:
            save(root / split / str(int(y[i])) / f"{7 * i + 3}.png", images[i])
    return root


@pytest.fixture(scope="module")
def reference(clean_folder) -> tuple[Split, Split, list[str]]:
    """The clean set as the importers index it: ids are the file names."""
    train, test, classes, _ = load_clean_splits(str(clean_folder))
    assert train.ids.tolist() == [7 * i + 3 for i in range(90)]
    return train, test, classes


def all_class_folders(folder: Path, classes: list[str]) -> None:
    """Witches' Brew creates a folder for every class, most of them empty in targets/ (and limited train/)."""
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)


def perturbed(train: Split) -> Split:
    images = train.images.clone()
    images[POISONED_ROWS] = (images[POISONED_ROWS].int() + 3).clamp(0, 255).to(torch.uint8)
    images[POISONED_ROWS, :, 0, 0] = 128  # a pixel that surely changes
    return Split(images, train.labels.clone(), train.ids)


def imported(out: Path) -> tuple[Split, dict]:
    split, classes = read_indexed_folder(out / "train", "RGB")
    return Split(split.images, torch.as_tensor([int(classes[i]) for i in split.labels]), split.ids), \
        json.loads((out / "poison.json").read_text())


def test_witches_brew_full_export_round_trips_with_poison_ids_from_the_clean_set(tmp_path, clean_folder, reference):
    train, test, classes = reference
    poisoned = perturbed(train)
    src = tmp_path / "wb"
    write_split(src / "train", poisoned, classes)
    write_split(src / "test", test.subset(torch.arange(1, len(test))), classes)
    intended = (int(test.labels[0]) + 1) % 10
    save(src / "targets" / classes[intended] / f"{int(test.ids[0])}.png", test.images[0])
    for split in ("train", "test", "targets"):
        all_class_folders(src / split, classes)
    main(["poison", "--import", "witches_brew", "--source", str(src), "--data", str(clean_folder), "--out", str(tmp_path / "out")])
    got, spec = imported(tmp_path / "out")
    assert torch.equal(got.images, poisoned.images) and torch.equal(got.labels, poisoned.labels) and torch.equal(got.ids, poisoned.ids)
    assert spec["poison_indices"] == train.ids[POISONED_ROWS].tolist() == spec["changed_pixels_ids"]
    assert spec["relabelled_ids"] == [] and spec["linf_255"] == int((poisoned.images.int() - train.images.int()).abs().max())
    (target,) = spec["targets"]
    assert (target["id"], target["intended_class"], target["true_class"]) == (int(test.ids[0]), intended, int(test.labels[0]))
    assert len(list((tmp_path / "out" / "test").rglob("*.png"))) == len(test) - 1
    # without the clean set, the images still import but the poison ids are unknown, and say so
    main(["poison", "--import", "witches_brew", "--source", str(src), "--out", str(tmp_path / "out2")])
    assert imported(tmp_path / "out2")[1]["poison_indices"] is None


def test_witches_brew_limited_export_takes_poison_ids_from_file_names(tmp_path, clean_folder, reference):
    train, test, classes = reference
    poisoned = perturbed(train)
    src = tmp_path / "wb"
    write_split(src / "train", poisoned.subset(torch.as_tensor(POISONED_ROWS)), classes)
    save(src / "targets" / classes[3] / f"{int(test.ids[4])}.png", test.images[4])
    for split in ("train", "targets"):
        all_class_folders(src / split, classes)
    main(["poison", "--import", "witches_brew", "--source", str(src), "--data", str(clean_folder), "--out", str(tmp_path / "out")])
    got, spec = imported(tmp_path / "out")
    assert torch.equal(got.images, poisoned.images) and torch.equal(got.labels, train.labels)
    assert spec["poison_indices"] == train.ids[POISONED_ROWS].tolist()
    assert [(t["id"], t["true_class"], t["intended_class"]) for t in spec["targets"]] == [(int(test.ids[4]), int(test.labels[4]), 3)]
    test_ids = {int(p.stem) for p in (tmp_path / "out" / "test").rglob("*.png")}
    assert test_ids == set(test.ids.tolist()) - {int(test.ids[4])}  # the target left the clean test split


def test_witches_brew_numpy_pair_round_trips(tmp_path, clean_folder, reference):
    train, test, classes = reference
    poisoned = perturbed(train)
    src = tmp_path / "wb"
    src.mkdir()
    order = torch.argsort(poisoned.ids)  # row r of the NumPy pair is the clean set's r-th image
    np.save(src / "poisoned_training_data.npy", poisoned.images[order].permute(0, 2, 3, 1).numpy().astype(np.float64))
    np.save(src / "poisoned_training_labels.npy", poisoned.labels[order].numpy().astype(np.float64))
    save(src / "targets" / classes[1] / f"{int(test.ids[2])}.png", test.images[2])
    flags = ["poison", "--import", "witches_brew", "--source", str(src), "--data", str(clean_folder), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--targets"):
        main([*flags[:-2], "--out", str(tmp_path / "no_targets"), "--targets", str(tmp_path / "nowhere")])
    main(flags)
    got, spec = imported(tmp_path / "out")
    assert torch.equal(got.images, poisoned.images[order]) and torch.equal(got.labels, poisoned.labels[order])
    assert spec["poison_indices"] == sorted(train.ids[POISONED_ROWS].tolist())
    assert len(list((tmp_path / "out" / "test").rglob("*.png"))) == len(test) - 1  # the clean test split, less the target


def write_backdoorbench(src: Path, train: Split, test: Split, indicator_payload) -> tuple[torch.Tensor, list[int]]:
    """A BackdoorBench-like record: bd_train_dataset/<label>/<index>.png for the poisoned samples only (a white
    corner, label 0), attack_result.pt with the indicator, and bd_test_dataset/0/<index>.png."""
    flags = np.zeros(len(train), dtype=np.int64)
    flags[POISONED_ROWS] = 1
    patched = train.images.clone()
    patched[:, :, -2:, -2:] = 255
    for r in POISONED_ROWS:
        save(src / "bd_train_dataset" / "0" / f"{int(train.ids[r])}.png", patched[r])
    test_patched = test.images.clone()
    test_patched[:, :, -2:, -2:] = 255
    others = [r for r in range(len(test)) if int(test.labels[r]) != 0]
    for r in others:
        save(src / "bd_test_dataset" / "0" / f"{int(test.ids[r])}.png", test_patched[r])
    torch.save({"bd_train": {"poison_indicator": indicator_payload(flags)}}, src / "attack_result.pt")
    return patched, others


def test_backdoorbench_record_round_trips_and_tests_on_its_own_triggered_images(tmp_path, clean_folder, reference):
    train, test, _ = reference
    src = tmp_path / "bb"
    patched, others = write_backdoorbench(src, train, test, lambda flags: flags)
    out = tmp_path / "out"
    main(["poison", "--import", "backdoorbench", "--source", str(src), "--data", str(clean_folder), "--out", str(out)])
    got, spec = imported(out)
    rows = torch.as_tensor(POISONED_ROWS)
    assert torch.equal(got.images[rows], patched[rows]) and (got.labels[rows] == 0).all()
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(got.images[rest], train.images[rest]) and torch.equal(got.labels[rest], train.labels[rest])
    assert spec["poison_indices"] == train.ids[rows].tolist() and spec["target_class"] == 0
    assert spec["trigger"] == {"mode": "images", "folder": "poison_test", "magnification": 1.0}
    dm = PoisonedSetDataModule(str(out), batch_size=8)
    dm.setup("test")
    assert len(dm.poison_test_set) == len(others) and set(dm.poison_test_set.labels) == {0}
    assert (dm.poison_test_set[0][0][:, -2:, -2:] == 255).all()


def test_backdoorbench_pickled_objects_need_trust(tmp_path, clean_folder, reference):
    train, test, _ = reference
    src = tmp_path / "bb"
    write_backdoorbench(src, train, test, lambda flags: Counted(flags))
    flags = ["poison", "--import", "backdoorbench", "--source", str(src), "--data", str(clean_folder)]
    with pytest.raises(SystemExit, match="--trust_pickle"):
        main([*flags, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    main([*flags, "--out", str(tmp_path / "out"), "--trust_pickle"])
    assert imported(tmp_path / "out")[1]["poison_indices"] == train.ids[POISONED_ROWS].tolist()


class Counted(np.ndarray):
    """An array subclass: pickled as a Python class, which weights_only loading refuses."""

    def __new__(cls, values):
        return np.asarray(values).view(cls)


def test_narcissus_trigger_array_is_applied_on_the_pixel_grid_to_the_budget(tmp_path, clean_folder, reference):
    train, _, _ = reference
    trigger = (np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)) * 16 / 127.5).astype(np.float32)
    np.save(tmp_path / "trigger.npy", trigger)
    main(["poison", "--import", "narcissus_trigger", "--source", str(tmp_path / "trigger.npy"), "--data", str(clean_folder),
          "--target_class", "1", "--budget", "0.05", "--out", str(tmp_path / "out")])
    got, spec = imported(tmp_path / "out")
    rows = torch.isin(got.ids, torch.as_tensor(spec["poison_indices"]))
    assert int(rows.sum()) == spec["poison_count"] == round(0.05 * len(train)) and (train.labels[rows] == 1).all()
    steps = torch.as_tensor(trigger[0] * 127.5).round().int()
    assert torch.equal(got.images[rows].int(), (train.images[rows].int() + steps).clamp(0, 255))
    assert torch.equal(got.images[~rows], train.images[~rows]) and torch.equal(got.labels, train.labels)
    assert spec["epsilon_255"] == int(steps.abs().max()) <= 16 and 0 < spec["rounding_255"] <= 0.5
    stored = np.load(tmp_path / "out" / "trigger.npy") * 127.5
    assert np.allclose(stored, np.round(stored), atol=1e-4)


def test_just_how_toxic_pickles_are_read_only_when_trusted(tmp_path, clean_folder, reference):
    train, test, _ = reference
    src = tmp_path / "jht"
    src.mkdir()
    poisons = [(chw_to_pil((perturbed(train).images[r])), int(train.labels[r])) for r in POISONED_ROWS]
    for name, obj in (("poisons.pickle", poisons), ("target.pickle", (chw_to_pil((test.images[0])), int(test.labels[0]))),
                      ("base_indices.pickle", train.ids[POISONED_ROWS])):  # a tensor, as Witches' Brew's benchmark export writes
        with open(src / name, "wb") as f:
            pickle.dump(obj, f)
    flags = ["poison", "--import", "just_how_toxic", "--source", str(src), "--data", str(clean_folder), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--trust_pickle"):
        main(flags)
    main([*flags, "--trust_pickle"])
    got, spec = imported(tmp_path / "out")
    assert torch.equal(got.images, perturbed(train).images) and torch.equal(got.labels, train.labels)
    assert spec["poison_indices"] == train.ids[POISONED_ROWS].tolist()
    (target,) = spec["targets"]
    assert target["true_class"] == int(test.labels[0])
    assert target["intended_class"] == int(train.labels[POISONED_ROWS[0]])  # the poisons' class
    assert spec["clean_label"] is True


@pytest.mark.parametrize("where", ["beside", "flag"])
def test_backdoorbench_indicator_as_a_numpy_file(tmp_path, clean_folder, reference, where):
    train, test, _ = reference
    src = tmp_path / "bb"
    write_backdoorbench(src, train, test, lambda flags: flags)
    flags = torch.load(src / "attack_result.pt", weights_only=False)["bd_train"]["poison_indicator"]
    (src / "attack_result.pt").unlink()
    path = src / "poison_indicator.npy" if where == "beside" else tmp_path / "mine.npy"
    np.save(path, flags)
    extra = [] if where == "beside" else ["--poison_indicator", str(path)]
    main(["poison", "--import", "backdoorbench", "--source", str(src), "--data", str(clean_folder), "--out", str(tmp_path / "out"), *extra])
    assert imported(tmp_path / "out")[1]["poison_indices"] == train.ids[POISONED_ROWS].tolist()


def test_narcissus_trigger_of_shape_chw_is_accepted_and_a_batch_of_triggers_refused(tmp_path, clean_folder):
    trigger = np.full((3, 8, 8), 4 / 127.5, dtype=np.float32)
    np.save(tmp_path / "t.npy", trigger)
    flags = ["poison", "--import", "narcissus_trigger", "--data", str(clean_folder), "--budget", "0.05"]
    spec = main([*flags, "--source", str(tmp_path / "t.npy"), "--out", str(tmp_path / "out")]) or imported(tmp_path / "out")[1]
    assert spec["epsilon_255"] == 4 and spec["linf_255"] == 4
    np.save(tmp_path / "t2.npy", np.stack([trigger, trigger]))
    with pytest.raises(SystemExit, match="expected \\(1, C, H, W\\) or \\(C, H, W\\)"):
        main([*flags, "--source", str(tmp_path / "t2.npy"), "--out", str(tmp_path / "out2")])
