"""``pureebm export``: a trained EBM's checkpoint as a Hub-ready folder (``model.safetensors``, ``config.json``,
``README.md``), which :func:`load_pretrained` reads back with identical energies."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pureebm_lightning.checkpoints import file_sha256, read_ebm_checkpoint
from pureebm_lightning.energy_gap import energy_gap
from pureebm_lightning.errors import CheckpointError, PoisonedDataError, UsageError
from pureebm_lightning.langevin import LangevinSampler
from pureebm_lightning.pretrained.hub import CARD_FILE, CONFIG_FILE, WEIGHTS_FILES
from pureebm_lightning.pretrained.layouts import energy_net_class, load_into
from pureebm_lightning.pretrained.loader import FORMAT_VERSION


def checkpoint_net(ckpt: dict[str, Any], where: str) -> tuple[nn.Module, dict[str, Any]]:
    """The energy net of an EBM checkpoint written by ``pureebm fit`` (with its weights) and its class path and init args."""
    spec = ckpt.get("hyper_parameters", {}).get("energy_net")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise CheckpointError(f"{where}: does not record its energy network's configuration (class_path and init_args); "
                              "export a checkpoint written by `pureebm fit`")
    cls = energy_net_class(spec["class_path"], where)
    init_args = dict(spec.get("init_args") or {})
    try:
        net = cls(**init_args)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: its energy_net init_args do not build a {cls.__name__} ({err})") from err
    prefix = "energy_net."
    load_into(net, {k[len(prefix):]: v for k, v in ckpt["state_dict"].items()}, where, f"its {cls.__name__}")
    return net.eval(), {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init_args}


def gap_images(data: str, shape: tuple[int, int, int], count: int) -> torch.Tensor:
    """Up to ``count`` images in [-1, 1], evenly spread over ``data`` (a folder ``pureebm purify`` reads, or ``digits``)."""
    from pureebm_lightning.images import to_signed_unit

    if data == "digits":
        from pureebm_lightning.bundled_digits import digits_images

        if shape[1] != shape[2] or shape[0] not in (1, 3):
            raise UsageError(f"--data digits makes square grey or RGB images; this EBM takes {shape[0]}x{shape[1]}x{shape[2]}")
        images = digits_images(shape[1], rgb=shape[0] == 3)[0]
    else:
        from pureebm_lightning.sources import open_source

        source = open_source(data)
        if tuple(source.shape) != tuple(shape):
            raise PoisonedDataError(f"{data}: its {'x'.join(map(str, source.shape))} images do not fit the EBM, which was "
                                    f"trained on {'x'.join(map(str, shape))} images")
        picks = torch.linspace(0, len(source) - 1, min(count, len(source))).round().long().unique()
        return to_signed_unit(torch.stack([source.load(int(i)) for i in picks]))
    picks = torch.linspace(0, len(images) - 1, min(count, len(images))).round().long().unique()
    return images[picks]


@torch.no_grad()
def measure_gap(net: nn.Module, images: torch.Tensor, perturbation: float, data: str, batch_size: int = 256) -> dict[str, Any]:
    """Mean energies of clean and sign-perturbed images, as the EBM's validation measures them (batch ``i`` seeded ``i``)."""
    clean, perturbed = [], []
    for i, start in enumerate(range(0, len(images), batch_size)):
        e_clean, e_pert = energy_gap(net, images[start:start + batch_size], perturbation, seed=i)
        clean.append(e_clean)
        perturbed.append(e_pert)
    e_clean, e_pert = torch.cat(clean), torch.cat(perturbed)
    return {"data": data, "images": len(images), "perturbation_255": round(perturbation * 255, 6),
            "energy_clean": e_clean.mean().item(), "energy_perturbed": e_pert.mean().item(),
            "energy_gap": (e_pert - e_clean).mean().item(), "perturbed_higher": (e_pert > e_clean).float().mean().item()}


