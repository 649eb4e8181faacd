"""The stopping rule: each chain stops once its energy has stayed below a quantile of clean chains' energies for a while."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pureebm_lightning.cli import main
from pureebm_lightning.langevin import LangevinSampler
from pureebm_lightning.pretrained.export import export_ebm
from pureebm_lightning.stopping_rule import EnergyStop, calibrate, chain_energies, sample_until

from .conftest import QUIET_PURIFY, QuadraticEnergy, kill_during_second_block, write_digit_folder


def chains():
    torch.manual_seed(0)
    energy = QuadraticEnergy(mu=0.0, sigma=0.3, tau=1e-4)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1  # far from the mode: high energy
    return energy, LangevinSampler(step_size=0.05, temperature=1e-4), x


def test_a_rule_that_never_fires_is_the_fixed_T_chain_bit_for_bit():
    energy, sampler, x = chains()
    end, steps = sample_until(sampler, energy, x, EnergyStop(float("-inf"), max_steps=30), torch.Generator().manual_seed(2))
    fixed = sampler.sample(energy, x, 30, generator=torch.Generator().manual_seed(2)).samples
    assert torch.equal(end, fixed) and steps.tolist() == [30] * 6


def test_each_chain_stops_where_its_own_energy_has_stayed_below_the_threshold_for_patience_steps():
    energy, sampler, x = chains()
    clean = torch.randn(500, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 0.3  # samples of the model itself
    rule = EnergyStop(calibrate(sampler, energy, clean, 0.5, steps=20), patience=4, max_steps=200)
    end, steps = sample_until(sampler, energy, x, rule, torch.Generator().manual_seed(2))
    assert len(set(steps.tolist())) > 1 and steps.min() >= rule.patience and steps.max() < rule.max_steps  # per image
    # replay the unstopped chain (every step draws the whole batch's noise, so an image's path is its own)
    state, generator, path, energies = x.clone(), torch.Generator().manual_seed(2), [x.clone()], []
    for _ in range(rule.max_steps):
        energies.append(energy(state).detach())
        state = sampler.sample(energy, state, 1, generator=generator).samples
        path.append(state.clone())
    energies = torch.stack(energies)  # energies[t] is the energy after t steps
    for i in range(len(x)):
        below = energies[:, i] <= rule.threshold
        stop = next(t for t in range(rule.patience, rule.max_steps) if bool(below[t - rule.patience + 1 : t + 1].all()))
        assert steps[i] == stop and torch.allclose(end[i], path[stop][i], atol=1e-6, rtol=0)


def test_calibration_pools_the_clean_chains_energies_from_half_way_and_is_seeded():
    energy, sampler, _ = chains()
    clean = torch.zeros(7, 1, 4, 4)  # the mode: its own energy is the lowest, the chain's is higher
    pooled = chain_energies(sampler, energy, clean, steps=10, seed=3, batch_size=4)
    assert pooled.shape == (7 * 6,) and torch.equal(pooled, chain_energies(sampler, energy, clean, steps=10, seed=3, batch_size=4))
    assert not torch.equal(pooled, chain_energies(sampler, energy, clean, steps=10, seed=4, batch_size=4))
    assert torch.equal(chain_energies(sampler, energy, clean, steps=0), energy(clean).detach())  # 0 steps: the images'
    # replay: step 5..10 of batch 0's chain, drawn from seed 3
    seed = int(np.random.SeedSequence([3, 0]).generate_state(1, np.uint64)[0])  # (seed, batch 0)
    state, generator, expected = clean[:4].clone(), torch.Generator().manual_seed(seed), []
    for t in range(11):
        if t >= 5:
            expected.append(energy(state).detach())
        state = sampler.sample(energy, state, 1, generator=generator).samples
    assert torch.allclose(pooled[:24], torch.cat(expected), atol=1e-7, rtol=0)
    assert calibrate(sampler, energy, clean, 0.5, steps=10) > calibrate(sampler, energy, clean, 0.5, steps=0)


def test_a_chain_that_starts_below_the_threshold_still_takes_patience_steps():
    energy, sampler, x = chains()
    end, steps = sample_until(sampler, energy, torch.zeros_like(x), EnergyStop(1e9, patience=1), torch.Generator().manual_seed(2))
    assert steps.tolist() == [1] * 6 and not torch.equal(end, torch.zeros_like(x))  # one step, not none


def test_a_bad_rule_is_refused():
    for kwargs in ({"patience": 0}, {"min_steps": 5, "max_steps": 3}, {"max_steps": 0}):
        with pytest.raises(ValueError, match="need patience >= 1"):
            EnergyStop(0.0, **kwargs)


def test_pureebm_purify_stop_is_deterministic_recorded_and_reports_its_steps(tmp_path, grey_ebm, caplog):
    data, clean = tmp_path / "poisoned", tmp_path / "clean"
    write_digit_folder(data, count=12)
    write_digit_folder(clean, count=40, split="")
    command = ["purify", "--data", str(data), "--ckpt_path", str(grey_ebm), "--stop", "energy", "--stop_calibration", str(clean),
               "--stop_quantile", "0.9", "--stop_patience", "3", "--stop_max_steps", "40", "--batch_size", "5", *QUIET_PURIFY]
    main([*command, "--out", str(tmp_path / "a")])
    main([*command, "--out", str(tmp_path / "b")])
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    rule = manifest["stop"]
    assert rule["rule"] == "energy" and rule["patience"] == 3 and rule["max_steps"] == 40 and rule["quantile"] == 0.9
    assert manifest["steps"] == 40 and "stop" in manifest["identity"]
    assert manifest["stop_steps"]["images"] == 12 and 3 <= manifest["stop_steps"]["mean_steps"] <= manifest["stop_steps"]["max_steps"] <= 40
    pngs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(pngs) == 12 and all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in pngs)
    assert "steps per image on average" in caplog.text
    taken = json.loads((tmp_path / "a/stop_steps.json").read_text())  # every image's steps, by file
    assert sorted(taken) == sorted(str(p) for p in pngs) and not (tmp_path / "a/.stop_steps").exists()
    assert sum(taken.values()) / 12 == pytest.approx(manifest["stop_steps"]["mean_steps"]) and max(taken.values()) == manifest["stop_steps"]["max_steps"]
    with pytest.raises(SystemExit, match="drop --steps"):
        main([*command, "--steps", "10", "--out", str(tmp_path / "c")])
    assert rule["calibration_steps"] == 150 and rule["calibration_images"] == 40 and rule["calibration_data"] == str(clean.resolve())
    assert rule["threshold"] == float(f"{rule['threshold']:.4g}")  # rounded: every process computes the same rule
    with pytest.raises(SystemExit, match="drop --stop_calibration"):
        main([*command, "--stop_threshold", "0.1", "--out", str(tmp_path / "e")])
    with pytest.raises(SystemExit, match="--stop energy needs its threshold"):
        main(["purify", "--data", str(data), "--ckpt_path", str(grey_ebm), "--stop", "energy", "--out", str(tmp_path / "d"), *QUIET_PURIFY])


def test_an_interrupted_stop_run_resumes_to_the_same_images_and_steps(tmp_path, grey_ebm, monkeypatch):
    data, clean = tmp_path / "poisoned", tmp_path / "clean"
    write_digit_folder(data, count=12)
    write_digit_folder(clean, count=40, split="")
    command = ["purify", "--data", str(data), "--ckpt_path", str(grey_ebm), "--stop", "energy", "--stop_calibration", str(clean),
               "--stop_calibration_steps", "20", "--stop_quantile", "0.9", "--stop_patience", "3", "--stop_max_steps", "40",
               "--batch_size", "5", *QUIET_PURIFY]
    main([*command, "--out", str(tmp_path / "whole")])
    killed = kill_during_second_block(monkeypatch)
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful exit
        main([*command, "--out", str(tmp_path / "resumed")])
    assert len(killed) == 1 and len(list((tmp_path / "resumed/.stop_steps").glob("*.json"))) == 1
    assert not (tmp_path / "resumed/stop_steps.json").exists()
    killed.undo()

    def no_calibration(*args, **kwargs):
        raise AssertionError("the resumed run calibrates again")

    monkeypatch.setattr("pureebm_lightning.stopping_rule.calibrate", no_calibration)  # it reuses the first run's rule
    main([*command, "--out", str(tmp_path / "resumed")])
    whole, resumed = (json.loads((tmp_path / f"{n}/manifest.json").read_text()) for n in ("whole", "resumed"))
    assert resumed["complete"] and resumed["stop_steps"] == whole["stop_steps"] and resumed["stop"] == whole["stop"]
    assert (tmp_path / "resumed/stop_steps.json").read_text() == (tmp_path / "whole/stop_steps.json").read_text()
    pngs = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*.png"))
    assert all((tmp_path / "whole" / p).read_bytes() == (tmp_path / "resumed" / p).read_bytes() for p in pngs)


def test_an_exported_ebm_carries_its_calibration_and_purify_uses_it(tmp_path, grey_ebm):
    data, clean = tmp_path / "poisoned", tmp_path / "clean"
    write_digit_folder(data, count=6)
    write_digit_folder(clean, count=40, split="")
    folder = export_ebm(grey_ebm, tmp_path / "ebm", data=str(clean))
    stored = json.loads((folder / "config.json").read_text())["stop_calibration"]
    assert stored["steps"] == 150 and stored["images"] == 40 and set(stored["energy_quantiles"]) >= {"0.5", "0.9"}
    command = ["purify", "--data", str(data), "--ckpt_path", str(folder), "--stop", "energy", "--stop_quantile", "0.9",
               "--stop_patience", "2", "--stop_max_steps", "20", *QUIET_PURIFY]
    main([*command, "--out", str(tmp_path / "a")])
    rule = json.loads((tmp_path / "a/manifest.json").read_text())["stop"]
    assert rule["threshold"] == stored["energy_quantiles"]["0.9"] and rule["calibration_steps"] == 150
    assert rule["calibration_data"] == "stored" and rule["calibration_images"] == 40
    main([*command, "--stop_calibration", str(clean), "--out", str(tmp_path / "b")])  # the same chains, computed again
    assert json.loads((tmp_path / "b/manifest.json").read_text())["stop"]["threshold"] == rule["threshold"]  # 4 digits
    with pytest.raises(SystemExit, match="stored calibration ran 150 steps, not 30"):
        main([*command, "--stop_calibration_steps", "30", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="stores no calibration of quantile 0.3"):
        main([*command, "--stop_quantile", "0.3", "--out", str(tmp_path / "d")])


def test_a_numpy_pair_records_each_rows_steps(tmp_path, grey_ebm):
    from pureebm_lightning.bundled_digits import digits_images

    x, y = digits_images(8)
    data = tmp_path / "npy"
    data.mkdir()
    np.save(data / "poisoned_training_data.npy", ((x[:9, 0] + 1) * 127.5).round().byte().numpy())
    np.save(data / "poisoned_training_labels.npy", y[:9].numpy())
    main(["purify", "--data", str(data), "--ckpt_path", str(grey_ebm), "--stop", "energy", "--stop_threshold=-1e9",
          "--stop_max_steps", "7", "--batch_size", "4", "--out", str(tmp_path / "out"), *QUIET_PURIFY])
    taken = json.loads((tmp_path / "out/stop_steps.json").read_text())
    assert list(taken) == [str(i) for i in range(9)] and set(taken.values()) == {7}  # never below: the cap, every row
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["stop"]["quantile"] is None and manifest["stop_steps"] == {"images": 9, "mean_steps": 7.0, "max_steps": 7, "file": "stop_steps.json"}
