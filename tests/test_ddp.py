"""Two-process CPU DDP (gloo) through the real CLI: each rank keeps its own chains and gets them back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from pureebm_lightning.ebm_module import CHECKPOINT_KEY

from .conftest import CONFIGS, ROOT
from .test_cli import FAST


def run_fit(cwd, tag, devices, *extra, strategy="ddp"):
    overrides = cwd / f"{tag}.yaml"
    overrides.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "dirpath": str(cwd / tag)}},
        {"class_path": "tests.bank_probe.BankProbe", "init_args": {"out_dir": str(cwd / "probe"), "tag": tag}},
    ]}}))
    cmd = [
        sys.executable, "-m", "pureebm_lightning", "fit", "--config", str(CONFIGS / "ebm_digits.yaml"),
        "--config", str(overrides), *FAST, "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
        f"--trainer.strategy={strategy}", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd / tag / "last.ckpt"


def probe(cwd, tag, when, rank):
    return torch.load(cwd / "probe" / f"{tag}_{when}_rank{rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_keep_their_own_banks_and_get_them_back(tmp_path):
    last = run_fit(tmp_path, "first", 2, "--model.init_args.bank_init=uniform")
    # seed_everything gives both ranks one seed; their own generators still draw different chains and noise
    assert not torch.equal(probe(tmp_path, "first", "start", 0), probe(tmp_path, "first", "start", 1))
    ends = [probe(tmp_path, "first", "end", r) for r in (0, 1)]
    assert not torch.equal(ends[0], ends[1])  # no broadcast: the ranks' chains differ
    saved = torch.load(last, weights_only=False)[CHECKPOINT_KEY]
    assert saved.shape == (2, 64, 1, 8, 8)
    assert torch.equal(saved[0], ends[0]) and torch.equal(saved[1], ends[1])

    run_fit(tmp_path, "resumed", 2, "--trainer.max_steps=6", f"--ckpt_path={last}")
    for r in (0, 1):
        assert torch.equal(probe(tmp_path, "resumed", "start", r), ends[r])  # each rank resumes its own slice

    # resuming the two-device run on one device (DDP with one process, as a one-GPU cluster job) pools both banks
    single = run_fit(tmp_path, "single", 1, "--trainer.max_steps=6", f"--ckpt_path={last}")
    assert torch.equal(probe(tmp_path, "single", "start", 0), torch.cat(ends))
    assert torch.load(single, weights_only=False)[CHECKPOINT_KEY].shape == (1, 128, 1, 8, 8)


@pytest.mark.slow
def test_ddp_fit_and_purify_with_the_speed_options(tmp_path):
    """bf16-mixed, channels_last and a compiled energy net inside the DDP-wrapped module, 2 processes: the run
    finishes with finite per-rank chains, and the checkpoint purifies under DDP with the same options."""
    speed = ["--trainer.precision=bf16-mixed", "--trainer.callbacks+=pureebm_lightning.callbacks.SpeedOptions",
             "--trainer.callbacks.channels_last=true", "--trainer.callbacks.compile=true",
             "--trainer.callbacks.compile_backend=aot_eager"]
    last = run_fit(tmp_path, "fast", 2, *speed)
    saved = torch.load(last, weights_only=False)
    assert saved[CHECKPOINT_KEY].shape == (2, 64, 1, 8, 8) and torch.isfinite(saved[CHECKPOINT_KEY]).all()
    assert not any("_orig_mod" in k for k in saved["state_dict"])
    from .conftest import write_digit_folder

    write_digit_folder(tmp_path / "poisoned", 12)
    cmd = [sys.executable, "-m", "pureebm_lightning", "purify", f"--data={tmp_path / 'poisoned'}", f"--ckpt_path={last}",
           "--steps=5", "--batch_size=4", "--num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=bf16-mixed", "--channels_last"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = (tmp_path / "poisoned_purified" / "manifest.json").read_text()
    assert '"complete": true' in manifest and '"precision": "bf16-mixed"' in manifest
