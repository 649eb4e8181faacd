import pytest
import torch

from pureebm_lightning.chain_bank import ChainBank


def test_data_init_is_the_images_plus_small_noise_and_cycles():
    images = torch.rand(30, 1, 4, 4)
    bank = ChainBank(70)
    bank.init_from_data(images, noise_std=0.015)
    assert bank.chains.shape == (70, 1, 4, 4)
    diff = bank.chains - images.repeat(3, 1, 1, 1)[:70]
    assert diff.std().item() == pytest.approx(0.015, rel=0.1)
    assert diff.mean().abs() < 0.002


def test_uniform_init_covers_minus_one_to_one():
    bank = ChainBank(2000)
    bank.init_uniform((1, 4, 4))
    assert bank.chains.min() >= -1 and bank.chains.max() <= 1
    assert bank.chains.mean().abs() < 0.02 and bank.chains.std().item() == pytest.approx(3**-0.5, rel=0.02)


def test_draw_gives_distinct_chains_and_copies():
    bank = ChainBank(50)
    bank.init_uniform((2,))
    idx, states = bank.draw(50)
    assert sorted(idx.tolist()) == list(range(50))
    states += 5.0
    assert bank.chains.max() <= 1.0  # a draw is a copy
    with pytest.raises(ValueError, match="bank_size"):
        bank.draw(51)


def test_write_rejuvenates_the_stated_share():
    n = 20000
    bank = ChainBank(n)
    bank.init_uniform((3,))
    idx, _ = bank.draw(n)
    states, fresh = torch.zeros(n, 3), torch.ones(n, 3)
    share = bank.write(idx, states, fresh, rejuvenation_prob=0.05)
    written = bank.chains[idx]
    rejuvenated = (written == 1).all(1)
    assert ((written == 0).all(1) | rejuvenated).all()  # each chain is either its new state or fresh data
    assert rejuvenated.float().mean().item() == pytest.approx(share.item())
    assert share.item() == pytest.approx(0.05, abs=0.005)  # 4.5 sigma of the binomial


def test_write_without_rejuvenation_stores_states_exactly():
    bank = ChainBank(10)
    bank.init_uniform((2,))
    idx = torch.tensor([3, 7])
    states = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    untouched = bank.chains[[0, 1, 2]].clone()
    assert bank.write(idx, states, torch.zeros(2, 2), 0.0) == 0
    assert torch.equal(bank.chains[idx], states)
    assert torch.equal(bank.chains[[0, 1, 2]], untouched)


def test_uninitialised_bank_says_so():
    with pytest.raises(RuntimeError, match="not initialised"):
        ChainBank(4).draw(1)
