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


def offline_advice(repo_id: str, revision: str | None, missing: str | None = None) -> str:
    """What to do on a machine that cannot reach the Hub (``missing``: the one file that is not cached)."""
    from huggingface_hub import constants

    name = repo_id.split("/")[1]
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
    rev = f" --revision {revision}" if revision else ""
    what = f"its {missing} is not" if missing else "not"
    return (f"{address(repo_id, revision)}: {what} in this machine's Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: "
            f"on a connected machine run `hf download {repo_id}{rev} --local-dir {name}`, copy the folder {name}/ here "
            f"and pass its path instead" + ("" if constants.HF_HUB_OFFLINE else " (HF_HUB_OFFLINE=1 skips the connection attempts)"))


def download(repo_id: str, revision: str | None = None) -> HubFiles:
    """The weights (``model.safetensors``, else ``pytorch_model.bin``) and ``config.json`` of a Hub repo, downloaded
    into the cache or found there; a :class:`PretrainedError` in one line for every way this can fail."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    from pureebm_lightning import __version__

    get = partial(hf_hub_download, repo_id, library_name="pureebm-lightning", library_version=__version__)
    weights = None
    for name in WEIGHTS_FILES:
        try:
            weights = Path(_fetch(get, repo_id, revision, name))
            break
        except _Absent:
            continue  # the Hub says the repo has no such file: try the next name
        except LocalEntryNotFoundError as err:  # offline or unreachable, and not cached
            cached = [try_to_load_from_cache(repo_id, other, revision=revision) for other in WEIGHTS_FILES]
            found = next((c for c in cached if isinstance(c, str)), None)  # e.g. a repo that holds only the .bin
            if found is None:
                raise PretrainedError(offline_advice(repo_id, revision)) from err
            weights = Path(found)
            break
    if weights is None:
        raise PretrainedError(f"{address(repo_id, revision)}: holds neither {' nor '.join(WEIGHTS_FILES)}, so it is not an EBM "
                              "of a known layout (expected the authors' EBMSNGAN32 or a folder written by `pureebm export`)")
    commit = weights.parent.name  # the cache keeps each file under snapshots/<commit>/
    cached = try_to_load_from_cache(repo_id, CONFIG_FILE, revision=commit)
    if isinstance(cached, str):
        return HubFiles(weights, Path(cached), commit)
    if cached is not None:  # the Hub said this commit has no config.json (the authors' class may record none)
        return HubFiles(weights, None, commit)
    try:
        config = Path(_fetch(get, repo_id, commit, CONFIG_FILE))
    except _Absent:
        config = None
    except LocalEntryNotFoundError as err:  # the weights are cached, config.json was never fetched
        raise PretrainedError(offline_advice(repo_id, revision, CONFIG_FILE)) from err
    return HubFiles(weights, config, commit)


class _Absent(Exception):
    """The Hub answered that the repo has no such file."""


def _fetch(get, repo_id: str, revision: str | None, filename: str) -> str:
    """``hf_hub_download`` of one file; :class:`_Absent` if the repo lacks it, LocalEntryNotFoundError if it cannot be
    reached and is not cached, and a one-line :class:`PretrainedError` for anything else."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = address(repo_id, revision)
    try:
        return get(filename=filename, revision=revision)
    except LocalEntryNotFoundError:
        raise
    except EntryNotFoundError as err:
        raise _Absent(filename) from err
    except GatedRepoError as err:
        raise PretrainedError(f"{where}: a gated repo: accept its terms on the Hub and log in (`hf auth login`, or set "
                              "HF_TOKEN)") from err
    except RepositoryNotFoundError as err:
        raise PretrainedError(f"{where}: no such model repo on the Hub (or a private one: log in with `hf auth login`, "
                              "or set HF_TOKEN)") from err
    except RevisionNotFoundError as err:
        raise PretrainedError(f"{where}: the repo has no revision {revision!r} (a branch, tag or commit)") from err
    except HfHubHTTPError as err:
        raise PretrainedError(f"{where}: the Hub refused {filename} ({str(err).splitlines()[0]})") from err
    except Exception as err:  # noqa: BLE001 - proxies, TLS, a full disk: the network stack's own errors, in one line
        raise PretrainedError(f"{where}: downloading {filename} failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no message'})") from err


def prefetch(source: str | None, strategy) -> None:
    """Under several processes (``strategy.world_size`` > 1), download a Hub ``source`` on global rank 0 first (its
    failure raised on every rank, none left waiting), so that the other ranks then read the cache."""
    from pureebm_lightning.pretrained.source import parse_source
    from pureebm_lightning.rank_zero import run_on_rank_zero

    if source is None or strategy is None or strategy.world_size < 2:
        return
    src = parse_source(source)
    if src.kind == "hub":
        run_on_rank_zero(strategy, lambda: download(src.location, src.revision))
