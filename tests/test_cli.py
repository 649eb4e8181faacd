"""`pureebm` end to end: the commands users type, on the real configs, shrunk to a few steps."""

from __future__ import annotations

import pytest
import torch
import yaml

from pureebm_lightning import EBMModule
from pureebm_lightning.cli import main
from pureebm_lightning.ebm_module import CHECKPOINT_KEY

from .conftest import CONFIGS, TINY_EBM

FAST = [*TINY_EBM, "--trainer.max_steps=4"]  # a few more steps than the fixtures' EBM, for the resume tests


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pureebm"])  # what the console script sees, not pytest's arguments


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_digits_writes_a_checkpoint_with_the_bank_and_validates(in_tmp):
    main(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *FAST])
    ckpts = sorted(in_tmp.glob("runs/ebm_digits/checkpoints/*.ckpt"))
    assert [c.name for c in ckpts] == ["epoch=0-step=4.ckpt", "last.ckpt"]
    ckpt = torch.load(ckpts[-1], weights_only=False)
    assert ckpt["global_step"] == 4
    assert ckpt[CHECKPOINT_KEY].shape == (1, 64, 1, 8, 8)
    assert (in_tmp / "runs/ebm_digits/version_0/config.yaml").is_file()
    # the chain/data image grids reached the TensorBoard logger
    events = list((in_tmp / "runs/ebm_digits/version_0").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000

    # the checkpoint rebuilds the whole module (energy net from its config) without the CLI
    module = EBMModule.load_from_checkpoint(ckpts[-1])
    assert module.sampler.n_steps == 2 and module.energy_net.image_size == 8
    assert torch.isfinite(module(torch.zeros(2, 1, 8, 8))).all()

    # validate on the checkpoint
    main(["validate", "--config", str(CONFIGS / "ebm_digits.yaml"), *FAST, f"--ckpt_path={ckpts[-1]}"])


def test_resume_with_ckpt_path_last_continues_the_run(in_tmp):
    main(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *FAST])
    last = in_tmp / "runs/ebm_digits/checkpoints/last.ckpt"
    first = torch.load(last, weights_only=False)
    probe = '{"class_path": "tests.bank_probe.BankProbe", "init_args": {"out_dir": "probe", "tag": "resumed"}}'
    main(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *FAST, "--trainer.max_steps=6", "--ckpt_path=last", f"--trainer.callbacks+={probe}"])
    # the second run started from the saved chains (a restart would have drawn a fresh bank from data)
    assert torch.equal(torch.load(in_tmp / "probe/resumed_start_rank0.pt"), first[CHECKPOINT_KEY][0])
    resumed = torch.load(last, weights_only=False)
    assert resumed["global_step"] == 6
    assert not torch.equal(resumed[CHECKPOINT_KEY], first[CHECKPOINT_KEY])
    assert (in_tmp / "runs/ebm_digits/version_1").is_dir()  # the resumed run logs as a new version


@pytest.mark.parametrize("config", ["ebm.yaml", "ebm_digits.yaml"])
def test_print_config_shows_the_paper_defaults(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    init = printed["model"]["init_args"]
    assert init["sampler"]["init_args"] == {"step_size": 0.0125, "temperature": 0.0001, "n_steps": 100, "clamp": None}
    assert init["optimizer"]["init_args"]["lr"] == 0.0001
    assert init["rejuvenation_prob"] == 0.05 and init["data_noise"] == 0.015
    if config == "ebm.yaml":
        assert init["energy_net"]["class_path"].endswith("SNGANResNetEnergy")
        assert init["lr_scheduler"]["init_args"]["milestones"] == [40, 75, 100]
        assert printed["trainer"]["max_epochs"] == 120


def test_cinic10_data_config_swaps_the_data_module(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "ebm.yaml"), "--config", str(CONFIGS / "data/cinic10_imagenet.yaml"), "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["class_path"] == "pureebm_lightning.data.ImageFolderDataModule"
    assert data["init_args"]["file_pattern"] == "n*" and data["init_args"]["val_dir"] == "valid"


def test_cifar_config_without_data_fails_at_once_saying_where(in_tmp):
    with pytest.raises(SystemExit, match=r"^pureebm fit: error: .*cifar-10-batches-py.*Nothing is downloaded") as err:
        main(["fit", "--config", str(CONFIGS / "ebm.yaml"), "--data.init_args.root=nowhere", "--trainer.accelerator=cpu"])
    assert isinstance(err.value.__cause__, FileNotFoundError) and "\n" not in str(err.value)
