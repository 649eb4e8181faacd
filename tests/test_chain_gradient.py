"""Gradients through PureEBM's chain (what defense-aware attacks optimise through), and the attacks that use them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from pureebm_lightning.chain_gradient import DifferentiablePurification
from pureebm_lightning.cli import main
from pureebm_lightning.langevin import LangevinSampler

from .conftest import TINY_POISON_DATA


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0)).double()


def start_images() -> torch.Tensor:
    return torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.6 - 0.8


@pytest.mark.parametrize("checkpoint", [False, True])
def test_the_exact_gradient_through_the_chain_matches_finite_differences(checkpoint):
    net, sampler, x = tiny_net(), LangevinSampler(step_size=0.1, temperature=0.05), start_images()
    chain = DifferentiablePurification(net, sampler, 5, "exact", checkpoint=checkpoint)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def objective(start: torch.Tensor) -> torch.Tensor:
        return (chain(start, torch.Generator().manual_seed(3)) * weights).sum()

    leaf = x.clone().requires_grad_(True)
    objective(leaf).backward()
    numeric, h = torch.zeros_like(x), 1e-6
    for i in range(x.numel()):
        step = torch.zeros(x.numel(), dtype=x.dtype)
        step[i] = h
        step = step.view_as(x)
        numeric.view(-1)[i] = (objective(x + step) - objective(x - step)) / (2 * h)
    assert torch.allclose(leaf.grad, numeric, atol=1e-7, rtol=1e-6)
    assert leaf.grad.abs().max() > 0.1  # the chain's Jacobian is far from zero: the comparison means something


def test_the_chain_is_the_defenders_chain_and_bpda_passes_the_gradient_straight_through():
    net, sampler, x = tiny_net(), LangevinSampler(step_size=0.1, temperature=0.05), start_images()
    expected = sampler.sample(net, x, 5, generator=torch.Generator().manual_seed(3)).samples.clamp(-1, 1)
    exact = DifferentiablePurification(net, sampler, 5, "exact")(x, torch.Generator().manual_seed(3))
    assert torch.allclose(exact, expected, atol=1e-12, rtol=0)
    leaf = x.clone().requires_grad_(True)
    out = DifferentiablePurification(net, sampler, 5, "bpda")(leaf, torch.Generator().manual_seed(3))
    assert torch.equal(out.detach(), expected)
    weights = torch.randn(x.shape, dtype=torch.float64)
    (out * weights).sum().backward()
    assert torch.equal(leaf.grad, weights)


def test_eot_averages_the_objective_over_independent_draws_of_the_chains_noise():
    net, sampler, x = tiny_net(), LangevinSampler(step_size=0.1, temperature=0.05), start_images()
    one = DifferentiablePurification(net, sampler, 4, "exact")
    generator = torch.Generator().manual_seed(5)
    draws = [one(x, generator) for _ in range(3)]
    assert not torch.equal(draws[0], draws[1])

    def objective(images):  # nonlinear: its mean over draws is not its value at the mean image
        return images.pow(2).sum()

    leaf = x.clone().requires_grad_(True)
    expected = DifferentiablePurification(net, sampler, 4, "exact", eot=3).expectation(objective, leaf, torch.Generator().manual_seed(5))
    assert torch.allclose(expected, sum(objective(d) for d in draws) / 3, atol=1e-12)
    assert not torch.allclose(expected, objective(torch.stack(draws).mean(0)), atol=1e-6)
    expected.backward()  # differentiable through every draw
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_settings_out_of_range_are_refused():
    net, sampler = tiny_net(), LangevinSampler()
    for kwargs, message in (({"gradient": "none"}, "exact or bpda"), ({"eot": 0}, "eot >= 1"), ({"steps": -1}, "steps >= 0")):
        with pytest.raises(ValueError, match=message):
            DifferentiablePurification(net, sampler, **{"steps": 3, **kwargs})


# ---- the defense-aware attacks on real digits ------------------------------------------------------------------------
def test_adaptive_badnets_optimises_a_patch_more_of_which_survives_the_chain(tmp_path, grey_ebm):
    out = tmp_path / "poisoned"
    main(["poison", "adaptive_badnets", "--out", str(out), *TINY_POISON_DATA, "--ebm_path", str(grey_ebm), "--budget", "0.05",
          "--steps", "30", "--lr", "0.2", "--chain_steps", "10", "--batch_size", "16"])
    record = json.loads((out / "poison.json").read_text())
    objective = record["objective"]
    # the patch that was kept lets at least as much of itself through the chain as the checkerboard it started from
    # (RMS surviving signal, 1/255, same noise; on this barely trained EBM the checkerboard is already near the best)
    assert objective["trigger"] >= objective["no_trigger"] > 0 and objective["first_steps_mean"] < 0
    awareness = record["defense_awareness"]
    assert awareness["ebm"] == str(grey_ebm.resolve()) and awareness["awareness"] == "exact" and awareness["chain_steps"] == 10


def test_adaptive_badnets_from_grey_finds_its_own_patch(tmp_path, grey_ebm):
    """From mid-grey the surviving signal grows from nothing, and the patch is not BadNets' checkerboard."""
    from pureebm_lightning.poisoning.attacks.badnets import checkerboard

    out = tmp_path / "grey"
    main(["poison", "adaptive_badnets", "--out", str(out), *TINY_POISON_DATA, "--ebm_path", str(grey_ebm), "--budget", "0.05",
          "--steps", "20", "--lr", "0.2", "--chain_steps", "5", "--batch_size", "16", "--start", "grey", "--eot", "2"])
    record = json.loads((out / "poison.json").read_text())
    assert record["defense_awareness"]["eot"] == 2  # each step's objective averaged over two pairs of chains
    assert record["start"] == "grey" and record["objective"]["last_steps_mean"] < record["objective"]["first_steps_mean"]
    patch = np.load(out / "trigger.npy")[0]
    board = checkerboard(patch.shape[0], patch.shape[-1]).float().numpy() / 127.5 - 1
    assert patch.shape == board.shape and np.abs(patch - board).max() > 0.1 and record["objective"]["trigger"] > 0


