"""The stopping rule: each chain stops once its energy has stayed below the clean images' quantile for a while."""

from __future__ import annotations

import json

import pytest
import torch

from pureebm_lightning.cli import main
from pureebm_lightning.langevin import LangevinSampler
from pureebm_lightning.stopping_rule import EnergyStop, calibrate, sample_until

from .conftest import QUIET_PURIFY, QuadraticEnergy, write_digit_folder


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
    rule = EnergyStop(calibrate(energy, clean, 0.5), patience=4, max_steps=200)
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
    with pytest.raises(SystemExit, match="drop --steps"):
        main([*command, "--steps", "10", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="--stop energy needs its threshold"):
        main(["purify", "--data", str(data), "--ckpt_path", str(grey_ebm), "--stop", "energy", "--out", str(tmp_path / "d"), *QUIET_PURIFY])
