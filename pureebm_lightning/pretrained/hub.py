"""Downloading a pretrained EBM's files from the Hugging Face Hub, through huggingface_hub's cache (``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` apply as everywhere else)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pureebm_lightning.errors import PretrainedError

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # what PyTorchModelHubMixin writes (new, then old releases)
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


@dataclass(frozen=True)
class HubFiles:
    """A repo's files in the local cache: the weights, ``config.json`` (None when the repo has none) and the commit
    they were resolved to."""

    weights: Path
    config: Path | None
    commit: str


def address(repo_id: str, revision: str | None) -> str:
    return f"hf://{repo_id}" + (f"@{revision}" if revision else "")


def offline_advice(repo_id: str, revision: str | None) -> str:
    """What to do on a machine that cannot reach the Hub."""
    from huggingface_hub import constants

    name = repo_id.split("/")[1]
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
    rev = f" --revision {revision}" if revision else ""
    return (f"{address(repo_id, revision)}: not in this machine's Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: "
            f"on a connected machine run `hf download {repo_id}{rev} --local-dir {name}`, copy the folder {name}/ here "
            f"and pass its path instead" + ("" if constants.HF_HUB_OFFLINE else " (HF_HUB_OFFLINE=1 skips the connection attempts)"))


def download(repo_id: str, revision: str | None = None) -> HubFiles:
    """The weights (``model.safetensors``, else ``pytorch_model.bin``) and ``config.json`` of a Hub repo, downloaded
    into the cache or found there; a :class:`PretrainedError` in one line for every way this can fail."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from pureebm_lightning import __version__

    where = address(repo_id, revision)
    get = partial(hf_hub_download, repo_id, library_name="pureebm-lightning", library_version=__version__)
    try:
        try:
            weights = Path(get(filename=WEIGHTS_FILES[0], revision=revision))
        except LocalEntryNotFoundError:
            raise
        except EntryNotFoundError:
            weights = Path(get(filename=WEIGHTS_FILES[1], revision=revision))
    except LocalEntryNotFoundError as err:
        raise PretrainedError(offline_advice(repo_id, revision)) from err
    except EntryNotFoundError as err:
        raise PretrainedError(f"{where}: holds neither {' nor '.join(WEIGHTS_FILES)}, so it is not an EBM of a known layout "
                              "(expected the authors' EBMSNGAN32 or a folder written by `pureebm export`)") from err
    except GatedRepoError as err:
        raise PretrainedError(f"{where}: a gated repo: accept its terms on the Hub and log in (`hf auth login`, or set "
                              "HF_TOKEN)") from err
    except RepositoryNotFoundError as err:
        raise PretrainedError(f"{where}: no such model repo on the Hub (or a private one: log in with `hf auth login`, "
                              "or set HF_TOKEN)") from err
    except RevisionNotFoundError as err:
        raise PretrainedError(f"{where}: the repo has no revision {revision!r} (a branch, tag or commit)") from err
    except HfHubHTTPError as err:
        raise PretrainedError(f"{where}: the Hub refused the download ({str(err).splitlines()[0]})") from err
    commit = weights.parent.name  # the cache keeps each file under snapshots/<commit>/
    try:
        config = Path(get(filename=CONFIG_FILE, revision=commit))
    except EntryNotFoundError:  # the repo has none (or, offline, it was never downloaded: the weights say enough)
        config = None
    return HubFiles(weights, config, commit)
