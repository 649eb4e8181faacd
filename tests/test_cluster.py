"""Cluster scale on a CPU: trainer presets, the SLURM templates (syntax, options that exist, resume choice), and
Lightning's SLURM detection with the environment a SLURM job step sets."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment

from pureebm_lightning.cli import main
from tests.conftest import CONFIGS, ROOT

TEMPLATES = sorted((ROOT / "scripts/slurm").glob("*.sbatch"))


def srun_arguments(template: Path, env: dict[str, str], *extra: str) -> list[str]:
    """The arguments the template gives `srun`, from running it with `srun` replaced by a printer."""
    script = f'srun() {{ printf "%s\\0" "$@"; }}; export -f srun; source "{template}" {" ".join(extra)}'
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env={**os.environ, **env}, capture_output=True, check=True)
    return result.stdout.decode().split("\0")[:-1]


def sbatch_options(template: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", template.read_text(), re.M))


def test_templates_pass_bash_n_and_give_one_task_per_gpu():
    assert {t.name for t in TEMPLATES} == {"fit.sbatch", "purify.sbatch"}
    for template in TEMPLATES:
        subprocess.run(["bash", "-n", str(template)], check=True)
        options = sbatch_options(template)
        assert options["ntasks-per-node"] == options["gpus-per-node"], template


SLURM_STEP = {"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8"}


@pytest.fixture(autouse=True)
def _plain_argv_and_environment(monkeypatch):
    """Lightning's cluster environments write MASTER_ADDR, MASTER_PORT, ... into os.environ: put it back
    whole, or later multi-process tests would try to join this test's imaginary job."""
    monkeypatch.setattr("sys.argv", ["pureebm"])
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_fit_template_names_only_options_that_exist_and_resumes_from_the_newest_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = srun_arguments(ROOT / "scripts/slurm/fit.sbatch", {**SLURM_STEP, "RUN_DIR": str(run_dir)})
    assert args[:2] == ["pureebm", "fit"] and "--ckpt_path" not in args  # a first run starts fresh
    nodes, devices = args.index("--trainer.num_nodes"), args.index("--trainer.devices")
    assert (args[nodes + 1], args[devices + 1]) == ("2", "8")  # agree with sbatch --nodes / --ntasks-per-node
    with pytest.raises(SystemExit) as done:
        main([*args[1:], "--print_config"])  # parses every option against the real parser
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert re.search(r"num_nodes: '?2'?\n", printed) and re.search(r"devices: '?8'?\n", printed) and "strategy: ddp" in printed

    assert args[args.index("--data.init_args.batch_size") + 1] == "8"  # 128 / 16 GPUs: the paper's global batch
    assert args[args.index("--model.init_args.bank_size") + 1] == "625"  # 10,000 / 16

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints/last.ckpt").write_bytes(b"")
    args = srun_arguments(ROOT / "scripts/slurm/fit.sbatch", {**SLURM_STEP, "RUN_DIR": str(run_dir)})
    assert args[args.index("--ckpt_path") + 1] == str(run_dir / "checkpoints/last.ckpt")  # no requeue checkpoint yet
    (run_dir / "hpc_ckpt_1.ckpt").write_bytes(b"")  # the requeue checkpoint, newer
    os.utime(run_dir / "checkpoints/last.ckpt", (1_000_000, 1_000_000))
    args = srun_arguments(ROOT / "scripts/slurm/fit.sbatch", {**SLURM_STEP, "RUN_DIR": str(run_dir)}, "--trainer.max_epochs", "3")
    assert args[args.index("--ckpt_path") + 1] == str(run_dir / "hpc_ckpt_1.ckpt")
    assert args[-2:] == ["--trainer.max_epochs", "3"]  # extra arguments reach pureebm
    with pytest.raises(subprocess.CalledProcessError):  # 10,000 chains do not split over 3 x 8 GPUs
        srun_arguments(ROOT / "scripts/slurm/fit.sbatch", {"SLURM_NNODES": "3", "SLURM_NTASKS_PER_NODE": "8", "RUN_DIR": str(run_dir)})


def test_purify_template_names_only_options_that_exist(tmp_path, capsys):
    env = {**SLURM_STEP, "DATA": str(tmp_path / "poisoned"), "CKPT": str(tmp_path / "ebm.ckpt")}
    args = srun_arguments(ROOT / "scripts/slurm/purify.sbatch", env)
    assert args[:2] == ["pureebm", "purify"]
    assert args[args.index("--out") + 1] == str(tmp_path / "poisoned_purified")
    with pytest.raises(SystemExit) as done:
        main([*args[1:], "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert re.search(r"num_nodes: '?2'?\n", printed) and re.search(r"devices: '?8'?\n", printed) and "batch_size: 512" in printed


@pytest.mark.parametrize("preset", ["single_gpu", "ddp", "multi_node"])
def test_trainer_presets_compose_with_the_ebm_config(preset, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "ebm.yaml"), "--config", str(CONFIGS / f"trainer/{preset}.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert "accelerator: gpu" in printed and "max_epochs: 120" in printed  # the preset sets the hardware only
    assert "ModelCheckpoint" in printed and "SlurmRequeue" in printed  # and keeps the model config's callbacks
    assert "precision: 32-true" in printed  # ... and precision


def test_slurm_environment_is_detected_and_gives_ranks_and_main_address(monkeypatch):
    """What `srun` sets for task 3 of a 2-node x 2-task job: Lightning must place it as node 1, local rank 1."""
    for key, value in {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "pureebm-fit",
                       "SLURM_JOB_ID": "4242", "SLURM_NODEID": "1", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                       "SLURM_NODELIST": "gpu[07-08]"}.items():
        monkeypatch.setenv(key, value)
    assert SLURMEnvironment.detect()
    trainer = Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False, enable_checkpointing=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally  # srun started the processes
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 3, 1, 1)
    assert env.main_address == "gpu07" and 10000 <= env.main_port < 20000
    assert not trainer.is_global_zero


def test_an_interactive_slurm_shell_is_not_taken_for_a_job(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    assert not SLURMEnvironment.detect()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    assert not isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)  # Lightning launches the processes


def test_requeue_signal_checkpoints_every_chain_at_a_batch_end_and_requeues(tmp_path, monkeypatch):
    """SIGUSR1 in the middle of training: the checkpoint is written at the end of that batch (not from the
    handler), holds the chain bank, rank 0 calls `scontrol requeue <job>`, and the run stops there."""
    import signal as signals

    import torch
    from lightning.pytorch import Callback

    from pureebm_lightning import ConvNetEnergy, EBMModule, LangevinSampler
    from pureebm_lightning.callbacks import SlurmRequeue, slurm_requeue
    from pureebm_lightning.data import DigitsDataModule

    calls = []
    monkeypatch.setattr(slurm_requeue.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setenv("SLURM_JOB_ID", "777")

    class SignalAtBatch(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signals.SIGUSR1)

    module = EBMModule(ConvNetEnergy(in_channels=1, image_size=8, num_filters=8), LangevinSampler(n_steps=2), bank_size=32)
    trainer = Trainer(max_steps=10, accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[SlurmRequeue(enabled=True), SignalAtBatch()])
    before = signals.getsignal(signals.SIGUSR1)
    trainer.fit(module, DigitsDataModule(image_size=8, batch_size=16))
    assert trainer.global_step == 3  # the batch in which the signal came finished, then the run stopped
    saved = torch.load(tmp_path / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3 and saved["chain_bank"].shape == (1, 32, 1, 8, 8)
    assert calls == [["scontrol", "requeue", "777"]]
    assert signals.getsignal(signals.SIGUSR1) == before  # the handler is removed after the run
