import pytest
import torch
from torch import nn

from pureebm_lightning.langevin import LangevinSampler

from .conftest import QuadraticEnergy


class LinearEnergy(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1) + (x**2).flatten(1).sum(1)


def test_one_step_matches_hand_computation():
    eps, tau = 0.1, 0.5
    sampler = LangevinSampler(step_size=eps, temperature=tau)
    w = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])
    x = torch.tensor([[[[0.2, -0.4], [1.0, 0.0]]]])
    result = sampler.sample(LinearEnergy(w), x, n_steps=1, generator=torch.Generator().manual_seed(7), track_grad_norm=True)
    noise = torch.empty_like(x).normal_(generator=torch.Generator().manual_seed(7))  # the draw the step used
    # E = w.x + |x|^2  =>  grad E = w + 2x;  x' = x - eps^2 / (2 tau) * (w + 2x) + eps * noise
    n = noise[0, 0]
    expected = torch.tensor([[[[0.2 - 0.01 * (1.0 + 0.4) + 0.1 * n[0, 0], -0.4 - 0.01 * (-2.0 - 0.8) + 0.1 * n[0, 1]],
                               [1.0 - 0.01 * (0.5 + 2.0) + 0.1 * n[1, 0], 0.0 - 0.01 * 3.0 + 0.1 * n[1, 1]]]]])
    assert torch.allclose(result.samples, expected, atol=1e-6)
    assert sampler.drift == pytest.approx(0.01)
    # grad_norm: the per-image norm of grad_x[E / tau] = |w + 2x| / tau
    hand_norm = torch.tensor([1.4, -2.8, 2.5, 3.0]).norm().item() / tau
    assert result.grad_norm.item() == pytest.approx(hand_norm, rel=1e-5)
    assert sampler.sample(LinearEnergy(w), x, n_steps=1).grad_norm is None  # not tracked unless asked


def test_a_fixed_generator_makes_sampling_reproducible():
    net = LinearEnergy(torch.randn(1, 4, 4))
    sampler = LangevinSampler(step_size=0.05, temperature=0.1)
    x = torch.randn(3, 1, 4, 4)
    a = sampler.sample(net, x, n_steps=4, generator=torch.Generator().manual_seed(3)).samples
    b = sampler.sample(net, x, n_steps=4, generator=torch.Generator().manual_seed(3)).samples
    c = sampler.sample(net, x, n_steps=4, generator=torch.Generator().manual_seed(4)).samples
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_quadratic_energy_gives_the_gaussian_mean_and_variance():
    tau, sigma, mu = 1e-4, 0.1, 0.3
    sampler = LangevinSampler(step_size=1.25e-2, temperature=tau)
    x0 = torch.zeros(4000, 1, 2, 2)
    samples = sampler.sample(QuadraticEnergy(mu, sigma, tau), x0, n_steps=1500).samples
    h = sampler.step_size**2 / 2
    exact_var = sigma**2 / (1 - h / (2 * sigma**2))  # the stationary variance of the discretised chain
    assert samples.mean().item() == pytest.approx(mu, abs=0.005)
    assert samples.var().item() == pytest.approx(exact_var, rel=0.04)
    assert samples.var().item() == pytest.approx(sigma**2, rel=0.05)


def test_sampling_leaves_parameter_gradients_and_input_alone():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0))
    x = torch.randn(2, 1, 4, 4)
    before = x.clone()
    LangevinSampler(n_steps=3).sample(net, x)
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(x, before)


def test_sampling_works_where_gradients_are_disabled():
    net = QuadraticEnergy(0.0, 1.0, 1.0)
    x = torch.ones(2, 1, 2, 2)
    with torch.no_grad():
        out = LangevinSampler(step_size=0.1, temperature=1.0, n_steps=5).sample(net, x).samples
    assert out.shape == x.shape and not torch.equal(out, x)


def test_clamp_keeps_states_in_range():
    net = LinearEnergy(torch.full((1, 4, 4), -100.0))  # pushes every pixel up hard
    out = LangevinSampler(step_size=0.1, temperature=1.0, clamp=(-1.0, 1.0)).sample(net, torch.zeros(8, 1, 4, 4), 20).samples
    assert out.max() <= 1.0 and out.min() >= -1.0
    assert out.max() == 1.0


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        LangevinSampler(step_size=0.0)
    with pytest.raises(ValueError):
        LangevinSampler(temperature=-1.0)
