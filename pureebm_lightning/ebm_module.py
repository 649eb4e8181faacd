"""The EBM LightningModule: maximum-likelihood training with persistent Langevin chains."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from pureebm_lightning.chain_bank import ChainBank
from pureebm_lightning.checkpoints import check_matches, read_ebm_checkpoint
from pureebm_lightning.energy_gap import energy_gap
from pureebm_lightning.errors import NonFiniteError
from pureebm_lightning.langevin import LangevinSampler

CHECKPOINT_KEY = "chain_bank"
_INJECTED = ["energy_net", "sampler", "optimizer", "lr_scheduler"]


def _built_by_cli() -> bool:
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None


def batch_images(batch: Any) -> Tensor:
    """The image tensor of a batch that is either images or (images, labels, ...)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


class EBMModule(LightningModule):
    """Trains an energy network by maximum likelihood: loss = (mean E(x+) - mean E(x-)) / tau.

    Positives are data plus ``data_noise`` Gaussian noise; negatives come from a per-device
    :class:`ChainBank`, advanced ``sampler.n_steps`` Langevin steps per training step and written back,
    each replaced with probability ``rejuvenation_prob`` by a fresh data image plus noise.

    Args:
        energy_net: the energy network (``SNGANResNetEnergy``, ``ConvNetEnergy`` or any module mapping
            images to one energy each).
        sampler: Langevin settings shared with purification (default: eps 1.25e-2, tau 1e-4, K 100).
        bank_size: persistent chains per device (paper: 10,000 in total, 1,250 on each of 8 devices).
        bank_init: "data" (training images plus ``data_noise``, the released code) or "uniform" (U(-1, 1)).
        data_noise: std of the Gaussian noise added to positives, initial and rejuvenated chains.
        rejuvenation_prob: probability that a chain written back is replaced by fresh data.
        optimizer: optimiser factory (default: Adam, lr 1e-4).
        lr_scheduler: optional scheduler factory (the configs use MultiStepLR [40, 75, 100] x0.1).
        val_perturbation: l_inf size, in 8-bit pixel units /255, of the random sign perturbation whose
            energy validation compares with the clean images' (default 16/255).
        init_weights: a checkpoint whose energy-net weights and chain bank start this run, with this
            run's settings and a fresh optimiser; or a pretrained EBM (``hf://owner/name[@revision]`` or a folder,
            e.g. the authors' published EBM), whose weights start it with chains drawn afresh from the data. (``--ckpt_path`` instead resumes a run exactly, with the
            settings and optimiser state saved in the checkpoint.)
    """

    def __init__(
        self,
        energy_net: nn.Module,
        sampler: LangevinSampler | None = None,
        bank_size: int = 1250,
        bank_init: Literal["data", "uniform"] = "data",
        data_noise: float = 1.5e-2,
        rejuvenation_prob: float = 0.05,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        val_perturbation: float = 16 / 255,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        # Under LightningCLI the hparams are the (serialisable) config, energy net and sampler included, so
        # `EBMModule.load_from_checkpoint(path)` rebuilds the whole module; built in Python, the injected
        # objects are left out (the weights travel in the state dict anyway).
        self.save_hyperparameters(ignore=None if _built_by_cli() else _INJECTED)
        self.energy_net = energy_net
        self.sampler = sampler if sampler is not None else LangevinSampler()
        self.bank = ChainBank(bank_size)
        self.bank_init = bank_init
        self.data_noise = data_noise
        self.rejuvenation_prob = rejuvenation_prob
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.val_perturbation = val_perturbation
        self.init_weights = init_weights
        self._rng: torch.Generator | None = None  # this rank's noise (on the device)
        self._rng_cpu: torch.Generator | None = None  # this rank's chain choices and rejuvenation draws

    def forward(self, x: Tensor) -> Tensor:
        """Per-image energies."""
        return self.energy_net(x)

    # -- optimisation ---------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = self.energy_net.parameters()
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=1e-4)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"}}

    # -- the chain bank and this rank's randomness -----------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_weights:
            from pureebm_lightning.pretrained import parse_source

            if parse_source(self.init_weights).pretrained:
                self._init_from_pretrained(self.init_weights)
                return
            ckpt = read_ebm_checkpoint(self.init_weights)
            check_matches(ckpt, self, self.init_weights)
            self.load_state_dict(ckpt["state_dict"])
            if CHECKPOINT_KEY in ckpt:
                self._restore_bank(ckpt[CHECKPOINT_KEY])

    def _init_from_pretrained(self, source: str) -> None:
        """Fine-tuning: the energy-net weights of a Hub repo or pretrained folder; the chains start afresh from data and
        the sampler is this run's (the config's), not the pretrained EBM's."""
        from pureebm_lightning.pretrained import load_pretrained
        from pureebm_lightning.pretrained.hub import prefetch
        from pureebm_lightning.pretrained.layouts import load_into

        prefetch(source, self.trainer.strategy if self._trainer is not None else None)  # DDP: rank 0 downloads first
        ebm = load_pretrained(source)
        net = ebm.energy_net
        built = type(self.energy_net).__name__
        args = ", ".join(f"{k}={getattr(net, k)}" for k in ("in_channels", "num_filters", "patch_size", "image_size") if hasattr(net, k))
        load_into(self.energy_net, net.state_dict(), ebm.describe(),
                  f"the config's {built} (the pretrained EBM is a {type(net).__name__}({args}): set "
                  "model.init_args.energy_net to match)")
        if ebm.sampler.step_size != self.sampler.step_size or ebm.sampler.temperature != self.sampler.temperature:
            rank_zero_warn(f"{ebm.describe()} states eps = {ebm.sampler.step_size}, tau = {ebm.sampler.temperature}; this run "
                           f"fine-tunes with the config's eps = {self.sampler.step_size}, tau = {self.sampler.temperature}")

    def on_train_start(self) -> None:
        # seed_everything gives every rank the same seed: derive per-rank generators so that ranks draw
        # different noise, chains and rejuvenations (and a resumed run does not replay its first steps).
        seed = torch.initial_seed() + 1_000_003 * self.global_rank + self.global_step
        self._rng = torch.Generator(device=self.device).manual_seed(seed)
        self._rng_cpu = torch.Generator().manual_seed(seed)
        if self.bank.initialized:  # restored from a checkpoint: continue with exactly those chains
            self.bank.to(self.device)
            return
        images, count = [], 0
        for batch in self.trainer.train_dataloader:
            images.append(batch_images(batch))
            count += images[-1].shape[0]
            if self.bank_init == "uniform" or count >= self.bank.size:
                break
        data = torch.cat(images).to(self.device)
        if self.bank_init == "uniform":
            self.bank.init_uniform(tuple(data.shape[1:]), device=self.device, generator=self._rng)
        else:
            self.bank.init_from_data(data, self.data_noise, generator=self._rng)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs on every rank: gather all ranks' chains into one (world_size, bank_size, C, H, W) tensor.
        if not self.bank.initialized:
            return
        chains = self.bank.chains
        gathered = self.all_gather(chains).reshape(self.trainer.world_size, *chains.shape)
        checkpoint[CHECKPOINT_KEY] = gathered.detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY in checkpoint and self._trainer is not None:  # not when loaded for inference only
            self._restore_bank(checkpoint[CHECKPOINT_KEY])

    def _restore_bank(self, saved: Tensor) -> None:
        """Give this rank its own slice of a saved (world_size, bank_size, ...) bank, or an equal share of the pool."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if saved.shape[0] == world:
            chains = saved[rank]
        else:
            pool = saved.flatten(0, 1)
            share = pool.shape[0] // world
            rank_zero_warn(
                f"The checkpoint holds the chain banks of {saved.shape[0]} devices and this run has {world}: "
                f"pooling their {pool.shape[0]} chains and giving each device {share}"
                + (f" ({pool.shape[0] - share * world} left out)." if pool.shape[0] % world else ".")
            )
            chains = pool[rank * share : (rank + 1) * share]
        if chains.shape[0] != self.hparams.bank_size:
            rank_zero_warn(f"Continuing with {chains.shape[0]} chains per device from the checkpoint (bank_size is {self.hparams.bank_size}).")
        self.bank.load(chains)

    def _noise_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self._rng, device=x.device, dtype=x.dtype)

    # -- steps ----------------------------------------------------------------------------------------
    def _diverged(self, what: str) -> NonFiniteError:
        return NonFiniteError(
            f"{what} at global step {self.global_step} (epoch {self.current_epoch}). The EBM diverged: lower the "
            f"learning rate (model.optimizer), or the Langevin step size (model.sampler.step_size = "
            f"{self.sampler.step_size}), or raise the temperature (model.sampler.temperature = "
            f"{self.sampler.temperature}), and start from the last finite checkpoint with "
            "--model.init_args.init_weights PATH (--ckpt_path would restore the old settings)."
        )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch_images(batch)
        n = x.shape[0]
        idx, start = self.bank.draw(n, generator=self._rng_cpu)
        negatives, grad_norm = self.sampler.sample(self.energy_net, start, generator=self._rng, track_grad_norm=True)
        positives = x + self.data_noise * self._noise_like(x)
        energy = self.energy_net(torch.cat([positives, negatives])).float()  # bf16-mixed: (E+ - E-) / tau in float32
        e_pos, e_neg = energy[:n].mean(), energy[n:].mean()
        loss = (e_pos - e_neg) / self.sampler.temperature

        finite = bool(torch.isfinite(negatives).all() & torch.isfinite(loss))  # one host sync a step
        # decided together so that every rank stops, not only the one that diverged
        if self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            if not torch.isfinite(negatives).all():
                what = "Non-finite Langevin chains"
            else:
                what = "Non-finite energy" if not torch.isfinite(loss) else "Non-finite values on another rank"
            raise self._diverged(f"{what} (E(x+) = {e_pos.item():.4g}, E(x-) = {e_neg.item():.4g})")

        fresh = x + self.data_noise * self._noise_like(x)
        rejuvenated = self.bank.write(idx, negatives, fresh, self.rejuvenation_prob, generator=self._rng_cpu)
        self.log_dict(
            {
                "train/loss": loss,
                "train/energy_pos": e_pos,
                "train/energy_neg": e_neg,
                "train/energy_gap": e_pos - e_neg,
                "train/langevin_grad_norm": grad_norm,
                "train/rejuvenated": rejuvenated,
            },
            on_step=True,
            on_epoch=False,
        )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Energy of clean images vs the same images plus a random sign perturbation of l_inf ``val_perturbation``."""
        self._log_energy_gap(batch_images(batch), batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """As validation, on the test split (``pureebm test``)."""
        self._log_energy_gap(batch_images(batch), batch_idx, "test")

    def _log_energy_gap(self, x: Tensor, batch_idx: int, split: str) -> None:
        e_clean, e_pert = energy_gap(self.energy_net, x, self.val_perturbation, seed=batch_idx)
        self.log_dict(
            {
                f"{split}/energy_clean": e_clean.mean(),
                f"{split}/energy_perturbed": e_pert.mean(),
                f"{split}/energy_gap": (e_pert - e_clean).mean(),
                f"{split}/perturbed_higher": (e_pert > e_clean).float().mean(),
            },
            on_epoch=True,
            batch_size=x.shape[0],
            sync_dist=True,
        )
