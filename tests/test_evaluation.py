"""`pureebm evaluate`: its pieces (data, defense objects, the T sweep is Psi_T, statistics, checks), its configs, and
its --quick runs end to end (digits; the two CIFAR-10 configs on a CIFAR-shaped folder the test writes)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pureebm_lightning import ConvNetEnergy, LangevinSampler, Purifier
from pureebm_lightning.evaluation.purified_sets import DistinctImages, purify_distinct
from pureebm_lightning.evaluation.report import counts, stats, targets

from .conftest import ROOT


def test_sweep_snapshots_are_the_purifications_at_each_T():
    """One chain with snapshots gives, at each T, exactly what Purifier(steps=T) (`pureebm purify`) gives."""
    torch.manual_seed(0)
    net = ConvNetEnergy(in_channels=1, image_size=16, num_filters=8)
    sampler = LangevinSampler(step_size=0.05, temperature=0.01)
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    out = purify_distinct(Purifier(net, sampler, steps=7, seed=3), images, images, [0, 3, 7], [0, 2, 3, 7], batch_size=4, label="test")
    assert torch.equal(out["snapshots"][0], images)
    for t in (3, 7):
        ref = Purifier(net, sampler, steps=t, seed=3)
        expected = torch.cat([ref(images[:4], first_index=0), ref(images[4:], first_index=4)])
        assert torch.equal(out["snapshots"][t], expected)
    assert not torch.equal(out["snapshots"][7], images)
    shifted = purify_distinct(Purifier(net, sampler, steps=7, seed=3), images[4:], images[4:], [7], [0], 4, "test", first_index=4)
    assert torch.equal(shifted["snapshots"][7], out["snapshots"][7][4:])  # rows keep their noise when purified apart
    assert out["l2_start"][:, 0].abs().max() == 0 and (out["l2_start"][:, -1] > 0).all()
    assert torch.allclose(out["l2_start"], out["l2_clean"])  # the originals given are the images themselves
    with torch.no_grad():
        assert torch.allclose(out["energy"][:, 0], net(images.float() / 127.5 - 1), atol=1e-5)


def test_distinct_images_are_stored_once():
    store = DistinctImages()
    a, b = torch.zeros(1, 4, 4, dtype=torch.uint8), torch.ones(1, 4, 4, dtype=torch.uint8)
    assert store.add(torch.stack([a, b]), torch.stack([a, a])) == [0, 1]
    assert store.add(torch.stack([b, a, b]), torch.stack([a, a, a])) == [1, 0, 1]
    assert len(store) == 2 and torch.equal(store.originals[1], a)


def test_statistics():
    s = stats([0.1, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(math.sqrt(0.02)) and s["max"] == 0.3 and s["n"] == 2
    assert stats([0.5])["sd"] == 0 and math.isnan(stats([])["mean"])
    assert counts([{"success_x1": 1.0}, {"success_x1": 0.0}, {"success_x1": 0.0}]) == "1/3 [6, 79] %"
    assert counts([]) == "not run"


def summary_with(none: dict, pure: dict, jpeg: dict, floor: dict, sweep: dict) -> dict:
    """A results.json-like summary: ``none``/``pure``/``jpeg``/``floor`` map attack -> success x1 (Narcissus: (x1, x3))."""
    def entry(success, natural=0.98, sd=0.01):
        x1, x3 = success if isinstance(success, tuple) else (success, None)
        e = {"success_x1": {"mean": x1, "sd": sd, "max": x1, "n": 3}, "natural": {"mean": natural, "sd": 0.002, "max": natural, "n": 3}}
        if x3 is not None:
            e["success_x3"] = {"mean": x3, "sd": sd, "max": x3, "n": 3}
        return e
    table = {a: {"none": entry(none[a]), "T150": entry(pure[a]), "jpeg": entry(jpeg[a])} for a in ("badnets", "blended", "narcissus")}
    table["gradient_matching"] = {"none": {"hits": 0, "targets": 30, "wilson": [0.0, 0.11]}}
    floors = {a: {k: v for k, v in entry(floor[a]).items() if k.startswith("success")} for a in floor}
    floors["gradient_matching"] = {"hits": 0, "targets": 30}
    sweep_rows = {a: [{"T": t, **entry(v, nat)} for t, (v, nat) in rows.items()] for a, rows in sweep.items()}
    return {"table": table, "floors": floors, "sweep": sweep_rows}


def test_target_checks_tell_met_from_not_met_and_not_measurable():
    sweep = {a: {0: (1.0, 0.985), 25: (0.9, 0.985), 150: (0.02, 0.984), 1000: (0.01, 0.95)} for a in ("badnets", "blended")}
    sweep["narcissus"] = {0: ((0.05, 0.7), 0.98), 25: ((0.05, 0.5), 0.98), 150: ((0.01, 0.2), 0.98), 1000: ((0.01, 0.2), 0.96)}
    measured = dict(none={"badnets": 1.0, "blended": 0.95, "narcissus": (0.05, 0.7)},
                    pure={"badnets": 0.5, "blended": 0.03, "narcissus": (0.01, 0.22)},
                    jpeg={"badnets": 1.0, "blended": 0.9, "narcissus": (0.05, 0.6)},
                    floor={"badnets": 0.0, "blended": 0.0, "narcissus": (0.01, 0.2)}, sweep=sweep)
    checks = targets(summary_with(**measured), 150)
    status = {name: c["status"] for name, c in checks.items()}
    assert status["blended_works"] == "met" and status["narcissus_works"] == "NOT met" and status["gm_works"] == "NOT met"
    assert status["blended_removed"] == "met" and status["narcissus_removed"].startswith("not measurable")
    assert status["narcissus_x3_to_floor"] == "met"  # 70 % -> 22 % at x3, floor 20 %
    assert status["beats_jpeg"] == "met"  # Blended 3 vs 90 %, Narcissus x3 22 vs 60 %
    assert status["window"] == "met" and status["badnets"] == "NOT met"
    no_gm = summary_with(**measured)
    no_gm["table"]["gradient_matching"]["none"] = {}  # attacks.gm_targets 0: Gradient Matching was not run
    assert targets(no_gm, 150)["gm_works"]["status"].startswith("not measurable (attacks.gm_targets is 0")
    tie = targets(summary_with(none={"badnets": 1.0, "blended": 0.95, "narcissus": (0.05, 0.7)},
                               pure={"badnets": 0.0, "blended": 0.89, "narcissus": (0.01, 0.65)},
                               jpeg={"badnets": 1.0, "blended": 0.9, "narcissus": (0.05, 0.6)},
                               floor={"badnets": 0.0, "blended": 0.0, "narcissus": (0.01, 0.2)}, sweep=sweep), 150)
    assert tie["beats_jpeg"]["status"] == "NOT met" and tie["blended_removed"]["status"] == "NOT met"


@pytest.mark.slow
def test_quick_digits_evaluation_writes_its_report_and_resumes(tmp_path):
    """The --quick run: every file, numbers in range, the protocol's split; a rerun reuses every finished piece."""
    out = tmp_path / "repro"
    cmd = [sys.executable, "-m", "pureebm_lightning", "evaluate", "--config", str(ROOT / "configs/evaluate/digits.yaml"),
           "--out", str(out), "--quick"]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, text=True)
    for name in ("results.md", "results.json", "results.csv", "victims.jsonl"):
        assert (out / name).stat().st_size > 0
    for name in ("sweep.png", "chain_curves.png", "pairs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "results.json").read_text())
    facts = summary["facts"]
    assert (facts["victim_images"], facts["holdout_images"], facts["test_images"]) == (1150, 288, 359)

    # the clean EBM's images are the held-out ones, disjoint from every victim's training split
    clean_spec = json.loads(next((out / "data").glob("clean-*/poison.json")).read_text())
    held_out = {int(p.stem) for p in (out / "data/ebm_holdout/train").rglob("*.png")}
    victim = {int(p.stem) for p in next((out / "data").glob("clean-*")).joinpath("train").rglob("*.png")}
    assert held_out == set(clean_spec["holdout_ids"]) and len(held_out) == 288 and not held_out & victim

    table = summary["table"]
    for attack, by_defense in table.items():
        for defense, entry in by_defense.items():
            for key in ("natural", "success_x1", "success_x3"):
                if key in entry and entry[key]["n"]:
                    assert 0 <= entry[key]["mean"] <= 1, (attack, defense, key)
    assert summary["clean_natural"]["mean"] > 0.9  # 5-epoch victims on clean digits
    assert table["badnets"]["none"]["success_x1"]["mean"] >= 0.8  # a 10 % BadNets patch works undefended
    assert summary["floors"]["badnets"]["success_x1"]["mean"] < 0.2
    assert table["blended"]["pureebm_poisoned"]["success_x1"]["n"] == 1
    assert [r["T"] for r in summary["poisoned_ebm"]["by_T"]] == [10, 20]
    assert table["gradient_matching"]["none"]["targets"] == 2
    assert [r["T"] for r in summary["sweep"]["blended"]] == [0, 10, 20]
    chain = summary["chain"]
    assert chain["clean images"]["count"] == 1150 and chain["Blended poisons"]["count"] == 115
    assert chain["clean images"]["l2_clean_0"] == 0 and chain["Blended poisons"]["l2_clean_0"] > 1
    assert set(summary["checks"]) >= {"badnets_works", "blended_removed", "narcissus_removed", "gm_works", "beats_jpeg", "window"}
    lines = (out / "victims.jsonl").read_text().splitlines()
    plugins = json.loads((out / "plugins.json").read_text())
    by_stage = {stage: [r for r in plugins if r["stage"] == stage] for stage in ("plugin_attack", "plugin_defense")}
    # the plug-in attack (WaNet) by none, JPEG, T 10, T 20; the plug-in defense (Friendly Noise) against each working attack
    assert sorted(r["defense"] for r in by_stage["plugin_attack"]) == ["T10", "T20", "jpeg", "none"]
    assert {r["attack"] for r in by_stage["plugin_attack"]} == {"wanet"}
    fn = by_stage["plugin_defense"]
    assert {r["defense"] for r in fn} == {"friendly_noise"} and "badnets" in {r["attack"] for r in fn}
    assert all(r["defense_settings"]["epsilon_255"] == 16 for r in fn)
    # clean, 3 attacks x (none, JPEG, T 10, T 20), poisoned EBM x 2 T, GM x 3, then the plug-ins' victims
    assert len(lines) == 1 + 3 * 4 + 2 + 2 * 3 + 4 + len(fn)
    assert "## Attacks and defenses added through the registries" in (out / "results.md").read_text()

    timings = json.loads((out / "timings.json").read_text())
    assert timings["total_s"] == timings["this_invocation_s"] and timings["total_s"]["victims"] > 0

    # resume: nothing is trained or crafted again, the report is rewritten from what was kept
    (out / "results.md").unlink()
    rerun = subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert (out / "victims.jsonl").read_text().splitlines() == lines
    assert "Wrote" not in rerun.stdout and "purify " not in rerun.stderr and "EBM " not in rerun.stdout
    assert (out / "results.md").is_file()

    # a changed defense setting is never served from the caches: new JPEG (and PureEBM) sets and victims, same poisons
    changed = subprocess.run(cmd + ["--defenses.jpeg_quality", "50"], check=True, cwd=tmp_path, capture_output=True, text=True)
    assert "Wrote" not in changed.stdout and "EBM " not in changed.stdout
    rows = [json.loads(line) for line in (out / "victims.jsonl").read_text().splitlines()]
    jpeg_sets = {tuple(row["key"].split("|")[:3]) for row in rows if row["defense"] == "jpeg"}
    assert len(rows) > len(lines) and len(jpeg_sets) == 6 * 2  # (3 triggered + 2 GM sets + WaNet) x 2 qualities
    assert json.loads((out / "results.json").read_text())["settings"]["defenses"]["jpeg_quality"] == 50


# ---------------------------------------------------------------------------------------------- data, settings, objects
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar_shaped(root: Path, per_class: int, test_per_class: int, size: int = 32) -> Path:
    """A folder in the layout of the CIFAR-10 JPEG copy (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg, numbers
    counted within each class) holding real images: the bundled digits, as RGB JPEGs at ``size``."""
    from PIL import Image

    from pureebm_lightning.bundled_digits import digits_images

    x, y = digits_images(size, rgb=True)
    pixels = ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for split, count, offset in (("train", per_class, 0), ("test", test_per_class, per_class)):
        for label, name in enumerate(CIFAR_CLASSES):
            rows = torch.nonzero(y == label).flatten()[offset : offset + count]
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for n, row in enumerate(rows.tolist()):
                Image.fromarray(pixels[row]).save(root / split / name / f"{n:04d}.jpg", quality=75)
    return root


def test_evaluation_data_writes_a_stated_subset_and_size_once(tmp_path):
    from pureebm_lightning.evaluation.dataset import EvaluationData
    from pureebm_lightning.sources import open_source

    root = write_cifar_shaped(tmp_path / "cifar", per_class=12, test_per_class=5)
    data = EvaluationData(root=str(root), image_size=16, train_per_class=8, test_per_class=3, grayscale=False)
    made = Path(data.prepare(tmp_path / "out"))
    train, test = open_source(made / "train"), open_source(made / "test")
    assert len(train) == 80 and len(test) == 30 and train.classes == CIFAR_CLASSES
    assert tuple(train.load(0).shape) == (3, 16, 16) and train.load(0).dtype == torch.uint8
    assert [train.labels.count(c) for c in range(10)] == [8] * 10
    stems = [int(Path(k).stem) for k in train.keys]
    assert len(set(stems)) == 80 and max(stems) < 120  # named by their position in the root's training split
    assert json.loads((made / "dataset.json").read_text())["images"] == {"train": 80, "test": 30}
    again = EvaluationData(root=str(root), image_size=16, train_per_class=8, test_per_class=3, grayscale=False)
    assert again.prepare(tmp_path / "out") == str(made)  # reused, not rewritten
    with pytest.raises(ValueError, match="other data settings"):
        EvaluationData(root=str(root), image_size=8, train_per_class=8, test_per_class=3, grayscale=False).prepare(tmp_path / "out")
    with pytest.raises(ValueError, match="fewer than 20 per class"):
        EvaluationData(root=str(root), train_per_class=20, grayscale=False).prepare(tmp_path / "other")
    assert EvaluationData().prepare(tmp_path / "digits") == "digits" and EvaluationData().poison_flags("digits") == []
    assert data.poison_flags(str(made)) == ["--data", str(made), "--holdout", "0.2"]


def test_defense_objects_carry_their_settings_and_labels():
    from pureebm_lightning.evaluation.defenses import JPEGDefense, NoDefense, PureEBMDefense

    assert (NoDefense().label, NoDefense().steps) == ("none", 0)
    assert (JPEGDefense(75).label, JPEGDefense(75).quality, JPEGDefense(75).steps) == ("jpeg", 75, 0)
    assert (PureEBMDefense(150).label, PureEBMDefense(150).steps) == ("T150", 150)
    assert PureEBMDefense(150, "poisoned", main=True).label == "pureebm_poisoned"
    assert PureEBMDefense(300, "poisoned").label == "pureebm_poisoned_T300"
    assert PureEBMDefense(150) != PureEBMDefense(150, "poisoned") and JPEGDefense(75) != JPEGDefense(50)


def test_settings_resolve_quick_and_refuse_a_main_T_outside_the_sweep():
    from pureebm_lightning.evaluation.command import settings

    quick = settings(["--config", str(ROOT / "configs/evaluate/digits.yaml"), "--quick"]).resolved()
    assert quick.defenses.sweep == [0, 10, 20] and quick.attacks.target_classes == [0] and quick.ebm.steps == 12
    assert quick.plugins.sweep == [0, 10, 20]
    full = settings(["--config", str(ROOT / "configs/evaluate/digits.yaml"), "--defenses.sweep", "[150, 0, 25]"]).resolved()
    assert full.defenses.sweep == [0, 25, 150] and full.attacks.gm_targets == 30
    with pytest.raises(ValueError, match="defenses.T 150 must be one of"):
        settings(["--defenses.sweep", "[0, 10]"]).resolved()


OVERLAYS = [  # (base, overlays, {attack: (gradient, the evaluation's EBM it names)})
    ("digits", ["digits_defense_aware"], {"adaptive_badnets": ("exact", "clean"), "adaptive_narcissus": ("bpda", "clean")}),
    ("digits", ["digits_low_energy"], {"adaptive_badnets": ("energy", "clean"), "adaptive_narcissus": ("energy", "clean")}),
    ("digits", ["digits_grey_box"], {"adaptive_badnets": ("exact", "poisoned")}),
    ("digits", ["digits_narcissus_exact"], {"adaptive_narcissus": ("exact", "clean")}),
    ("digits", ["digits_narcissus_eot"], {"adaptive_narcissus": ("exact", "clean")}),
    ("cifar10_cpu", ["cifar10_cpu_defense_aware"], {"adaptive_badnets": ("exact", "clean")}),
    ("cifar10_cpu", ["cifar10_cpu_defense_aware", "cifar10_cpu_grey_box"], {"adaptive_badnets": ("exact", "poisoned")}),
    ("cifar10_cpu", ["cifar10_cpu_defense_aware", "cifar10_cpu_adaptive_t300"], {"adaptive_badnets": ("exact", "clean")}),
]


@pytest.mark.parametrize("base, overlays, attacks", OVERLAYS, ids=lambda v: "+".join(v) if isinstance(v, list) else None)
def test_the_defense_aware_overlays_name_the_evaluations_own_ebms(tmp_path, base, overlays, attacks):
    import inspect

    from pureebm_lightning.evaluation.command import settings
    from pureebm_lightning.evaluation.plugins import attack_flags
    from pureebm_lightning.poisoning.attacks import ATTACKS

    alone = settings(["--config", str(ROOT / f"configs/evaluate/{base}.yaml")]).resolved()
    cfg = settings(["--config", str(ROOT / f"configs/evaluate/{base}.yaml"),
                    *[flag for name in overlays for flag in ("--config", str(ROOT / f"configs/evaluate/{name}.yaml"))]]).resolved()
    assert cfg.plugins.attacks == list(attacks) and cfg.plugins.defenses == []
    chain = {int(f.split("=")[1]) for a in attacks for f in attack_flags(cfg, a) if f.startswith("--chain_steps")}
    assert cfg.plugins.sweep == sorted({0, 150} | chain)  # victims at the main table's T and at the T the attacker assumed
    assert (cfg.ebm, cfg.victim, cfg.data) == (alone.ebm, alone.victim, alone.data)  # the main table's EBMs and victims are kept
    assert cfg.attacks.narcissus_epsilon == alone.attacks.narcissus_epsilon
    assert cfg.attacks.target_classes == alone.attacks.target_classes[:len(cfg.attacks.target_classes)]  # same seeds per class
    ebms = {"clean_ebm": tmp_path / "clean.ckpt", "poisoned_ebm": tmp_path / "poisoned.ckpt"}
    for attack, (gradient, ebm) in attacks.items():
        flags = attack_flags(cfg, attack, ebms)
        assert f"--ebm_path={tmp_path / f'{ebm}.ckpt'}" in flags and f"--gradient={gradient}" in flags, attack
        assert not any("{" in flag for flag in flags)
        known = set(inspect.signature(ATTACKS[attack]).parameters)  # every option the overlay sets is one the attack takes
        assert {flag[2:].split("=")[0] for flag in flags} <= known, attack
    if base == "digits":
        assert "adaptive_badnets" not in attacks or "--budget=0.01" in attack_flags(cfg, "adaptive_badnets", ebms)
    else:  # the CIFAR-10 security study: class 0, no Gradient Matching, T in {0, 150}; BadNets' own budget
        assert (cfg.attacks.target_classes, cfg.attacks.gm_targets, cfg.defenses.sweep) == ([0], 0, [0, 150])
        assert f"--budget={cfg.attacks.badnets_budget}" in attack_flags(cfg, "adaptive_badnets", ebms)
    if "adaptive_narcissus" in attacks:  # the main table's Narcissus budget and epsilon
        assert {f"--budget={cfg.attacks.narcissus_budget}", f"--epsilon={cfg.attacks.narcissus_epsilon}"} <= \
            set(attack_flags(cfg, "adaptive_narcissus", ebms))


@pytest.mark.parametrize("name", ["digits", "cifar10_cpu", "cifar10_paper"])
def test_evaluate_configs_parse(name, capsys):
    from pureebm_lightning.cli import main

    with pytest.raises(SystemExit) as end:
        main(["evaluate", "--config", str(ROOT / f"configs/evaluate/{name}.yaml"), "--print_config"])
    assert end.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "defenses:" in printed and "T: 150" in printed
    for path in [line.split(":", 1)[1].strip() for line in printed.splitlines() if line.strip().startswith("config: configs/")]:
        assert (ROOT / path).is_file(), path


def cifar_quick(tmp_path: Path, config: str, *extra: str) -> dict:
    root = write_cifar_shaped(tmp_path / "cifar", per_class=20, test_per_class=6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pureebm_lightning", "evaluate", "--config", str(ROOT / f"configs/evaluate/{config}.yaml"),
           "--out", str(out), "--quick", "--data.root", str(root), "--data.train_per_class", "20", "--data.test_per_class", "6",
           "--attacks.narcissus_steps", "5", "--attacks.surrogate_epochs", "1", *extra]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("results.md", "results.json", "sweep.png", "chain_curves.png", "pairs.png"):
        assert (out / name).stat().st_size > 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_cifar10_cpu_quick_runs_on_a_cifar_shaped_folder(tmp_path):
    summary = cifar_quick(tmp_path, "cifar10_cpu")
    facts = summary["facts"]
    assert (facts["victim_images"], facts["holdout_images"], facts["test_images"]) == (120, 80, 60)
    assert summary["settings"]["data"]["image_size"] == 16 and summary["table"]["badnets"]["none"]["success_x1"]["n"] == 1
    assert summary["table"]["blended"]["pureebm_poisoned"]["success_x1"]["n"] == 1
    assert [r["T"] for r in summary["poisoned_ebm"]["by_T"]] == [10]  # poisoned_ebm_sweep: false
    held_out = {p.stem for p in (tmp_path / "out/data/ebm_holdout/train").rglob("*.png")}
    victim = {p.stem for p in next((tmp_path / "out/data").glob("clean-*")).joinpath("train").rglob("*.png")}
    assert len(held_out) == 80 and not held_out & victim


@pytest.mark.slow
def test_cifar10_paper_quick_runs_on_a_cifar_shaped_folder(tmp_path):
    """The paper's config with its own EBM and attacker data (a CINIC-shaped stand-in), nets shrunk for a CPU test."""
    cinic = write_cifar_shaped(tmp_path / "cinic", per_class=4, test_per_class=0) / "train"
    summary = cifar_quick(
        tmp_path, "cifar10_paper", "--data.attacker_data", str(cinic), "--ebm.data", str(cinic), "--ebm.batch_size", "8",
        "--ebm.args", '["--model.init_args.energy_net.init_args.num_filters=8", "--model.init_args.sampler.init_args.n_steps=5", '
        '"--model.init_args.bank_size=16", "--trainer.accelerator=cpu"]',
        "--victim.args", '["--trainer.accelerator=cpu", "--data.init_args.num_workers=0", "--data.init_args.batch_size=100"]',
        "--attacks.gm_targets", "1", "--attacks.gm_steps", "2", "--victim.epochs", "1")
    facts = summary["facts"]
    assert (facts["victim_images"], facts["holdout_images"], facts["ebm_images"], facts["test_images"]) == (200, 0, 40, 60)
    assert summary["settings"]["victim"]["configs"] == ["configs/classifier.yaml"]
    assert "clean_ebm_data" in facts["ebm_checkpoints"]["clean"]  # trained on ebm.data, not on a holdout
    assert summary["table"]["gradient_matching"]["none"]["targets"] == 1 and summary["settings"]["victim"]["epochs"] == 1


def test_an_ebm_folder_is_reused_only_for_the_recipe_that_made_it(tmp_path, monkeypatch):
    import pureebm_lightning.lightning_cli as cli
    from pureebm_lightning.evaluation.settings import EBMRecipe
    from pureebm_lightning.evaluation.steps import train_ebm

    recipe, root = EBMRecipe(steps=5), tmp_path / "out" / "data" / "ebm_holdout"

    def trained(args, run=False):
        raise RuntimeError("trained")

    monkeypatch.setattr(cli, "make_cli", trained)
    with pytest.raises(RuntimeError, match="trained"):  # nothing there: it trains, and records what makes it
        train_ebm(recipe, "clean", root, tmp_path / "out", 100, True)
    workdir = tmp_path / "out/ebm/clean_5steps"
    made = json.loads((workdir / "recipe.json").read_text())
    assert made["root"] == "data/ebm_holdout" and made["batch_size"] == 64 and made["grayscale"] is True
    (workdir / "runs/checkpoints").mkdir(parents=True)
    (workdir / "runs/checkpoints/last.ckpt").write_bytes(b"x")
    (workdir / "done").write_text("5 iterations\n")
    assert train_ebm(recipe, "clean", root, tmp_path / "out", 100, True) == workdir / "runs/checkpoints/last.ckpt"
    with pytest.raises(RuntimeError, match="trained"):  # another batch size is another EBM, in a folder of its own
        train_ebm(EBMRecipe(steps=5, batch_size=32), "clean", root, tmp_path / "out", 100, True)
    assert len(list((tmp_path / "out/ebm").glob("clean_5steps-*"))) == 1 and (workdir / "done").is_file()
