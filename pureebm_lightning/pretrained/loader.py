"""Loading a pretrained EBM (a Hub repo or a folder, in the authors' layout or ``pureebm export``'s) as an energy net
with its sampler settings, image shape and the identity of its weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pureebm_lightning.checkpoints import file_sha256
from pureebm_lightning.errors import PretrainedError
from pureebm_lightning.langevin import LangevinSampler
from pureebm_lightning.pretrained.hub import CONFIG_FILE, WEIGHTS_FILES, address, download
from pureebm_lightning.pretrained.layouts import (
    AUTHORS_EXAMPLE,
    authors_net,
    is_authors_layout,
    pureebm_net,
    read_weights,
)
from pureebm_lightning.pretrained.source import EBMSource, parse_source

FORMAT_VERSION = 1  # of config.json as `pureebm export` writes it
#: the authors' purification settings for their EBM (images in [-1, 1]), used when a repo's config gives none
PAPER_SAMPLER = {"step_size": 1.25e-2, "temperature": 1e-4}


@dataclass
class PretrainedEBM:
    """A pretrained energy net, ready to purify or to start training from.

    ``layout`` is "authors" or "pureebm"; ``recommended_steps`` is the T its config recommends (None: not stated);
    ``repo_id`` and ``revision`` (the resolved commit) are None for a folder."""

    energy_net: nn.Module
    sampler: LangevinSampler
    image_shape: tuple[int, int, int]
    layout: str
    source: str
    weights_file: Path
    weights_sha256: str
    recommended_steps: int | None = None
    repo_id: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    network: dict[str, Any] | None = None  # the energy net's class path and init arguments

    def describe(self) -> str:
        """Where the weights came from, in one phrase."""
        return address(self.repo_id, self.revision) if self.repo_id else str(self.weights_file.parent)

    def record(self) -> dict[str, Any]:
        """What a purification's manifest records about the EBM, so that a result can be traced to its weights."""
        return {"ebm_source": self.source, "repo_id": self.repo_id, "revision": self.revision,
                "weights_file": self.weights_file.name, "weights_sha256": self.weights_sha256, "layout": self.layout,
                "energy_net": self.network}


def describe_net(net: nn.Module) -> dict[str, Any]:
    """An energy net's class path and the init arguments it keeps as attributes (for the authors' layout, where no
    config names them)."""
    import inspect

    args = {name: getattr(net, name) for name in inspect.signature(type(net)).parameters if hasattr(net, name)}
    return {"class_path": f"{type(net).__module__}.{type(net).__name__}", "init_args": args}


def folder_files(folder: Path) -> tuple[Path, Path | None]:
    """A pretrained folder's weights file (``model.safetensors`` first) and ``config.json`` (None if absent)."""
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            config = folder / CONFIG_FILE
            return folder / name, config if config.is_file() else None
    raise PretrainedError(f"{folder}: holds neither {' nor '.join(WEIGHTS_FILES)}: pass a folder written by `pureebm export` "
                          "or downloaded from the Hub, or an EBM checkpoint (.ckpt)")


def read_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PretrainedError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise PretrainedError(f"{path}: a JSON {type(config).__name__}, expected an object")
    return config


def load_pretrained(source: str | Path | EBMSource) -> PretrainedEBM:
    """The EBM at ``source``: ``hf://owner/name[@revision]`` (downloaded into, or read from, the Hugging Face cache) or
    a local folder; in the authors' layout or ``pureebm export``'s."""
    src = source if isinstance(source, EBMSource) else parse_source(source)
    if src.kind == "checkpoint":
        raise PretrainedError(f"{src.text}: a checkpoint file, not a pretrained folder or Hub repo (use Purifier.from_checkpoint)")
    if src.kind == "hub":
        files = download(src.location, src.revision)
        weights, config_path, repo_id, revision = files.weights, files.config, src.location, files.commit
        where = address(repo_id, src.revision)
    else:
        weights, config_path = folder_files(Path(src.location))
        repo_id = revision = None
        where = src.location
    state, config = read_weights(weights), read_config(config_path)
    version = (config or {}).get("format_version", 1)
    if "energy_net" in (config or {}) and not (isinstance(version, int) and version <= FORMAT_VERSION):
        raise PretrainedError(f"{where}: written by a newer pureebm-lightning (config.json format {version}; this release "
                              f"reads {FORMAT_VERSION}): upgrade with `pip install -U pureebm-lightning`")
    if config is not None and "energy_net" in config:
        net, shape = pureebm_net(state, config, where)
        layout = "pureebm"
    elif is_authors_layout(state):
        net, shape = authors_net(state, config, where)
        layout = "authors"
    else:
        names = ", ".join(list(state)[:3]) + (", ..." if len(state) > 3 else "")
        raise PretrainedError(f"{where}: not an EBM of a known layout (its weights are {names or 'empty'}): expected the "
                              f"authors' EBMSNGAN32 ({AUTHORS_EXAMPLE}) or a folder written by `pureebm export` "
                              "(config.json with energy_net)")
    settings = (config or {}).get("sampler") if layout == "pureebm" else None
    try:
        sampler = LangevinSampler(**{**PAPER_SAMPLER, **(settings or {})})
    except (TypeError, ValueError) as err:
        raise PretrainedError(f"{where}: config.json's sampler settings are not LangevinSampler's ({err})") from err
    steps = (config or {}).get("recommended_steps") if layout == "pureebm" else None
    if steps is not None and not (isinstance(steps, int) and steps >= 0):
        raise PretrainedError(f"{where}: config.json's recommended_steps is {steps!r}, not a number of steps (an integer >= 0)")
    network = config["energy_net"] if layout == "pureebm" else describe_net(net)
    return PretrainedEBM(net.eval(), sampler, shape, layout, src.text, weights, file_sha256(weights), steps, repo_id,
                         revision, config, network)
