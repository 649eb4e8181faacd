"""The weight layouts a pretrained EBM may come in, and how each becomes one of this project's energy nets.

- "authors": the PureEBM authors' ``EBMSNGAN32(nf, patch_size)`` (a PyTorchModelHubMixin: ``model.safetensors`` or
  ``pytorch_model.bin``, ``config.json`` optional). Its parameters map one to one onto :class:`SNGANResNetEnergy`
  (``blockK.c1 -> blocks.{K-1}.conv1``, ``c2 -> conv2``, ``c_sc -> shortcut``, ``l5 -> linear``); ``nf`` and
  ``patch_size`` are read off ``block1.c1.weight``. It takes 3 x 32p x 32p images (p = patch_size).
- "pureebm": a folder written by ``pureebm export``: the energy net's own state dict, and ``config.json`` naming its
  class and init arguments, the sampler settings and the image shape.
"""

from __future__ import annotations

import importlib
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pureebm_lightning.errors import PretrainedError, first_sentence

_AUTHORS_KEY = re.compile(r"^block([1-4])\.(c1|c2|c_sc)\.(weight|bias)$")
_AUTHORS_CONV = {"c1": "conv1", "c2": "conv2", "c_sc": "shortcut"}
AUTHORS_EXAMPLE = "block1.c1.weight, ..., block4.c2.bias, l5.weight"
ENERGY_NETS_MODULE = "pureebm_lightning.energy_nets"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors: safetensors, or a pickle read with ``torch.load(weights_only=True)`` (nothing in it runs)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise PretrainedError(f"{path}: not a readable safetensors file ({first_sentence(err)})") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PretrainedError(f"{path}: holds Python objects beyond tensors, which are refused (only plain weights load; "
                              f"{first_sentence(err)})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise PretrainedError(f"{path}: not a readable PyTorch weights file ({first_sentence(err)})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def is_authors_layout(state: dict[str, torch.Tensor]) -> bool:
    return "block1.c1.weight" in state and "l5.weight" in state and all(
        _AUTHORS_KEY.match(k) or k == "l5.weight" for k in state)


def authors_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' parameter names as :class:`SNGANResNetEnergy`'s."""
    mapped = {}
    for key, value in state.items():
        match = _AUTHORS_KEY.match(key)
        mapped["linear.weight" if key == "l5.weight" else
               f"blocks.{int(match.group(1)) - 1}.{_AUTHORS_CONV[match.group(2)]}.{match.group(3)}"] = value
    return mapped


def authors_net(state: dict[str, torch.Tensor], config: dict[str, Any] | None, where: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """:class:`SNGANResNetEnergy` with the authors' weights, and the image shape it takes."""
    from pureebm_lightning.energy_nets import SNGANResNetEnergy

    first = state["block1.c1.weight"]
    if first.dim() != 4:
        raise PretrainedError(f"{where}: block1.c1.weight has shape {tuple(first.shape)}, not a convolution's (out, in, 3, 3)")
    nf, channels = first.shape[0], first.shape[1]
    patch = math.isqrt(channels // 3) if channels % 3 == 0 else 0
    if patch < 1 or 3 * patch * patch != channels:
        raise PretrainedError(f"{where}: block1.c1.weight takes {channels} input channels; the authors' EBM takes 3 * patch_size**2")
    config = config or {}
    for name, found in (("nf", nf), ("patch_size", patch)):
        if name in config and config[name] != found:
            raise PretrainedError(f"{where}: config.json says {name} = {config[name]}, but block1.c1.weight has shape "
                                  f"{tuple(first.shape)} ({name} = {found})")
    net = SNGANResNetEnergy(in_channels=3, num_filters=int(nf), patch_size=patch)
    load_into(net, authors_to_ours(state), where, f"the authors' EBMSNGAN32(nf={nf}, patch_size={patch})")
    return net, (3, 32 * patch, 32 * patch)


def energy_net_class(class_path: str, where: str) -> type[nn.Module]:
    """The energy-net class ``class_path`` names: only this project's (a downloaded config must not choose what runs)."""
    module_name, _, name = class_path.rpartition(".")
    if module_name not in ("pureebm_lightning", ENERGY_NETS_MODULE):
        raise PretrainedError(f"{where}: config.json names the energy net {class_path}; only pureebm_lightning's energy nets "
                              "load from a pretrained folder (build other classes in Python and load model.safetensors)")
    cls = getattr(importlib.import_module(ENERGY_NETS_MODULE), name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PretrainedError(f"{where}: config.json names {class_path}, which is not an energy net of pureebm_lightning")
    return cls


def pureebm_net(state: dict[str, torch.Tensor], config: dict[str, Any], where: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """The energy net a ``pureebm export`` folder describes, with its weights, and the image shape it was trained on."""
    spec = config["energy_net"]
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise PretrainedError(f"{where}: config.json's energy_net has no class_path")
    cls = energy_net_class(spec["class_path"], where)
    try:
        net = cls(**spec.get("init_args", {}))
    except (TypeError, ValueError) as err:
        raise PretrainedError(f"{where}: config.json's energy_net init_args do not build a {cls.__name__} ({err})") from err
    load_into(net, state, where, f"the {cls.__name__} config.json describes")
    shape = config.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise PretrainedError(f"{where}: config.json has no image_shape [channels, height, width]")
    return net, tuple(shape)


def load_into(net: nn.Module, state: dict[str, torch.Tensor], where: str, what: str) -> None:
    """Load ``state`` into ``net`` strictly; a one-line error naming the first missing, unexpected or misshapen weight."""
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        detail = "; ".join(p for p in (f"missing {', '.join(missing[:3])}" if missing else "",
                                       f"unexpected {', '.join(unexpected[:3])}" if unexpected else "") if p)
        raise PretrainedError(f"{where}: its weights do not fit {what} ({detail})")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise PretrainedError(f"{where}: {key} has shape {tuple(state[key].shape)} there, {tuple(value.shape)} in {what}")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
