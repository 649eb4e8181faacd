"""The EBM module on real digits: training steps, the bank in checkpoints, exact resume, divergence."""

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from pureebm_lightning import ConvNetEnergy, EBMModule, LangevinSampler
from pureebm_lightning.data import DigitsDataModule
from pureebm_lightning.ebm_module import CHECKPOINT_KEY
from pureebm_lightning.errors import NonFiniteError

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
    logged = trainer_metrics(module)
    for key in ["train/loss", "train/energy_pos", "train/energy_neg", "train/energy_gap", "train/langevin_grad_norm", "train/rejuvenated"]:
        assert torch.isfinite(logged[key]), key
    # the maximum-likelihood loss: (E(x+) - E(x-)) / tau
    assert logged["train/energy_gap"] == pytest.approx((logged["train/energy_pos"] - logged["train/energy_neg"]).item())
    assert logged["train/loss"].item() == pytest.approx(logged["train/energy_gap"].item() / 1e-4, rel=1e-4)
    assert logged["train/langevin_grad_norm"] > 0
    replaced = logged["train/rejuvenated"].item() * 16  # a share of the batch of 16 chains written back
    assert abs(replaced - round(replaced)) < 1e-5


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


@pytest.mark.parametrize(
    ("after", "step", "what"),
    [
        (5 * 2 + 1 + 2, 2, "Non-finite Langevin chains"),  # 6 calls a step (5 Langevin + 1 loss): NaN inside step 2's chain
        (5, 0, "Non-finite energy"),  # the chains of step 0 are finite, its loss forward is not
    ],
)
def test_non_finite_values_stop_the_run_naming_the_step(tmp_path, after, step, what):
    module = EBMModule(ExplodingEnergy(after=after), bank_size=40, sampler=LangevinSampler(n_steps=5))
    probe = BankProbe(str(tmp_path / "probe"), "run")
    with pytest.raises(NonFiniteError, match=rf"{what} .*at global step {step} .*step_size.*init_weights"):
        trainer(tmp_path, 10, [probe]).fit(module, digits())
    assert torch.isfinite(module.bank.chains).all()  # nothing non-finite was written back


def test_validation_reports_the_energy_gap(tmp_path):
    module = small_module()
    t = Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False)
    dm = digits()
    metrics = t.validate(module, dm, verbose=False)[0]
    assert set(metrics) == {"val/energy_clean", "val/energy_perturbed", "val/energy_gap", "val/perturbed_higher"}
    assert metrics["val/energy_gap"] == pytest.approx(metrics["val/energy_perturbed"] - metrics["val/energy_clean"], abs=1e-5)
    higher = metrics["val/perturbed_higher"] * len(dm.val_set)  # a share of the validation images: whole images
    assert abs(higher - round(higher)) < 1e-3
    # the same measurement on the test split (`pureebm test`), with the same perturbation for the same batch
    test_metrics = t.test(module, digits(), verbose=False)[0]
    assert set(test_metrics) == {k.replace("val/", "test/") for k in metrics}


def test_validation_perturbation_is_plus_minus_16_over_255_in_pixel_units(tmp_path):
    class L1Energy(nn.Module):
        def forward(self, x):
            return x.abs().flatten(1).sum(1)

    zeros = torch.utils.data.TensorDataset(torch.zeros(10, 1, 4, 4), torch.zeros(10, dtype=torch.long))
    module = EBMModule(L1Energy(), bank_size=4)
    loader = torch.utils.data.DataLoader(zeros, batch_size=5)
    metrics = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(module, loader, verbose=False)[0]
    # [-1, 1] images: 16/255 of the [0, 1] range is 32/255 here, on each of the 16 pixels
    assert metrics["val/energy_perturbed"] == pytest.approx(16 * 32 / 255, rel=1e-6)
    assert metrics["val/energy_clean"] == 0


@pytest.mark.slow
def test_training_teaches_the_energy_to_rank_clean_digits_below_perturbed_ones(tmp_path):
    def share_higher(module):
        t = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        return t.validate(module, DigitsDataModule(image_size=16), verbose=False)[0]["val/perturbed_higher"]

    module = EBMModule(ConvNetEnergy(1, 32, 16), bank_size=200, sampler=LangevinSampler(n_steps=30))
    before = share_higher(module)
    trainer(tmp_path, 40).fit(module, DigitsDataModule(image_size=16, batch_size=64))
    after = share_higher(module)
    assert before < 0.7 and after > 0.85, (before, after)


def test_init_weights_starts_from_a_checkpoint_with_new_settings(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = small_module()
    trainer(tmp_path, 3, [ckpt_cb, BankProbe(str(tmp_path / "probe"), "first")]).fit(first, digits())
    weights = {k: v.clone() for k, v in first.state_dict().items()}

    second = small_module(init_weights=str(tmp_path / "ckpt" / "last.ckpt"), optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    trainer(tmp_path, 2, [BankProbe(str(tmp_path / "probe"), "second")]).fit(second, digits())
    assert second.global_step == 2  # a new run, not a resume at step 3
    assert torch.equal(torch.load(tmp_path / "probe" / "second_start_rank0.pt"), torch.load(tmp_path / "probe" / "first_end_rank0.pt"))
    assert all(torch.equal(v, weights[k]) for k, v in second.state_dict().items())  # lr 0: still the loaded weights
