"""The EBM module on real digits: training steps, the bank in checkpoints, exact resume, divergence."""

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from pureebm_lightning import ConvNetEnergy, EBMModule, LangevinSampler
from pureebm_lightning.data import DigitsDataModule
from pureebm_lightning.ebm_module import CHECKPOINT_KEY, NonFiniteError

from .bank_probe import BankProbe


def small_module(**kwargs) -> EBMModule:
    args = dict(bank_size=40, sampler=LangevinSampler(n_steps=5))
    args.update(kwargs)
    return EBMModule(ConvNetEnergy(1, 8, 8), **args)


def trainer(tmp_path, max_steps, callbacks=()):
    return Trainer(
        default_root_dir=tmp_path, max_steps=max_steps, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
    )


def digits(batch_size=16):
    return DigitsDataModule(image_size=8, batch_size=batch_size)


def test_training_step_moves_energies_and_keeps_the_bank(tmp_path):
    module = small_module()
    trainer(tmp_path, 4).fit(module, digits())
    assert module.bank.chains.shape == (40, 1, 8, 8)
    assert torch.isfinite(module.bank.chains).all()
    for key in ["train/loss", "train/energy_pos", "train/energy_neg", "train/energy_gap", "train/langevin_grad_norm", "train/rejuvenated"]:
        assert key in trainer_metrics(module), key
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


def trainer_metrics(module):
    return module.trainer.callback_metrics | module.trainer.logged_metrics


def test_data_init_starts_chains_near_training_images(tmp_path):
    module = small_module(sampler=LangevinSampler(n_steps=0))
    probe = BankProbe(str(tmp_path / "probe"), "run")
    trainer(tmp_path, 1, [probe]).fit(module, digits())
    start = torch.load(tmp_path / "probe" / "run_start_rank0.pt").flatten(1)
    data = digits()
    data.setup()
    train = data.train_set.tensors[0].flatten(1)
    # every chain is some training image plus N(0, 1.5e-2^2) noise: its nearest image is 1.5e-2 away per pixel
    rms_to_nearest = (torch.cdist(start, train).min(dim=1).values / start.shape[1] ** 0.5)
    assert rms_to_nearest.max() < 0.02 and rms_to_nearest.min() > 0.01


def test_uniform_init(tmp_path):
    module = small_module(bank_init="uniform", sampler=LangevinSampler(n_steps=0))
    probe = BankProbe(str(tmp_path / "probe"), "run")
    trainer(tmp_path, 1, [probe]).fit(module, digits())
    start = torch.load(tmp_path / "probe" / "run_start_rank0.pt")
    assert start.std().item() == pytest.approx(3**-0.5, rel=0.1)


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = small_module()
    trainer(tmp_path, 3, [ckpt_cb, BankProbe(str(tmp_path / "probe"), "first")]).fit(first, digits())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)[CHECKPOINT_KEY]
    end = torch.load(tmp_path / "probe" / "first_end_rank0.pt")
    assert saved.shape == (1, 40, 1, 8, 8)
    assert torch.equal(saved[0], end)

    resumed = small_module()
    trainer(tmp_path, 5, [BankProbe(str(tmp_path / "probe"), "resumed")]).fit(
        resumed, digits(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    start = torch.load(tmp_path / "probe" / "resumed_start_rank0.pt")
    assert torch.equal(start, end)  # continues with exactly the saved chains, not a fresh bank
    assert resumed.global_step == 5


class ExplodingEnergy(nn.Module):
    """A real energy net that returns NaN once it has been called ``after`` times."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.net, self.calls, self.after = ConvNetEnergy(1, 8, 8), 0, after

    def forward(self, x):
        self.calls += 1
        e = self.net(x)
        return e * float("nan") if self.calls > self.after else e


def test_non_finite_chains_stop_the_run_naming_the_step(tmp_path):
    module = EBMModule(ExplodingEnergy(after=5 * 2 + 1 + 2), bank_size=40, sampler=LangevinSampler(n_steps=5))
    with pytest.raises(NonFiniteError, match=r"global step 2 .*step_size"):
        trainer(tmp_path, 10).fit(module, digits())


def test_validation_reports_the_energy_gap(tmp_path):
    module = small_module()
    t = Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False)
    metrics = t.validate(module, digits(), verbose=False)[0]
    assert set(metrics) == {"val/energy_clean", "val/energy_perturbed", "val/energy_gap", "val/perturbed_higher"}
    assert metrics["val/energy_gap"] == pytest.approx(metrics["val/energy_perturbed"] - metrics["val/energy_clean"], abs=1e-5)
    assert 0.0 <= metrics["val/perturbed_higher"] <= 1.0
    # the same measurement on the test split (`pureebm test`), with the same perturbation for the same batch
    test_metrics = t.test(module, digits(), verbose=False)[0]
    assert set(test_metrics) == {k.replace("val/", "test/") for k in metrics}
