"""benchmarks/digits_reproduction.py: its pieces (the T sweep is Psi_T, statistics) and its --quick run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from pureebm_lightning import ConvNetEnergy, LangevinSampler, Purifier

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from digits_reproduction import DistinctImages, purify_distinct  # noqa: E402
from reproduction_report import counts, stats, targets  # noqa: E402


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
    checks = targets(summary_with(none={"badnets": 1.0, "blended": 0.95, "narcissus": (0.05, 0.7)},
                                  pure={"badnets": 0.5, "blended": 0.03, "narcissus": (0.01, 0.22)},
                                  jpeg={"badnets": 1.0, "blended": 0.9, "narcissus": (0.05, 0.6)},
                                  floor={"badnets": 0.0, "blended": 0.0, "narcissus": (0.01, 0.2)}, sweep=sweep), 150)
    status = {name: c["status"] for name, c in checks.items()}
    assert status["blended_works"] == "met" and status["narcissus_works"] == "NOT met" and status["gm_works"] == "NOT met"
    assert status["blended_removed"] == "met" and status["narcissus_removed"].startswith("not measurable")
    assert status["narcissus_x3_to_floor"] == "met"  # 70 % -> 22 % at x3, floor 20 %
    assert status["beats_jpeg"] == "met"  # Blended 3 vs 90 %, Narcissus x3 22 vs 60 %
    assert status["window"] == "met" and status["badnets"] == "NOT met"
    tie = targets(summary_with(none={"badnets": 1.0, "blended": 0.95, "narcissus": (0.05, 0.7)},
                               pure={"badnets": 0.0, "blended": 0.89, "narcissus": (0.01, 0.65)},
                               jpeg={"badnets": 1.0, "blended": 0.9, "narcissus": (0.05, 0.6)},
                               floor={"badnets": 0.0, "blended": 0.0, "narcissus": (0.01, 0.2)}, sweep=sweep), 150)
    assert tie["beats_jpeg"]["status"] == "NOT met" and tie["blended_removed"]["status"] == "NOT met"


@pytest.mark.slow
def test_quick_reproduction_writes_its_report_and_resumes(tmp_path):
    """The --quick run: every file, numbers in range, the protocol's split; a rerun reuses every finished piece."""
    out = tmp_path / "repro"
    cmd = [sys.executable, str(ROOT / "benchmarks/digits_reproduction.py"), "--out", str(out), "--quick"]
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
    changed = subprocess.run(cmd + ["--jpeg_quality", "50"], check=True, cwd=tmp_path, capture_output=True, text=True)
    assert "Wrote" not in changed.stdout and "EBM " not in changed.stdout
    rows = [json.loads(line) for line in (out / "victims.jsonl").read_text().splitlines()]
    jpeg_sets = {tuple(row["key"].split("|")[:3]) for row in rows if row["defense"] == "jpeg"}
    assert len(rows) > len(lines) and len(jpeg_sets) == 6 * 2  # (3 triggered + 2 GM sets + WaNet) x 2 qualities
    assert json.loads((out / "results.json").read_text())["settings"]["jpeg_quality"] == 50
