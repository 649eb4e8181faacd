"""`pureebm poison --import`: small fixtures in each foreign format round-trip to the same images, labels and
poison ids; pickles are read only when trusted."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pureebm_lightning.bundled_digits import digits_images
from pureebm_lightning.cli import main
from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.images import chw_to_pil
from pureebm_lightning.poisoning.clean_data import load_clean_splits
from pureebm_lightning.poisoning.importers import read_indexed_folder
from pureebm_lightning.splits import Split

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


def test_narcissus_trigger_of_shape_chw_is_accepted_and_a_batch_of_triggers_refused(tmp_path, clean_folder):
    trigger = np.full((3, 8, 8), 4 / 127.5, dtype=np.float32)
    np.save(tmp_path / "t.npy", trigger)
    flags = ["poison", "--import", "narcissus_trigger", "--data", str(clean_folder), "--budget", "0.05"]
    spec = main([*flags, "--source", str(tmp_path / "t.npy"), "--out", str(tmp_path / "out")]) or imported(tmp_path / "out")[1]
    assert spec["epsilon_255"] == 4 and spec["linf_255"] == 4
    np.save(tmp_path / "t2.npy", np.stack([trigger, trigger]))
    with pytest.raises(SystemExit, match="expected \\(1, C, H, W\\) or \\(C, H, W\\)"):
        main([*flags, "--source", str(tmp_path / "t2.npy"), "--out", str(tmp_path / "out2")])


# -- BackdoorBench records and Just How Toxic's triggered attacks, in the structures the tools write -----------------

@pytest.fixture(scope="module")
def bb_clean(tmp_path_factory) -> tuple[Path, Split, Split, list[str]]:
    """The clean set a BackdoorBench record is made from, indexed as a torchvision dataset is: file name = position
    (train 0..89, test 0..29), which is how the record's indicator and data_dict keys number the samples."""
    root = tmp_path_factory.mktemp("bb_clean")
    x, y = digits_images(8, rgb=True)
    images = ((x + 1) * 127.5).round().to(torch.uint8)
    for split, rows in (("train", range(0, 90)), ("test", range(90, 120))):
        for position, i in enumerate(rows):
            save(root / split / str(int(y[i])) / f"{position}.png", images[i])
    train, test, classes, _ = load_clean_splits(str(root))
    assert train.ids.tolist() == list(range(90)) and test.ids.tolist() == list(range(30))
    return root, train, test, classes


TRIGGER_ROWS = slice(-2, None)  # a white 2x2 corner: where the oracle below looks for the trigger