@pytest.mark.parametrize("gradient, eot", [("bpda", 1), ("exact", 2), ("energy", 1)])
def test_adaptive_narcissus_records_what_the_attacker_knew_and_lowers_its_own_objective(tmp_path, grey_ebm, gradient, eot):
    out = tmp_path / gradient
    main(["poison", "adaptive_narcissus", "--out", str(out), *TINY_POISON_DATA, "--ebm_path", str(grey_ebm), "--budget", "0.05",
          "--steps", "20", "--lr", "0.1", "--chain_steps", "5", "--batch_size", "16", "--surrogate_epochs", "2",
          "--gradient", gradient, "--epsilon", "16", "--eot", str(eot)])
    record = json.loads((out / "poison.json").read_text())
    objective, awareness = record["objective"], record["defense_awareness"]
    assert record["clean_label"] and record["linf_255"] <= 16
    assert awareness["awareness"] == gradient and awareness["ebm_sha256"] and awareness["chain_steps"] == 5
    assert awareness["eot"] == (None if gradient == "energy" else eot)
    assert objective["last_steps_mean"] < objective["first_steps_mean"]
    if gradient != "energy":  # through the attacker's chain, the trigger moves the surrogate towards the target
        assert objective["purified_trigger"] < objective["purified_no_trigger"]


def test_a_defense_aware_attack_without_an_ebm_says_what_it_needs(tmp_path):
    with pytest.raises(SystemExit, match="a defense-aware attack needs the EBM it attacks: --ebm_path"):
        main(["poison", "adaptive_badnets", "--out", str(tmp_path / "p"), *TINY_POISON_DATA])
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("eot", [1, 3])
def test_adaptive_badnets_averages_its_signal_over_pairs_of_chains_that_share_noise(eot):
    """Each EOT draw is a pair of chains (patched, clean) from twin generators of its own seed; the first draw's seed is
    the single-draw attack's, and the loss is the mean of the draws' mean square signals."""
    from pureebm_lightning.poisoning.attacks.adaptive_badnets import optimise_patch

    class Attacker:  # a stand-in whose chain adds a constant set by the seed: the signal tells which draw it came from
        energy_net, purification = torch.nn.Linear(1, 1), object()

        def __init__(self):
            self.eot, self.seeds = eot, []

        def twin_generators(self, seed):
            self.seeds.append(seed)
            return seed, seed

        def purified(self, x, generator):
            return torch.zeros_like(x)

        def chain(self, x, generator):
            return x + float(generator % 10 + 1)

    attacker, seed = Attacker(), 2
    _, history = optimise_patch(attacker, torch.zeros(8, 1, 6, 6), torch.zeros(1, 3, 3), 0, 0, 1, 0.1, 4, seed, False)
    base = seed * 100_003  # step 0's seed, as before EOT existed
    assert attacker.seeds == [base + d * 1_000_003 for d in range(eot)]
    constants = [float((base + d * 1_000_003) % 10 + 1) for d in range(eot)]  # the patch starts at 0: signal = constant
    assert history[0] == pytest.approx(-sum(c * c for c in constants) / eot)
