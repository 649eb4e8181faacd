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