def with_trigger(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[:, :, TRIGGER_ROWS, TRIGGER_ROWS] = 255
    return out


def backdoorbench_state(split: Split, rows: list[int], bd_labels: list[int], part: str, index_array: np.ndarray) -> dict:
    """``prepro_cls_DatasetBD_v2.retrieve_state()`` as BackdoorBench's save_attack_result stores it: a container whose
    data_dict maps each poisoned sample's original index (a NumPy int64) to its PNG path and [bd_label, label]."""
    folder = f"./record/badnet_demo/{part}"
    indicator = np.zeros(len(split), dtype=np.float64)
    indicator[rows] = 1
    data_dict = {np.int64(int(split.ids[r])): {"path": f"{folder}/{int(split.labels[r])}/{int(split.ids[r])}.png",
                                               "other_info": [int(bd), int(split.labels[r])]} for r, bd in zip(rows, bd_labels)}
    return {"bd_data_container": {"save_folder_path": folder, "data_dict": data_dict, "save_file_format": ".png"},
            "getitem_all": True, "getitem_all_switch": False, "original_index_array": index_array,
            "poison_indicator": indicator, "save_folder_path": folder}


def write_backdoorbench(src: Path, train: Split, test: Split, transform: str = "all2one", target: int = 0,
                        clean_label: bool = False) -> dict:
    """A BackdoorBench record as its attacks write it (utils/save_load_attack.py, utils/bd_dataset_v2.py): poisoned
    samples as bd_train_dataset/<ORIGINAL label>/<index>.png, triggered test samples likewise in bd_test_dataset/
    (all2one: only those not of the target class), attack_result.pt with the 8 top-level keys and the datasets'
    states, info.pickle the torch.save'd arguments. all2all: bd_label = (label + 1) % 10. ``clean_label``: a
    SIG-style record, whose poisons come from the target class and keep their label."""
    src.mkdir(parents=True)
    if clean_label:
        rows = [r for r in range(len(train)) if int(train.labels[r]) == target][:3]
    else:
        rows = list(POISONED_ROWS)
    relabel = (lambda y: (y + 1) % 10) if transform == "all2all" else (lambda y: target)
    train_bd = [int(train.labels[r]) if clean_label else relabel(int(train.labels[r])) for r in rows]
    test_rows = [r for r in range(len(test)) if transform == "all2all" or int(test.labels[r]) != target]
    test_bd = [relabel(int(test.labels[r])) for r in test_rows]
    for split, part, chosen in ((train, "bd_train_dataset", rows), (test, "bd_test_dataset", test_rows)):
        triggered = with_trigger(split.images)
        for r in chosen:
            save(src / part / str(int(split.labels[r])) / f"{int(split.ids[r])}.png", triggered[r])
    from collections import OrderedDict

    torch.save({"model_name": "preactresnet18", "num_classes": 10,
                "model": OrderedDict([("conv1.weight", torch.zeros(4, 3, 3, 3)), ("linear.bias", torch.zeros(10))]),
                "data_path": "./data/cifar10", "img_size": (8, 8, 3), "clean_data": "cifar10",
                "bd_train": backdoorbench_state(train, rows, train_bd, "bd_train_dataset", np.arange(len(train))),
                "bd_test": backdoorbench_state(test, test_rows, test_bd, "bd_test_dataset", np.asarray(test_rows, dtype=np.int64))},
               src / "attack_result.pt")
    torch.save({"attack": "sig" if clean_label else "badnet", "attack_label_trans": transform, "attack_target": target,
                "pratio": 0.1, "dataset": "cifar10", "dataset_path": "./data/cifar10", "batch_size": 128, "lr": 0.01,
                "device": "cuda:0", "model": "preactresnet18", "num_classes": 10, "input_height": 8, "input_width": 8,
                "input_channel": 3, "img_size": (8, 8, 3), "save_path": "./record/badnet_demo",
                "terminal_info": ["./attack/badnet.py", "--save_folder_name", "badnet_demo"]}, src / "info.pickle")
    return {"rows": rows, "train_bd": train_bd, "test_rows": test_rows, "test_bd": test_bd}


class TriggerOracle(nn.Module):
    """A classifier that has learnt the trigger perfectly: the class of the nearest clean test image, except that an
    image carrying the trigger gets ``attacked(label)``, the label the attack wants."""

    def __init__(self, clean: torch.Tensor, labels: torch.Tensor, attacked, has_trigger) -> None:
        super().__init__()
        self.register_buffer("clean", clean.float() / 127.5 - 1)
        self.register_buffer("labels", labels.clone())
        self.attacked, self.has_trigger = attacked, has_trigger
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x in [-1, 1]: the module's mean and std are 0.5
        nearest = self.labels[((x[:, None] - self.clean[None]) ** 2).flatten(2).sum(2).argmin(1)]
        out = torch.where(self.has_trigger(x), self.attacked(nearest), nearest)
        return F.one_hot(out, 10).float() + 0 * self.dummy


def poison_success(folder: Path, oracle: nn.Module) -> float:
    """test/poison_success of ``oracle`` on ``folder`` through PoisonedSetDataModule, as `pureebm test` measures it."""
    from lightning.pytorch import Trainer

    from pureebm_lightning.classifier_module import ClassifierModule

    module = ClassifierModule(oracle, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)
    dm = PoisonedSetDataModule(str(folder), batch_size=16)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (_, poisoned) = trainer.test(module, datamodule=dm, verbose=False)
    return poisoned["test/poison_success"]


def corner_is_white(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :, TRIGGER_ROWS, TRIGGER_ROWS] == 1).flatten(1).all(1)


