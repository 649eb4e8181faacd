"""What a user meets when something is wrong: each case runs the real command, checks its exit, its one-line
message, and that nothing was lost or left half-written; two runs into one folder; help and console noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pureebm_lightning.cli import main

from .conftest import CONFIGS, QUIET_PURIFY, ROOT, TINY_EBM, write_digit_folder

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _argv(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["pureebm"])  # DDP-free runs; the lock records argv as the holder's command
    monkeypatch.chdir(tmp_path)  # run folders and logs of the configs land here


def fails(args: list[str]) -> SystemExit:
    """Run ``pureebm args`` expecting the one-line error exit; returns it."""
    with pytest.raises(SystemExit) as err:
        main(args)
    message = str(err.value.code)
    assert message.startswith(f"pureebm {args[0]}: error: ") and "\n" not in message, message
    return err.value


def purify_args(data: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["purify", f"--data={data}", f"--ckpt_path={ckpt}", f"--out={out}", "--steps=5", "--batch_size=4", *QUIET_PURIFY, *extra]


def truncate(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(path)
    path.write_bytes(path.read_bytes()[:-60])  # the header intact, the pixels cut short


# -- images and folders -------------------------------------------------------------------------------------------

def test_a_truncated_image_read_in_a_loader_worker_is_one_line_naming_it(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    keys = write_digit_folder(data, 12)
    truncate(data / keys[7])
    err = fails(purify_args(data, grey_ebm, tmp_path / "out", "--num_workers=1"))
    assert f"{data / keys[7]}: cannot read this image" in str(err.code) and "Traceback" not in str(err.code)
    assert not list((tmp_path / "out").rglob("*.tmp*"))


def test_a_truncated_image_in_an_ebm_training_set_is_one_line_naming_it(tmp_path):
    root = tmp_path / "images"
    keys = write_digit_folder(root, 30, rgb=True)
    truncate(root / keys[3])
    err = fails(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), "--data", "pureebm_lightning.data.ImageFolderDataModule",
                 f"--data.root={root}", "--data.image_size=8", "--data.batch_size=8", "--data.num_workers=1",
                 "--model.init_args.energy_net.init_args.in_channels=3", *[a for a in TINY_EBM if "data.init_args" not in a],
                 "--trainer.limit_val_batches=0"])
    assert f"{root / keys[3]}: cannot read this image" in str(err.code) and "(in a data-loading worker)" in str(err.code)


def test_a_symlink_loop_is_refused_before_any_image_is_read(tmp_path, grey_ebm):
    data = tmp_path / "poisoned"
    write_digit_folder(data, 8)
    (data / "train" / "3" / "again").symlink_to(data / "train")
    err = fails(purify_args(data, grey_ebm, tmp_path / "out"))
    assert "a symbolic link back to" in str(err.code) and "again" in str(err.code)
    assert not (tmp_path / "out").exists()


def test_the_parent_of_a_poisoned_folder_is_refused_naming_the_folder_to_pass(tmp_path, grey_ebm):
    write_digit_folder(tmp_path / "poisoned" / "digits", 8)
    write_digit_folder(tmp_path / "poisoned" / "digits", 4, split="test")
    err = fails(purify_args(tmp_path / "poisoned", grey_ebm, tmp_path / "out"))
    assert f"pass --data {tmp_path / 'poisoned' / 'digits'}" in str(err.code)
    assert not (tmp_path / "out").exists()


def test_a_witches_brew_float64_numpy_pair_purifies_and_keeps_its_dtype(tmp_path, grey_ebm):
    data = tmp_path / "wb"
    data.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8)).astype(np.float64)  # as Witches' Brew exports them
    np.save(data / "poisoned_training_data.npy", images)
    np.save(data / "poisoned_training_labels.npy", (np.arange(10) % 3).astype(np.float64))
    main(purify_args(data, grey_ebm, tmp_path / "out"))
    out = np.load(tmp_path / "out" / "poisoned_training_data.npy")
    assert out.dtype == np.float64 and out.shape == images.shape and np.array_equal(out, np.round(out))
    assert not np.array_equal(out, images) and 0 <= out.min() and out.max() <= 255
    np.save(data / "poisoned_training_data.npy", images / 255)  # [0, 1] floats: refused with the reason
    err = fails(purify_args(data, grey_ebm, tmp_path / "out2"))
    assert "not whole numbers" in str(err.code)
    np.save(data / "poisoned_training_data.npy", images * 2)
    assert "outside 0..255" in str(fails(purify_args(data, grey_ebm, tmp_path / "out3")).code)


# -- checkpoints and arguments ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    """A real classifier checkpoint (one epoch of the digits recipe on a small poisoned-format folder)."""
    root = tmp_path_factory.mktemp("classifier")
    write_digit_folder(root / "set", 40, size=16)
    write_digit_folder(root / "set", 10, split="test", size=16)
    old = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--config", str(CONFIGS / "classifier_digits.yaml"), "--config", str(CONFIGS / "data/digits_poisoned.yaml"),
              f"--data.init_args.data={root / 'set'}", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"])
    finally:
        os.chdir(old)
    return root / "runs/classifier_digits_poisoned/checkpoints/last.ckpt"


@pytest.mark.parametrize("kind", ["empty", "truncated", "classifier"])
def test_a_bad_checkpoint_is_one_line_for_purify_and_for_test(tmp_path, grey_ebm, classifier_ckpt, kind):
    ckpt = tmp_path / "bad.ckpt"
    if kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "truncated":
        ckpt.write_bytes(grey_ebm.read_bytes()[:4000])
    else:
        ckpt = classifier_ckpt
    expected = {"empty": "an empty file (0 bytes)", "truncated": "not a readable PyTorch checkpoint",
                "classifier": "a classifier checkpoint"}[kind]
    data = tmp_path / "poisoned"
    write_digit_folder(data, 4)
    err = fails(purify_args(data, ckpt, tmp_path / "out"))
    assert expected in str(err.code) and "trust" not in str(err.code)
    assert not (tmp_path / "out").exists()
    err = fails(["test", "--config", str(CONFIGS / "ebm_digits.yaml"), f"--ckpt_path={ckpt}", "--trainer.logger=false"])
    assert expected in str(err.code) and "trust" not in str(err.code)


def test_an_ebm_checkpoint_for_a_classifier_config_is_one_line(tmp_path, grey_ebm):
    err = fails(["test", "--config", str(CONFIGS / "classifier_digits.yaml"), f"--ckpt_path={grey_ebm}", "--trainer.logger=false"])
    assert "an EBM checkpoint" in str(err.code) and "ClassifierModule" in str(err.code)


def test_out_of_range_arguments_fail_before_anything_is_loaded(tmp_path):
    code = ("import sys; from pureebm_lightning.cli import main\n"
            "try:\n    main(['purify', '--data=nowhere', '--ckpt_path=missing.ckpt', '--steps=-1'])\n"
            "except SystemExit as e:\n    print(e.code); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    # neither the (missing) data nor the (missing) EBM were looked at, nor torch loaded
    assert done.stdout.splitlines() == ["pureebm purify: error: --steps must be at least 0, got -1", "False"], done.stderr
    assert "--batch_size must be at least 1" in str(fails(["purify", "--data=x", "--jpeg_quality=75", "--batch_size=0"]).code)


def test_fit_on_a_poisoned_folder_that_does_not_exist_names_the_command_that_makes_it(tmp_path):
    err = fails(["fit", "--config", str(CONFIGS / "classifier_digits.yaml"), "--config", str(CONFIGS / "data/digits_poisoned.yaml"),
                 f"--data.init_args.data={tmp_path / 'poisoned/digits'}", f"--trainer.default_root_dir={tmp_path}"])
    assert "no such folder" in str(err.code) and f"pureebm poison --attack badnets --out {tmp_path / 'poisoned/digits'}" in str(err.code)


def test_a_diverged_ebm_is_one_line_saying_what_to_change(tmp_path):
    err = fails(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *TINY_EBM, "--trainer.max_steps=5",
                 "--model.init_args.energy_net=tests.test_ebm_module.ExplodingEnergy", "--model.init_args.energy_net.after=3",
                 "--model.init_args.sampler.init_args.n_steps=5",
                 ])
    assert "The EBM diverged" in str(err.code) and "init_weights" in str(err.code)


# -- output folders: full and read-only disks, two runs at once ---------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs mounted at tmp_path/disk (root only; CI runs as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, grey_ebm, small_disk):
    data = tmp_path / "poisoned"
    rng = np.random.default_rng(0)
    for i in range(60):  # noise does not compress: 60 of these PNGs do not fit in 64 KiB
        (data / "train" / str(i % 3)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(data / "train" / str(i % 3) / f"{i}.png")
    err = fails(["purify", f"--data={data}", "--jpeg_quality=75", f"--out={small_disk / 'out'}", "--batch_size=4", *QUIET_PURIFY])
    assert "No space left on device" in str(err.code)
    leftovers = [p for p in (small_disk / "out").rglob("*") if p.is_file() and (".tmp" in p.name or p.stat().st_size == 0)]
    assert leftovers == []
    assert json.loads((small_disk / "out" / "manifest.json").read_text())["complete"] is False  # resumable, not complete


def test_a_read_only_output_folder_is_one_line(tmp_path, grey_ebm, small_disk):
    data = tmp_path / "poisoned"
    write_digit_folder(data, 4)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    err = fails(purify_args(data, grey_ebm, small_disk / "out"))
    assert "Read-only file system" in str(err.code)
    err = fails(["poison", "--attack", "none", "--out", str(small_disk / "p"), "--progress", "false"])
    assert "Read-only file system" in str(err.code)


@pytest.mark.slow
def test_a_second_run_into_a_folder_being_written_is_refused_naming_the_first(tmp_path, grey_ebm):
    data, out = tmp_path / "poisoned", tmp_path / "out"
    keys = write_digit_folder(data, 240)  # far more than the first run purifies while the others try
    cmd = [sys.executable, "-m", "pureebm_lightning", "purify", f"--data={data}", f"--ckpt_path={grey_ebm}", f"--out={out}",
           "--steps=400", "--batch_size=1", *QUIET_PURIFY]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(out.rglob("*.png"))) < 2 and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first run must still be writing"
        for extra in ([], ["--overwrite"], ["--seed=1", "--overwrite"]):
            second = subprocess.run([*cmd, *extra], env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode != 0
            message = second.stderr.strip().splitlines()[-1]
            assert message.startswith("pureebm purify: error: ") and "is being written by another run" in message
            assert f"pid {first.pid}" in message
        assert first.poll() is None and json.loads((out / "manifest.json").read_text())["seed"] == 0
    finally:
        first.kill()
        first.wait()
    done = len(list(out.rglob("*.png")))
    third = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]  # a killed holder blocks nobody
    assert f"Purifying {len(keys) - done} of {len(keys)} images" in third.stderr
    assert not (out / ".pureebm.lock").exists()


def test_the_lock_refuses_a_second_holder_names_it_and_hands_over_on_release(tmp_path):
    import threading

    from pureebm_lightning.errors import OutputLocked
    from pureebm_lightning.purification.output_lock import OutputLock

    first = OutputLock(tmp_path / "out").acquire()
    with pytest.raises(OutputLocked, match=rf"being written by another run \(pid {os.getpid()} on "):
        OutputLock(tmp_path / "out").acquire()
    with pytest.raises(OutputLocked):
        OutputLock(tmp_path / "out").refuse_if_held()
    old_inode = (tmp_path / "out" / ".pureebm.lock").stat().st_ino
    threading.Timer(0.3, first.release).start()  # the holder ends while the second waits
    told = []
    second = OutputLock(tmp_path / "out").acquire(wait=True, on_wait=told.append)
    assert told and f"pid {os.getpid()}" in told[0] and second.held and not first.held
    assert (tmp_path / "out" / ".pureebm.lock").exists()  # the waiter locked the file that is there now
    assert (tmp_path / "out" / ".pureebm.lock").stat().st_ino != old_inode or second.holder()["pid"] == os.getpid()
    second.release()
    assert not (tmp_path / "out" / ".pureebm.lock").exists()
    OutputLock(tmp_path / "out").refuse_if_held()  # free again


def test_a_released_lock_says_it_is_not_held_before_another_run_can_take_it(tmp_path, monkeypatch):
    # the waiter above wakes as soon as the kernel lock goes: held must already be False by then
    from pureebm_lightning.purification import output_lock

    lock = output_lock.OutputLock(tmp_path / "out").acquire()
    real_flock, held_at_unlock = output_lock.fcntl.flock, []

    def flock(fd, op):
        if op == output_lock.fcntl.LOCK_UN:
            held_at_unlock.append(lock.held)
        return real_flock(fd, op)

    monkeypatch.setattr(output_lock.fcntl, "flock", flock)
    lock.release()
    assert held_at_unlock == [False] and not (tmp_path / "out" / output_lock.LOCK_FILE).exists()


def test_the_lock_taken_before_writing_refuses_a_run_that_started_before_it(tmp_path, grey_ebm, monkeypatch):
    """Two runs that both passed the early check: the lock the predict loop takes stops the second, one line."""
    from pureebm_lightning.purification.output_lock import OutputLock

    data, out = tmp_path / "poisoned", tmp_path / "out"
    write_digit_folder(data, 4)
    holder = OutputLock(out).acquire()
    monkeypatch.setattr(OutputLock, "refuse_if_held", lambda self: None)
    try:
        err = fails(purify_args(data, grey_ebm, out, "--overwrite"))
    finally:
        holder.release()
    assert "is being written by another run" in str(err.code)
    assert [p.name for p in out.iterdir()] == []  # nothing written, nothing deleted


# -- help, progress and console noise -----------------------------------------------------------------------------

def test_top_level_help_lists_every_command_without_loading_torch():
    code = ("import sys; from pureebm_lightning.cli import main; main(['--help']); main(['purify', '--help']); "
            "main(['poison', '--help']); print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch not loaded")
    for command in ("fit", "test", "poison", "purify"):
        assert f"\n  {command} " in done.stdout


def test_fit_shows_the_whole_run_and_no_tips_or_deprecation_warnings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pureebm_lightning", "fit", "--config", str(CONFIGS / "ebm_digits.yaml"),
                           *[a for a in TINY_EBM if "progress_bar" not in a], "--trainer.max_steps=30"],
                          cwd=tmp_path, env={**ENV, "PYTHONWARNINGS": ""}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    console = done.stdout + done.stderr
    assert "Epoch 1/2" in console and "Epoch 2/2" in console  # 30 steps of 19 batches: two epochs
    assert "of 30 steps" in console and "left" in console
    for noise in ("Tip", "💡", "DeprecationWarning", "FutureWarning", "litlogger"):
        assert noise not in console, noise