def stop_calibration(net: nn.Module, sampler: LangevinSampler, clean: torch.Tensor, data: str) -> dict[str, Any]:
    """The stopping rule's calibration (``pureebm purify --stop energy`` without ``--stop_calibration``): quantiles of
    the energies the clean images take along the chain, as :func:`~pureebm_lightning.stopping_rule.calibrate` does."""
    from pureebm_lightning.stopping_rule import CALIBRATION_STEPS, chain_energies, round_threshold

    energies = chain_energies(sampler, net, clean, CALIBRATION_STEPS, seed=0)
    return {"data": data, "images": len(clean), "steps": CALIBRATION_STEPS, "seed": 0,
            "energy_quantiles": {f"{q:g}": round_threshold(torch.quantile(energies, q).item()) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}}


def export_ebm(ckpt_path: str | Path, out: str | Path, steps: int = 150, data: str | None = None, images: int = 1000,
               datasets: list[str] | None = None, license: str | None = None, overwrite: bool = False) -> Path:
    """Write the EBM of ``ckpt_path`` to the folder ``out`` (all at once: a failed export leaves nothing there); ``data``
    (a clean folder, or ``digits``) measures the clean vs perturbed energy gap the model card states."""
    from safetensors.torch import save_file

    from pureebm_lightning import __version__
    from pureebm_lightning.pretrained.model_card import model_card

    if steps < 0 or images < 1:
        raise UsageError(f"--steps must be at least 0 and --images at least 1, got {steps} and {images}")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"{out}: exists and is not empty; pass --overwrite to replace it, or another --out")
    if (out / ".git").exists():
        raise UsageError(f"{out}: holds a git repository (.git), which --overwrite would delete: export to another "
                         "folder and copy its three files in")
    ckpt_path = Path(ckpt_path).expanduser()
    ckpt = read_ebm_checkpoint(ckpt_path)
    net, spec = checkpoint_net(ckpt, str(ckpt_path))
    bank = ckpt.get("chain_bank")
    if bank is None:
        raise CheckpointError(f"{ckpt_path}: holds no chain bank, so the image shape it was trained on is unknown; export a "
                              "checkpoint saved after training started")
    shape = tuple(int(v) for v in bank.shape[2:])
    hp = ckpt.get("hyper_parameters", {})
    sampler = (hp.get("sampler") or {}).get("init_args") or {}
    sampler = {"step_size": 1.25e-2, "temperature": 1e-4, "n_steps": 100, "clamp": None, **sampler}
    perturbation = float(hp.get("val_perturbation", 16 / 255))
    clean = gap_images(data, shape, images) if data else None
    gap = measure_gap(net, clean, perturbation, data) if data else None
    calibration = stop_calibration(net, LangevinSampler(**sampler), clean, data) if data else None
    config = {
        "library_name": "pureebm-lightning", "pureebm_version": __version__, "format_version": FORMAT_VERSION,
        "energy_net": spec, "sampler": sampler, "image_shape": list(shape), "image_range": [-1.0, 1.0],
        "recommended_steps": steps,
        "training": {"global_step": int(ckpt.get("global_step", 0)), "epoch": int(ckpt.get("epoch", 0)),
                     "checkpoint": ckpt_path.name, "checkpoint_sha256": file_sha256(ckpt_path)},
        "energy_gap": gap,
        "stop_calibration": calibration,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(partial / WEIGHTS_FILES[0]),
                  metadata={"format": "pt"})
        (partial / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        model_card(config, list(datasets or []), license, out.name).save(partial / CARD_FILE)
        check_round_trip(net, partial, shape)
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        if out.exists():
            os.replace(out, old)  # kept until the new folder is in place: an interruption loses neither
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


def check_round_trip(net: nn.Module, folder: Path, shape: tuple[int, int, int]) -> None:
    """The exported folder, loaded back, gives exactly the checkpoint's energies (else the export is refused)."""
    from pureebm_lightning.pretrained.loader import load_pretrained

    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        same = torch.equal(load_pretrained(str(folder)).energy_net(x), net(x))
    if not same:
        raise RuntimeError(f"{folder}: the exported EBM does not give the checkpoint's energies (a bug: please report it)")