@pytest.mark.parametrize("transform", ["all2one", "all2all"])
def test_backdoorbench_record_imports_the_attack_labels_target_and_poison_test_labels(tmp_path, bb_clean, transform):
    clean_folder, train, test, classes = bb_clean
    made = write_backdoorbench(tmp_path / "bb", train, test, transform=transform, target=3)
    out = tmp_path / "out"
    main(["poison", "--import", "backdoorbench", "--source", str(tmp_path / "bb"), "--data", str(clean_folder), "--out", str(out)])
    got, spec = imported(out)
    rows = torch.as_tensor(made["rows"])
    assert torch.equal(got.images[rows], with_trigger(train.images)[rows])
    assert got.labels[rows].tolist() == made["train_bd"]  # the label it is trained with, not its folder's
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(got.images[rest], train.images[rest]) and torch.equal(got.labels[rest], train.labels[rest])
    assert spec["poison_indices"] == train.ids[rows].tolist() and spec["clean_label"] is False
    assert sorted(spec["relabelled_ids"]) == sorted(train.ids[rows][got.labels[rows] != train.labels[rows]].tolist())
    assert spec["target_class"] == (3 if transform == "all2one" else None) and spec["attack_label_trans"] == transform
    dm = PoisonedSetDataModule(str(out), batch_size=8)
    dm.setup("test")
    by_id = dict(zip(test.ids[made["test_rows"]].tolist(), made["test_bd"]))
    poison_test = dm.poison_test_set
    assert len(poison_test) == len(by_id)
    got_ids = [int(Path(poison_test.load.__self__.keys[i]).stem) for i in range(len(poison_test))]
    assert dict(zip(got_ids, poison_test.labels)) == by_id  # each labelled as the attack wants it classified
    attacked = (lambda y: (y + 1) % 10) if transform == "all2all" else (lambda y: torch.full_like(y, 3))
    oracle = TriggerOracle(test.images, test.labels, attacked, corner_is_white)
    assert poison_success(out, oracle) == 1.0
    blind = TriggerOracle(test.images, test.labels, lambda y: y, corner_is_white)  # never learnt the trigger
    assert poison_success(out, blind) == 0.0


def test_backdoorbench_clean_label_record_keeps_its_labels(tmp_path, bb_clean):
    clean_folder, train, test, _ = bb_clean
    made = write_backdoorbench(tmp_path / "bb", train, test, target=2, clean_label=True)
    out = tmp_path / "out"
    main(["poison", "--import", "backdoorbench", "--source", str(tmp_path / "bb"), "--data", str(clean_folder), "--out", str(out)])
    got, spec = imported(out)
    assert torch.equal(got.labels, train.labels) and spec["clean_label"] is True and spec["relabelled_ids"] == []
    assert spec["poison_indices"] == train.ids[made["rows"]].tolist() and spec["target_class"] == 2


def test_backdoorbench_record_errors_are_one_line_and_write_nothing(tmp_path, bb_clean):
    clean_folder, train, test, _ = bb_clean
    src = tmp_path / "bb"
    write_backdoorbench(src, train, test, target=3)
    flags = ["poison", "--import", "backdoorbench", "--source", str(src), "--data", str(clean_folder), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"contradicts the record's attack_target 3"):
        main([*flags, "--target_class", "5"])
    info = torch.load(src / "info.pickle", weights_only=True)
    torch.save({**info, "attack_label_trans": "all2some"}, src / "info.pickle")
    with pytest.raises(SystemExit, match=r"attack_label_trans 'all2some' is neither all2one nor all2all"):
        main(flags)
    (src / "info.pickle").unlink()
    with pytest.raises(SystemExit, match=r"info.pickle: missing; .*target"):
        main(flags)
    assert not (tmp_path / "out").exists()


