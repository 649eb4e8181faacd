import pytest
import torch

from pureebm_lightning.energy_nets import (
    ConvNetEnergy,
    SNGANResNetEnergy,
    count_parameters,
)


@pytest.mark.parametrize(
    ("net", "shape"),
    [
        (lambda: SNGANResNetEnergy(3, 128), (3, 32, 32)),
        (lambda: SNGANResNetEnergy(3, 128), (3, 64, 64)),
        (lambda: SNGANResNetEnergy(1, 16), (1, 16, 16)),
        (lambda: ConvNetEnergy(3, 32, 32), (3, 32, 32)),
        (lambda: ConvNetEnergy(1, 32, 16), (1, 16, 16)),
        (lambda: ConvNetEnergy(3, 8, 64), (3, 64, 64)),
        (lambda: ConvNetEnergy(1, 8, 8), (1, 8, 8)),
    ],
)
def test_one_finite_energy_per_image_with_input_gradient(net, shape):
    model = net()
    x = torch.rand(5, *shape, requires_grad=True) * 2 - 1
    energy = model(x)
    assert energy.shape == (5,)
    assert torch.isfinite(energy).all()
    (grad,) = torch.autograd.grad(energy.sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0
    # images are independent: the energy of one does not depend on another
    assert torch.allclose(model(x[:1]), energy[:1], atol=1e-5)


def test_parameter_counts_match_the_paper():
    assert abs(count_parameters(SNGANResNetEnergy()) - 1.05e6) < 0.01e6
    assert abs(count_parameters(ConvNetEnergy(3, 32, 32)) - 0.7e6) < 0.02e6


def test_sngan_init_is_xavier_with_zero_bias():
    net = SNGANResNetEnergy()
    assert net.linear.bias is None
    conv = net.blocks[0].conv1
    assert torch.count_nonzero(conv.bias) == 0
    bound = (6 / (conv.in_channels * 9 + conv.out_channels * 9)) ** 0.5
    assert conv.weight.abs().max() <= bound


def test_convnet_rejects_sizes_it_cannot_take():
    with pytest.raises(ValueError, match="image_size"):
        ConvNetEnergy(3, 32, image_size=24)
    with pytest.raises(ValueError, match="built for 32x32"):
        ConvNetEnergy(3, 32, 32)(torch.zeros(1, 3, 16, 16))
