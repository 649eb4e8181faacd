"""Contracts every registered attack and defense keeps (parametrised over the registries, so a new plug-in is
tested as soon as its module exists), the two plug-ins added through those slots (WaNet, Friendly Noise), and
the package's layering (no import cycle between its packages; pixel helpers and errors from one place)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pureebm_lightning.cli import main
from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.defense import Defense, run_key
from pureebm_lightning.defenses import DEFENSES
from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_signed_unit, to_uint8
from pureebm_lightning.poison_spec import PoisonSpec
from pureebm_lightning.poisoning.attacks import ATTACKS
from pureebm_lightning.poisoning.clean_data import load_clean_data
from pureebm_lightning.purification.purified_store import STATE_DIR, PurifiedStore
from pureebm_lightning.sources import open_source

from .conftest import QUIET_PURIFY, ROOT, TINY_ATTACK, TINY_POISON_DATA, tiny_defense, write_digit_folder

PACKAGE = ROOT / "pureebm_lightning"


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pureebm"])


def test_every_registered_plugin_has_a_tiny_run_in_conftest():
    assert set(ATTACKS.names()) == set(TINY_ATTACK), "add the new attack's smallest run to TINY_ATTACK in conftest.py"
    for name in DEFENSES.names():
        tiny_defense(name, Path("ebm.ckpt"))  # a KeyError names a defense without its line in conftest.py


# ---- attacks ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ATTACKS.names())
def test_every_attack_writes_a_bounded_poisoned_folder_whose_trigger_the_data_module_applies(attack, tmp_path, request):
    extra, largest_change, largest_share = TINY_ATTACK[attack]
    if "{ebm}" in extra:  # a defense-aware attack: the EBM it attacks
        extra = [str(request.getfixturevalue("grey_ebm")) if e == "{ebm}" else e for e in extra]
    out = tmp_path / attack
    main(["poison", attack, "--out", str(out), *TINY_POISON_DATA, *extra])  # the attack's name as the first argument
    written = json.loads((out / "poison.json").read_text())
    assert written["attack"] == attack and written["command"]["attack"] == attack
    clean = load_clean_data("digits", written["holdout"], written["split_seed"], 8)
    assert written["train_count"] == len(clean.train)
    if largest_change is not None:
        assert written["linf_255"] <= largest_change
    assert len(written["changed_pixels_ids"]) <= round(largest_share * len(clean.train)) + 1  # within the budget
    assert set(written["changed_pixels_ids"]) <= set(written["poison_indices"])  # nothing outside the poison set moved
    poisoned = open_source(out)
    assert len(poisoned) == len(clean.train) and poisoned.shape == (1, 8, 8)
    spec = PoisonSpec.find(out)
    dm = PoisonedSetDataModule(str(out), batch_size=16)
    dm.setup("test")
    if attack == "none":
        assert spec is None and written["poison_count"] == 0 and written["linf_255"] == 0
        return
    assert written["poison_count"] >= 1 and written["linf_255"] > 0
    if spec.kind == "targeted":
        assert len(dm.poison_test_set) == len(spec.targets) >= 1
        return
    x = to_signed_unit(clean.test.images[:16])
    triggered = dm.add_trigger(x)
    assert triggered.shape == x.shape and triggered.abs().max() <= 1 and not torch.equal(triggered, x)
    assert len(dm.poison_test_set) > 0


def test_an_attacks_options_come_from_its_signature(capsys):
    main(["poison", "wanet", "--help"])
    text = capsys.readouterr().out
    for option, default in (("--cross_ratio", "2.0"), ("--k", "4"), ("--strength", "0.5"), ("--budget", "0.1")):
        assert option in text and f"default: {default}" in text.split(option, 2)[-1][:400], option
    with pytest.raises(SystemExit):  # another attack's option is refused
        main(["poison", "wanet", "--out", "x", "--epsilon", "8"])
    with pytest.raises(SystemExit, match=r"^pureebm poison: error: unknown attack 'no_such_attack': the attacks are .*\bbadnets, blended, "):
        main(["poison", "no_such_attack", "--out", "x"])


# ---- defenses --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("defense", DEFENSES.names())
def test_every_defense_resumes_after_a_kill_and_records_its_settings(defense, tmp_path, grey_ebm, monkeypatch):
    data = tmp_path / "poisoned"
    keys = write_digit_folder(data, 20)
    args = ["purify", f"--data={data}", "--batch_size=8", *tiny_defense(defense, grey_ebm), *QUIET_PURIFY]
    main([*args, f"--out={tmp_path / 'whole'}"])

    learns = DEFENSES[defense].fit is not Defense.fit
    write, calls = PurifiedStore.write, []

    def write_then_die(self, indices, images, rank=0, **steps):
        if calls:
            assert self.state_dir.exists() == learns  # what the defense learned is kept for the resumed run
            raise KeyboardInterrupt  # killed during the second block
        calls.append(indices)
        write(self, indices, images, rank, **steps)

    monkeypatch.setattr(PurifiedStore, "write", write_then_die)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful exit
        main([*args, f"--out={out}"])
    assert len(list(out.rglob("*.png"))) == 8 and not json.loads((out / "manifest.json").read_text())["complete"]
    monkeypatch.setattr(PurifiedStore, "write", write)
    monkeypatch.setattr("pureebm_lightning.surrogate.train_surrogate", lambda *a, **k: pytest.fail("learned again on resume"))
    main([*args, f"--out={out}"])
    for key in keys:  # blocks are seeded by (seed, block): the resumed output is the uninterrupted one
        assert (out / key).read_bytes() == (tmp_path / "whole" / key).read_bytes(), key
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["defense"] == defense and not (out / STATE_DIR).exists()
    identity = {k: manifest[k] for k in manifest["identity"]}
    assert manifest["run_key"] == run_key(identity) and identity["source"] == str(data.resolve())
    changed = [(out / k).read_bytes() != (data / k).read_bytes() for k in keys]
    assert sum(changed) >= 10  # the defense did something to most images


# ---- WaNet -----------------------------------------------------------------------------------------------------
def test_wanet_warps_poisons_with_the_field_the_test_trigger_uses(tmp_path):
    from pureebm_lightning.poisoning.attacks.wanet import warp, warp_grid

    identity = warp_grid(8, 8, strength=1e-9)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.allclose(warp(x, identity, {}, 1.0), x, atol=1e-5)  # a zero field moves nothing
    grid = warp_grid(16, 16, k=4, strength=0.5, generator=torch.Generator().manual_seed(0))
    assert grid.shape == (1, 16, 16, 2) and grid.abs().max() <= 1
    moved = (grid - warp_grid(16, 16, strength=1e-9)).abs()
    assert 0 < moved.max() * 16 / 2 < 2  # the field moves pixels by a fraction of a pixel to about one (s = 0.5)

    out = tmp_path / "wanet"
    main(["poison", "--attack", "wanet", "--out", str(out), *TINY_POISON_DATA, "--budget", "0.05", "--target_class", "3",
          "--strength", "1.0"])
    spec = json.loads((out / "poison.json").read_text())
    clean = load_clean_data("digits", spec["holdout"], spec["split_seed"], 8)
    source = open_source(out)
    row_of = {int(Path(k).stem): i for i, k in enumerate(source.keys)}
    field = torch.from_numpy(np.load(out / "trigger.npy"))
    assert spec["trigger"]["mode"] == "warp" and field.shape == (1, 8, 8, 2)
    backdoor, noise = spec["backdoor_ids"], spec["noise_mode_ids"]
    assert len(noise) == 2 * len(backdoor) and not set(noise) & set(backdoor)
    rows = {int(i): r for r, i in enumerate(clean.train.ids.tolist())}
    for i in backdoor:  # relabelled, and exactly the test-time trigger applied to the clean image
        assert source.labels[row_of[i]] == 3 and int(clean.train.labels[rows[i]]) != 3
        expected = to_uint8(warp(to_signed_unit(clean.train.images[rows[i]][None]), field, {}, 1.0))[0]
        assert torch.equal(source.load(row_of[i]), expected)
    for i in noise:  # warped with noise, labels kept
        assert source.labels[row_of[i]] == int(clean.train.labels[rows[i]])


# ---- Friendly Noise --------------------------------------------------------------------------------------------
def test_friendly_noise_is_bounded_keeps_the_models_outputs_and_is_large(tmp_path, monkeypatch):
    from pureebm_lightning.defenses.friendly_noise import MODEL_FILE, FriendlyNoise

    data = tmp_path / "set"
    write_digit_folder(data, 120)
    source = open_source(data)
    defense = FriendlyNoise(epsilon=16, random_noise=0, steps=30, model_epochs=5, seed=0)
    defense.fit(source, tmp_path / "state")
    assert (tmp_path / "state" / MODEL_FILE).is_file()
    images = torch.stack([source.load(i) for i in range(len(source))])
    noisy = defense(images, first_index=0)
    change = (noisy.int() - images.int()).abs()
    assert noisy.dtype == torch.uint8 and change.max() <= 16
    assert change.float().mean() >= 3  # as large as the model allows: several 1/255 steps on average
    with torch.no_grad():
        before = defense.model(to_signed_unit(images)).argmax(1)
        after = defense.model(to_signed_unit(noisy)).argmax(1)
    assert (before == after).float().mean() >= 0.9  # the model's outputs are kept
    def no_training(*args, **kwargs):
        raise AssertionError("the kept model must be loaded, not trained again")

    monkeypatch.setattr("pureebm_lightning.surrogate.train_surrogate", no_training)
    again = FriendlyNoise(epsilon=16, random_noise=0, steps=30, model_epochs=5, seed=0)
    again.fit(source, tmp_path / "state")  # loaded: the same model, the same noise
    assert torch.equal(again(images, first_index=0), noisy)
    with_random = FriendlyNoise(epsilon=16, random_noise=8, steps=30, model_epochs=5, seed=0)
    with_random.fit(source, tmp_path / "state")
    moved = (with_random(images).int() - images.int()).abs()
    assert moved.max() <= 16 + 8 and (moved > 16).any()  # the random part comes on top of the friendly one
    with pytest.raises(PoisonedDataError, match="uint8"):
        with_random(to_signed_unit(images))  # floats are refused, not read as pixels


# ---- layering --------------------------------------------------------------------------------------------------
def _imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pureebm_lightning"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("pureebm_lightning")]
    return found


def _unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: pureebm_lightning.poisoning.attacks.x -> poisoning."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pureebm_lightning"


def test_no_import_cycle_between_packages_and_modules():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for target, _ in _imports(path):
            a, b = _unit(module), _unit(target)
            if a != b and "pureebm_lightning" not in (a, b):  # packages and top-level modules alike
                graph.setdefault(a, set()).add(b)
    seen, stack = set(), []

    def visit(node: str) -> None:
        if node in stack:
            raise AssertionError("import cycle between packages: " + " -> ".join([*stack[stack.index(node):], node]))
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)
    assert {"purification", "defenses"} <= graph["data"] and "defense" in graph["defenses"]  # the check saw the layers


def test_pixel_helpers_and_errors_come_from_their_own_modules():
    owners = {}
    for owner in ("images", "errors", "splits"):
        tree = ast.parse((PACKAGE / f"{owner}.py").read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                owners[node.name] = f"pureebm_lightning.{owner}"
    wrong = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for module, names in _imports(path):
            wrong += [f"{path.name}: {name} from {module}" for name in names if name in owners and owners[name] != module]
    assert not wrong


def test_an_output_from_before_manifests_listed_their_identity_still_resumes(tmp_path, grey_ebm):
    data, out = tmp_path / "poisoned", tmp_path / "out"
    keys = write_digit_folder(data, 20)
    args = ["purify", f"--data={data}", f"--out={out}", "--batch_size=8", *tiny_defense("pureebm", grey_ebm), *QUIET_PURIFY]
    main(args)
    whole = {k: (out / k).read_bytes() for k in keys}
    manifest = json.loads((out / "manifest.json").read_text())
    # the previous release's manifest: no identity list, no run key, no numerics keys; the run killed midway
    legacy = {k: v for k, v in manifest.items() if k not in ("identity", "run_key", "precision", "tf32")}
    (out / "manifest.json").write_text(json.dumps({**legacy, "complete": False, "purified": 8}))
    for key in keys[8:]:
        (out / key).unlink()
    main(args)
    assert {k: (out / k).read_bytes() for k in keys} == whole
    assert json.loads((out / "manifest.json").read_text())["complete"]