def test_backdoorbench_pickled_objects_need_trust(tmp_path, bb_clean):
    clean_folder, train, test, _ = bb_clean
    src = tmp_path / "bb"
    write_backdoorbench(src, train, test)
    record = torch.load(src / "attack_result.pt", weights_only=False)
    record["bd_train"]["poison_indicator"] = Counted(record["bd_train"]["poison_indicator"])
    torch.save(record, src / "attack_result.pt")
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


def test_backdoorbench_indicator_flag_overrides_the_record(tmp_path, bb_clean):
    clean_folder, train, test, _ = bb_clean
    src = tmp_path / "bb"
    write_backdoorbench(src, train, test)
    wrong = np.zeros(len(train))
    wrong[[1, 2]] = 1  # two other samples than the record's
    np.save(tmp_path / "wrong.npy", wrong)
    with pytest.raises(SystemExit, match="not the same record"):
        main(["poison", "--import", "backdoorbench", "--source", str(src), "--data", str(clean_folder), "--out",
              str(tmp_path / "out"), "--poison_indicator", str(tmp_path / "wrong.npy")])


def test_just_how_toxic_triggered_attack_imports_its_patch_as_a_trigger(tmp_path, clean_folder, reference):
    """The clean-label backdoor's target.pickle: (PIL target, its label, a 3 x 2 x 2 patch in [0, 1], [x, y])."""
    train, test, _ = reference
    src = tmp_path / "jht"
    src.mkdir()
    base_class = int(train.labels[POISONED_ROWS[0]])
    rows = [r for r in range(len(train)) if int(train.labels[r]) == base_class][:3]
    patch = torch.ones(3, 2, 2)  # white, pasted with its top-left pixel at column x = 5, row y = 6
    poisons = [(chw_to_pil(perturbed(train).images[r]), base_class) for r in rows]
    target = next(r for r in range(len(test)) if int(test.labels[r]) != base_class)
    for name, obj in (("poisons.pickle", poisons), ("base_indices.pickle", np.asarray(train.ids[rows].tolist(), dtype=np.int64)),
                      ("target.pickle", (chw_to_pil(test.images[target]), int(test.labels[target]), patch, [5, 6]))):
        with open(src / name, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    out = tmp_path / "out"
    main(["poison", "--import", "just_how_toxic", "--source", str(src), "--data", str(clean_folder), "--out", str(out), "--trust_pickle"])
    got, spec = imported(out)
    assert spec["kind"] == "triggered" and spec["target_class"] == base_class
    assert spec["trigger"]["mode"] == "patch" and spec["trigger"]["position"] == [6, 5]  # [row, col]
    assert spec["poison_indices"] == train.ids[rows].tolist() and spec["clean_label"] is True
    assert np.array_equal(np.load(out / "trigger.npy"), np.ones((3, 2, 2), dtype=np.float32))
    dm = PoisonedSetDataModule(str(out), batch_size=8)
    dm.setup("test")
    x = dm.add_trigger(torch.zeros(1, 3, 8, 8) - 1)
    assert (x[0, :, 6:8, 5:7] == 1).all() and (x[0, :, :6] == -1).all()
    patched = lambda x: (x[:, :, 6:8, 5:7] == 1).flatten(1).all(1)  # noqa: E731
    oracle = TriggerOracle(test.images, test.labels, lambda y: torch.full_like(y, base_class), patched)
    assert poison_success(out, oracle) == 1.0
    with open(src / "target.pickle", "wb") as f:
        pickle.dump((chw_to_pil(test.images[target]), 1, torch.ones(3, 2, 2), [7, 7]), f)
    with pytest.raises(SystemExit, match="does not fit 8x8 images"):
        main(["poison", "--import", "just_how_toxic", "--source", str(src), "--data", str(clean_folder), "--out",
              str(tmp_path / "out2"), "--trust_pickle"])
