"""`pureebm purify` end to end on real digits: layouts, manifest, resume after a kill, refusals, bad inputs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pureebm_lightning import Purifier, __version__
from pureebm_lightning.cli import main
from pureebm_lightning.errors import PoisonedDataError
from pureebm_lightning.images import to_signed_unit, to_uint8

from .conftest import QUIET_PURIFY, ROOT, kill_during_second_block, write_digit_folder


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pureebm"])


def purify(data, ckpt, *extra):
    main(["purify", f"--data={data}", f"--ckpt_path={ckpt}", "--steps=20", "--batch_size=16", *QUIET_PURIFY, *extra])


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).astype(int)


def test_grey_folder_with_splits_is_mirrored_with_a_complete_manifest(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    keys = write_digit_folder(data, 40)
    write_digit_folder(data, 3, split="test")
    purify(data, grey_ebm)
    out = tmp_path / "poisoned_purified"  # the default: a sibling folder
    assert files(out) == set(keys) | files(data) - set(keys) | {"manifest.json"}
    for key in keys:
        with Image.open(out / key) as img:
            assert img.mode == "L" and img.size == (8, 8)
    diffs = np.array([np.abs(pixels(out / k) - pixels(data / k)).mean() for k in keys])
    assert diffs.min() > 0 and diffs.mean() < 40  # every image moved, and stayed close to where it started
    for key in files(data) - set(keys):  # other splits are copied as they are
        assert (out / key).read_bytes() == (data / key).read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest | {
        "source": str(data.resolve()), "checkpoint": str(grey_ebm.resolve()),
        "checkpoint_sha256": hashlib.sha256(grey_ebm.read_bytes()).hexdigest(), "steps": 20, "step_size": 0.0125,
        "temperature": 0.0001, "seed": 0, "count": 40, "purified": 40, "complete": True, "format": "image_folder",
        "split": "train", "copied": ["test"], "package_version": __version__, "batch_size": 16, "defense": "pureebm",
    } == manifest


def test_rgb_class_folders_stay_rgb(tmp_path, rgb_ebm):
    data = tmp_path / "rgb"
    keys = [k.removeprefix("train/") for k in write_digit_folder(data / "train", 12, rgb=True, split="")]
    data = data / "train"
    purify(data, rgb_ebm, f"--out={tmp_path / 'out'}")
    assert files(tmp_path / "out") == set(keys) | {"manifest.json"}
    with Image.open(tmp_path / "out" / keys[0]) as img:
        assert img.mode == "RGB" and img.size == (8, 8)


def test_numpy_pair_is_written_back_as_the_same_pair(tmp_path, grey_ebm):
    from pureebm_lightning.bundled_digits import digits_images

    x, y = digits_images(8)
    data = tmp_path / "npy"
    data.mkdir()
    images = ((x[:30, 0] + 1) * 127.5).round().byte().numpy()
    np.save(data / "poisoned_training_data.npy", images)
    np.save(data / "poisoned_training_labels.npy", y[:30].numpy())
    (data / "poison.json").write_text('{"attack": "gm", "kind": "targeted", "targets": []}')
    purify(data, grey_ebm, "--batch_size=7")
    out = tmp_path / "npy_purified"
    assert files(out) == {"poisoned_training_data.npy", "poisoned_training_labels.npy", "manifest.json", "poison.json"}
    assert (out / "poison.json").read_bytes() == (data / "poison.json").read_bytes()  # evaluated as the same attack
    purified = np.load(out / "poisoned_training_data.npy")
    assert purified.shape == images.shape and purified.dtype == np.uint8
    assert 0 < np.abs(purified.astype(int) - images).mean() < 40
    assert np.array_equal(np.load(out / "poisoned_training_labels.npy"), y[:30].numpy())


@pytest.mark.slow
def test_a_run_killed_midway_finishes_on_rerun_without_redoing_or_losing_images(tmp_path, grey_ebm):
    data, out = tmp_path / "poisoned", tmp_path / "out"
    keys = write_digit_folder(data, 150)
    cmd = [sys.executable, "-m", "pureebm_lightning", "purify", f"--data={data}", f"--ckpt_path={grey_ebm}",
           f"--out={out}", "--steps=300", "--batch_size=1", *QUIET_PURIFY]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.rglob("*.png"))) < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert 10 <= len(first) < len(keys), "the run must be killed midway"
    for key in first:  # every file that exists is a complete image
        assert pixels(out / key).shape == (8, 8)
    (out / "train/0/.0.png.tmp999").write_bytes(b"half an image")  # what a kill mid-write leaves

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Purifying {len(keys) - len(first)} of {len(keys)} images" in proc.stderr + proc.stdout
    assert files(out) == set(keys) | {"manifest.json"}  # each image once, the partial file gone
    assert all((out / k).stat().st_mtime_ns == t for k, t in first.items())  # finished images not redone
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_another_runs_output_is_refused_unless_overwrite_which_replaces_it_whole(tmp_path, grey_ebm):
    data, out = tmp_path / "poisoned", tmp_path / "out"
    keys = write_digit_folder(data, 8)
    purify(data, grey_ebm, f"--out={out}")
    before = {k: (out / k).read_bytes() for k in keys}
    manifest = (out / "manifest.json").read_text()
    with pytest.raises(SystemExit, match=r"steps: 20 there, 30 now.*--overwrite"):
        main(["purify", f"--data={data}", f"--ckpt_path={grey_ebm}", f"--out={out}", "--steps=30", *QUIET_PURIFY])
    assert (out / "manifest.json").read_text() == manifest
    (out / "train/0/leftover.png").write_bytes((out / keys[0]).read_bytes())  # e.g. an image since deleted from the input
    purify(data, grey_ebm, f"--out={out}", "--seed=1", "--overwrite")
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert files(out) == set(keys) | {"manifest.json"}  # the old run is gone, not mixed in
    assert sum((out / k).read_bytes() != before[k] for k in keys) >= 6  # new noise, new images

    for stranger in (tmp_path / "stranger", data / "inside"):
        stranger.mkdir()
        (stranger / "notes.txt").write_text("mine")
        with pytest.raises(SystemExit, match="not a purify output|inside the poisoned folder"):
            purify(data, grey_ebm, f"--out={stranger}", "--overwrite")
        assert (stranger / "notes.txt").read_text() == "mine"


def test_numpy_run_interrupted_after_one_block_resumes_block_by_block(tmp_path, grey_ebm, monkeypatch):
    from pureebm_lightning.bundled_digits import digits_images

    x, y = digits_images(8)
    data = tmp_path / "npy"
    data.mkdir()
    np.save(data / "poisoned_training_data.npy", ((x[:20, 0] + 1) * 127.5).round().byte().numpy())
    np.save(data / "poisoned_training_labels.npy", y[:20].numpy())
    purify(data, grey_ebm, f"--out={tmp_path / 'whole'}", "--batch_size=8")

    calls = kill_during_second_block(monkeypatch)
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful exit
        purify(data, grey_ebm, f"--out={tmp_path / 'out'}", "--batch_size=8")
    assert calls == [list(range(8))] and len(list((tmp_path / "out/.chunks").glob("*.npz"))) == 1
    calls.undo()
    purify(data, grey_ebm, f"--out={tmp_path / 'out'}", "--batch_size=8")
    resumed = np.load(tmp_path / "out/poisoned_training_data.npy")
    # blocks are seeded by (seed, block), so an interrupted run ends exactly where an uninterrupted one does
    assert np.array_equal(resumed, np.load(tmp_path / "whole/poisoned_training_data.npy"))
    assert not (tmp_path / "out/.chunks").exists()


def truncated(root):
    write_digit_folder(root, 6)
    victim = next(root.rglob("*.png"))
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L")
    big.save(victim)
    victim.write_bytes(victim.read_bytes()[:-60])  # header intact, pixel data cut short
    return victim


def digits_plus(root, rel, write):
    """Four good digits and one odd file at ``rel``, written by ``write(path)``; returns the odd file."""
    write_digit_folder(root, 4)
    odd = root / rel
    odd.parent.mkdir(parents=True, exist_ok=True)
    write(odd)
    return odd


def not_an_image(root):
    return digits_plus(root, "train/0/garbage.png", lambda p: p.write_bytes(b"this is not a png"))


def mixed_sizes(root):
    return digits_plus(root, "train/1/odd.png", lambda p: Image.new("L", (9, 8)).save(p))


def with_alpha(root):
    return digits_plus(root, "train/2/rgba.png", lambda p: Image.new("RGBA", (8, 8)).save(p))


def empty(root):
    (root / "train").mkdir(parents=True)
    return root / "train"


def rgb_for_grey_ebm(root):
    write_digit_folder(root, 4, rgb=True)
    return root


def too_big_for_the_ebm(root):
    write_digit_folder(root, 4, size=16)
    return root


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (truncated, "cannot read this image"),
        (not_an_image, "cannot read this image"),
        (mixed_sizes, "all images of a set must share one size"),
        (with_alpha, "image mode RGBA is not supported"),
        (empty, "no images found"),
        (rgb_for_grey_ebm, "do not fit the EBM"),
        (too_big_for_the_ebm, "which was trained on 1x8x8 images"),
    ],
)
def test_bad_input_fails_naming_the_file_and_leaves_no_partial_file(tmp_path, grey_ebm, make, problem):
    data, out = tmp_path / "poisoned", tmp_path / "out"
    culprit = make(data)
    with pytest.raises(SystemExit) as err:  # the user sees one line, no traceback
        purify(data, grey_ebm, f"--out={out}", "--batch_size=1")
    assert isinstance(err.value.__cause__, PoisonedDataError)
    assert str(err.value.code).startswith("pureebm purify: error: ")
    assert str(culprit) in str(err.value.code) and problem in str(err.value.code)
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in written if ".tmp" in p.name]
    for p in written:  # whatever was finished before the failure is a complete image of this run
        if p.suffix == ".png":
            assert pixels(p).shape == (8, 8)
    if out.exists():
        assert json.loads((out / "manifest.json").read_text())["complete"] is False


def test_diagnostics_trace_energy_and_distance_along_the_chain(tmp_path, grey_ebm):
    data, out = tmp_path / "poisoned", tmp_path / "out"
    write_digit_folder(data, 20)
    purify(data, grey_ebm, f"--out={out}", "--diagnostics", "--diagnostic_points=4")
    with open(out / "purify_diagnostics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20]
    dist = [float(r["mean_l2_from_start"]) for r in rows]
    assert dist[0] == 0 and all(a < b for a, b in zip(dist, dist[1:]))  # the chain drifts away from its start
    assert all(int(r["images"]) == 20 for r in rows)
    with Image.open(out / "purify_diagnostics.png") as img:
        assert img.size[0] > 300


def test_purify_help_shows_its_own_options_first_and_only_the_trainer_options_it_honours(capsys):
    main(["purify", "--help"])
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--data", "--ckpt_path", "--out", "--steps", "--overwrite", "--threads", "--trainer.devices"))
    options = out[out.index("options:"):]
    assert options.index("--data") < options.index("--steps") < options.index("--trainer.accelerator")
    assert "--trainer.max_epochs" not in out and "--trainer.callbacks" not in out  # not honoured: not offered
    assert len(out.splitlines()) < 160  # its own options and a handful of Trainer ones, not the whole Trainer


def test_purifier_maths(grey_ebm):
    purifier = Purifier.from_checkpoint(grey_ebm, steps=12, seed=3)
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_signed_unit(images)), images)  # 8-bit round trip is exact
    assert torch.equal(Purifier(purifier.energy_net, purifier.sampler, steps=0)(images, 0), images)
    once = purifier(images, first_index=7)
    assert torch.equal(purifier(images, first_index=7), once)  # same images, same seed: same result
    assert not torch.equal(purifier(images, first_index=8), once)
    assert not torch.equal(purifier(images, first_index=7, epoch=1), once)  # re-purifying each epoch: new noise
    traced, energy, dist = purifier.trace(images, 7, [0, 4, 12])
    assert torch.equal(traced, once) and dist[0] == 0 and energy.shape == (3,)


@pytest.mark.slow
def test_two_process_ddp_purify_equals_the_one_process_file_set(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    keys = write_digit_folder(data, 25)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    outs = {}
    for devices in (1, 2):
        outs[devices] = tmp_path / f"out{devices}"
        cmd = [sys.executable, "-m", "pureebm_lightning", "purify", f"--data={data}", f"--ckpt_path={grey_ebm}",
               f"--out={outs[devices]}", "--steps=10", "--batch_size=4", *QUIET_PURIFY, "--trainer.accelerator=cpu",
               f"--trainer.devices={devices}", f"--trainer.strategy={'ddp' if devices == 2 else 'auto'}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert files(outs[1]) == files(outs[2]) == set(keys) | {"manifest.json"}
    # noise is seeded per block, not per device: two devices give the very same images as one
    assert all((outs[1] / k).read_bytes() == (outs[2] / k).read_bytes() for k in keys)
    m1, m2 = (json.loads((outs[d] / "manifest.json").read_text()) for d in (1, 2))
    assert m1["purified"] == m2["purified"] == 25 and m2["complete"]


def test_jpeg_baseline_has_the_same_command_and_output_layout(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    keys = write_digit_folder(data, 10)
    main(["purify", f"--data={data}", "--jpeg_quality=30", *QUIET_PURIFY])
    out = tmp_path / "poisoned_jpeg30"
    assert files(out) == set(keys) | {"manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["defense"] == "jpeg" and manifest["jpeg_quality"] == 30 and manifest["complete"]
    diffs = [np.abs(pixels(out / k) - pixels(data / k)).mean() for k in keys]
    assert min(diffs) > 0  # compression changed every image
    with pytest.raises(SystemExit, match="either --ckpt_path .* or --jpeg_quality"):
        main(["purify", f"--data={data}", *QUIET_PURIFY])
    with pytest.raises(SystemExit, match="another purification .*defense: 'jpeg' there, 'pureebm' now"):
        purify(data, grey_ebm, f"--out={out}")


def test_jpeg_purifier_loses_more_at_lower_quality():
    from pureebm_lightning.bundled_digits import digits_images
    from pureebm_lightning.defenses.jpeg import JPEGPurifier

    images = to_uint8(digits_images(16, rgb=True)[0][:20])
    error = {q: (JPEGPurifier(q)(images).float() - images.float()).abs().mean().item() for q in (10, 50, 95)}
    assert error[10] > error[50] > error[95] > 0
    assert JPEGPurifier(50)(images).shape == images.shape and JPEGPurifier(50)(images).dtype == torch.uint8
