"""GPU speed options, checked where they exist on a CPU: sampling and purification stay correct under each."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pureebm_lightning.callbacks import SpeedOptions
from pureebm_lightning.cli import main
from pureebm_lightning.energy_nets import ConvNetEnergy
from pureebm_lightning.langevin import LangevinSampler
from tests.conftest import CONFIGS, TINY_EBM, write_digit_folder


class _Holder(torch.nn.Module):
    """A stand-in LightningModule for the callback: an energy net and a sampler."""

    def __init__(self, net: torch.nn.Module, sampler: LangevinSampler) -> None:
        super().__init__()
        self.energy_net, self.sampler = net, sampler


def _chains(net: torch.nn.Module, sampler: LangevinSampler, x: torch.Tensor) -> torch.Tensor:
    return sampler.sample(net, x, generator=torch.Generator().manual_seed(1)).samples


@pytest.fixture
def rgb_net_and_images():
    torch.manual_seed(0)
    return ConvNetEnergy(in_channels=3, image_size=8, num_filters=8), torch.rand(16, 3, 8, 8) * 2 - 1


def test_channels_last_gives_the_same_chains_in_channels_last_layout(rgb_net_and_images):
    net, x = rgb_net_and_images
    reference = _chains(net, LangevinSampler(n_steps=5), x)
    sampler = LangevinSampler(n_steps=5)
    SpeedOptions(channels_last=True).setup(None, _Holder(net, sampler), "predict")
    out = _chains(net, sampler, x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not reference.is_contiguous(memory_format=torch.channels_last)
    assert net.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, reference, atol=1e-5)


def test_bf16_autocast_keeps_float32_chains_close_to_float32_sampling(rgb_net_and_images):
    net, x = rgb_net_and_images
    sampler = LangevinSampler(n_steps=5)
    reference = _chains(net, sampler, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what trainer.precision: bf16-mixed does around the steps
        out = _chains(net, sampler, x)
    assert out.dtype == torch.float32  # the state and the update stay float32
    moved = (reference - x).abs().mean()
    assert (out - reference).abs().mean() < 0.05 * moved  # bf16 gradients: a small change to a real move


def test_compiled_energy_net_gives_the_same_chains_and_state_dict(rgb_net_and_images):
    from torch._dynamo.utils import counters

    net, x = rgb_net_and_images
    sampler = LangevinSampler(n_steps=3)
    reference, keys = _chains(net, sampler, x), list(net.state_dict())
    torch._dynamo.reset()
    counters.clear()
    SpeedOptions(compile=True, compile_backend="aot_eager").setup(None, _Holder(net, sampler), "predict")
    assert torch.allclose(_chains(net, sampler, x), reference, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > 0  # it did compile (no silent fallback to eager)
    assert list(net.state_dict()) == keys  # in-place compile: checkpoints keep their keys


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_is_set_either_way_for_the_run_and_restored_after(tf32):
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")  # as Lightning advises on tensor-core GPUs
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default: TF32 convolutions
    try:
        callback = SpeedOptions(tf32=tf32)
        holder = _Holder(torch.nn.Linear(2, 1), LangevinSampler())
        callback.setup(None, holder, "fit")
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
        callback.on_exception(None, holder, RuntimeError("a failed run restores too"))
        assert torch.backends.cudnn.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def test_speed_options_refuse_a_module_without_an_energy_net():
    with pytest.raises(TypeError, match="energy_net"):
        SpeedOptions(channels_last=True).setup(None, torch.nn.Linear(2, 1), "fit")


def _fit(workdir: Path, *extra: str) -> Path:
    cwd, argv = os.getcwd(), sys.argv
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    sys.argv = ["pureebm"]
    try:
        main(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *TINY_EBM, *extra])
    finally:
        os.chdir(cwd)
        sys.argv = argv
    return workdir / "runs/ebm_digits/checkpoints/last.ckpt"


def _purify(data: Path, ckpt: Path, out: Path, *extra: str) -> np.ndarray:
    main(["purify", "--data", str(data), "--ckpt_path", str(ckpt), "--out", str(out), "--steps", "20", "--num_workers", "0",
          "--trainer.enable_progress_bar", "false", *extra])
    return np.stack([np.array(Image.open(p)) for p in sorted(out.rglob("*.png"))]).astype(int)


@pytest.mark.slow
def test_fit_with_bf16_and_channels_last_then_purify_with_each_option_matches_float32(tmp_path):
    """`pureebm fit` with bf16-mixed and SpeedOptions from flags; its checkpoint purifies like a float32 run with
    bf16 + channels_last and with compile (inductor); outputs of different numerics are never mixed."""
    ckpt = _fit(tmp_path / "fit", "--trainer.precision=bf16-mixed",
                "--trainer.callbacks+=pureebm_lightning.callbacks.SpeedOptions",
                "--trainer.callbacks.channels_last=true")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in k for k in state["state_dict"]) and state["chain_bank"].dtype == torch.float32
    write_digit_folder(tmp_path / "data", count=32)
    reference = _purify(tmp_path / "data", ckpt, tmp_path / "fp32")
    fast = _purify(tmp_path / "data", ckpt, tmp_path / "fast", "--trainer.precision", "bf16-mixed", "--channels_last")
    compiled = _purify(tmp_path / "data", ckpt, tmp_path / "compiled", "--compile")
    assert np.array_equal(compiled, reference)  # compile changes nothing here
    assert np.abs(fast - reference).mean() < 2.0  # bf16: within two 8-bit levels on average
    assert np.abs(reference - np.stack([np.array(Image.open(p)) for p in sorted((tmp_path / "data").rglob("*.png"))])).mean() > 2.0
    manifest = json.loads((tmp_path / "fast" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["precision"] == "bf16-mixed" and manifest["tf32"] is False
    with pytest.raises(SystemExit, match="precision: '32-true' there, 'bf16-mixed' now"):  # never mixed in one folder
        _purify(tmp_path / "data", ckpt, tmp_path / "fp32", "--trainer.precision", "bf16-mixed")


def test_device_benchmark_runs_and_reports_every_figure(tmp_path):
    """The GPU benchmark, in its CPU smoke mode: every option measured, figures positive and finite."""
    import subprocess

    from tests.conftest import ROOT

    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/device_benchmark.py"), "--smoke", "--out", str(out)], check=True,
                   capture_output=True, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert [r["option"] for r in report["results"]] == ["fp32", "tf32", "bf16", "channels_last", "bf16+channels_last",
                                                        "compile", "bf16+channels_last+compile"] and report["skipped"] == []
    for r in report["results"]:
        assert r["finite"] and r["purify_images_per_s"] > 0 and r["train_iterations_per_s"] > 0
        assert (r["compiled_graphs"] > 0) == ("compile" in r["option"])  # compiled rows really compiled
        assert r["cifar10_50k_purify_s"] == pytest.approx(50_000 / r["purify_images_per_s"])
