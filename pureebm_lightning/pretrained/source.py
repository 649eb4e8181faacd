"""Where an EBM comes from: a checkpoint of ``pureebm fit``, a pretrained folder, or a Hugging Face Hub repo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pureebm_lightning.errors import CheckpointError, PretrainedError

HUB_PREFIX = "hf://"
SYNTAX = "hf://owner/name, or hf://owner/name@revision"


@dataclass(frozen=True)
class EBMSource:
    """An EBM's location as the user wrote it: ``kind`` "checkpoint" (a ``.ckpt`` file), "folder" (a folder written
    by ``pureebm export`` or in the authors' layout) or "hub" (``location`` is the repo id, ``revision`` a branch, tag
    or commit, None for the default branch)."""

    text: str
    kind: Literal["checkpoint", "folder", "hub"]
    location: str
    revision: str | None = None

    @property
    def pretrained(self) -> bool:
        """A folder or a Hub repo (read by :func:`pureebm_lightning.pretrained.load_pretrained`)."""
        return self.kind != "checkpoint"


def parse_source(text: str | Path) -> EBMSource:
    """The :class:`EBMSource` that ``text`` names, or a one-line error for a malformed Hub address or a missing path."""
    text = str(text)
    if text.startswith(HUB_PREFIX):
        address = text[len(HUB_PREFIX):]
        address = address[len("models/"):] if address.startswith("models/") else address  # huggingface_hub's URI form
        if address.startswith(("datasets/", "spaces/")):
            raise PretrainedError(f"{text}: a {address.split('/')[0][:-1]} repo; an EBM is a model repo (write {SYNTAX})")
        repo_id, at, revision = address.partition("@")
        if at and not revision:
            raise PretrainedError(f"{text}: nothing after '@' (write {SYNTAX})")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise PretrainedError(f"{text}: a Hub repo is owner/name (write {SYNTAX})")
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise PretrainedError(f"{text}: not a valid Hub repo id ({str(err).splitlines()[0]})") from err
        return EBMSource(text, "hub", repo_id, revision or None)
    path = Path(text).expanduser()
    if path.is_dir():
        return EBMSource(text, "folder", str(path))
    if path.is_file():
        return EBMSource(text, "checkpoint", str(path))
    if not text.endswith(".ckpt") and text.count("/") == 1 and not text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text}: no such checkpoint file or folder; if it is a Hugging Face Hub repo, write hf://{text}")
    raise CheckpointError(f"{path}: no such checkpoint file (nor a pretrained folder; a Hub repo is written {SYNTAX})")
