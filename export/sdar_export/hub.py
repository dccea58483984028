"""Checkpoints named by a Hugging Face Hub id (``JetLM/SDAR-1.7B-Chat``), fetched into the Hub's cache.

Everything goes through ``huggingface_hub`` (the ``export`` extra), so its cache (``HF_HOME``,
``HF_HUB_CACHE``), ``HF_TOKEN`` or a saved login, ``HF_ENDPOINT`` (a mirror) and ``HF_HUB_OFFLINE``
behave as they do for every other Hub tool. ``config.json`` is fetched first and checked: a model
that is not SDAR is refused before gigabytes of weights are downloaded. Then only the files an export
reads are fetched (never PyTorch ``.bin`` duplicates, GGUF files or other repositories' extras).
No torch import here.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from .config import SDARConfig
from .errors import CheckpointError

# What sdar-export reads from a checkpoint: the config, the generation config (EOS ids), the weights
# (one file, or shards with their index) and the tokenizer with its chat template. The released
# checkpoints keep the template in tokenizer_config.json, where sdar_rt's tokenizer reads it.
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",  # holds the chat template
)

# ORG/NAME as the Hub spells repository ids (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


class HubError(CheckpointError):
    """A Hub checkpoint cannot be fetched or is not one sdar-export can export (one-line message)."""


def is_hub_id(model: str | os.PathLike) -> bool:
    """``model`` names a Hub repository: ORG/NAME, and no local path of that name exists (a local
    directory always wins, so ``./org/name`` checkouts keep working)."""
    text = str(model)
    return bool(_HUB_ID.fullmatch(text)) and not Path(text).expanduser().exists()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_checkpoint(model: str | os.PathLike, revision: str | None = None,
                       log: Callable[[str], None] = _log) -> Path:
    """The local checkpoint directory of ``model``: a path as given, or a Hub id's snapshot in the
    Hugging Face cache (downloaded when missing). ``revision`` (a branch, tag or commit) needs a Hub id."""
    if not is_hub_id(model):
        if revision is not None:
            raise HubError(f"--revision applies to a Hugging Face Hub id (ORG/NAME); {model} is a local path")
        return Path(model).expanduser()
    return download_checkpoint(str(model), revision, log)


def download_checkpoint(repo_id: str, revision: str | None = None,
                        log: Callable[[str], None] = _log) -> Path:
    """Fetches ``repo_id``'s checkpoint files into the Hugging Face cache; returns its snapshot dir."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise HubError(f"downloading {repo_id} from the Hugging Face Hub needs huggingface_hub ({exc}): "
                       'pip install "sdar_rt[export]"') from exc
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    config = _fetch(repo_id, revision, lambda: huggingface_hub.hf_hub_download(
        repo_id, "config.json", revision=revision))
    check_sdar_config(Path(config), repo_id)
    log(f"fetching {where} into the Hugging Face cache (only the files an export reads)")
    snapshot = _fetch(repo_id, revision, lambda: huggingface_hub.snapshot_download(
        repo_id, revision=revision, allow_patterns=list(CHECKPOINT_FILES)))
    path = Path(snapshot)
    if not any(path.glob("*.safetensors")):
        raise HubError(f"{where} has no *.safetensors weights (sdar-export reads safetensors only; a "
                       "repository with PyTorch .bin weights must be converted first)")
    return path


def check_sdar_config(config_path: Path, repo_id: str) -> SDARConfig:
    """The repository's config.json, refused unless it is an SDAR model sdar-export can export."""
    try:
        cfg = SDARConfig.from_file(config_path.parent)
    except CheckpointError as exc:
        raise HubError(f"{repo_id} is not an SDAR model sdar-export can export: {_one_line(exc)}") from exc
    if cfg.autoregressive:
        raise HubError(f"{repo_id} is a plain autoregressive {cfg.declared_model_type!r} model, not an SDAR "
                       "block-diffusion model (config.json model_type 'sdar' or 'sdar_moe'); sdar_rt "
                       "runs SDAR checkpoints such as JetLM/SDAR-1.7B-Chat")
    return cfg


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _fetch(repo_id: str, revision: str | None, call: Callable[[], str]) -> str:
    """``call()`` with huggingface_hub's errors turned into one-line ``HubError``s that say what to do."""
    from huggingface_hub import constants, errors
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # huggingface_hub 1.x names the server's "no such file" apart; 0.x raises EntryNotFoundError.
    RemoteEntryNotFoundError = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)  # noqa: N806

    endpoint = constants.ENDPOINT
    try:
        return call()
    # The order matters: a GatedRepoError is a RepositoryNotFoundError, a LocalEntryNotFoundError an
    # EntryNotFoundError.
    except GatedRepoError as exc:
        raise HubError(f"{repo_id} is a gated repository and this account has no access to it: accept its "
                       f"terms on {endpoint}/{repo_id}, then log in (hf auth login) or set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        if _status(exc) in (401, 403):
            raise _refused(endpoint, repo_id, _status(exc)) from exc
        raise HubError(f"{repo_id}: no such model repository on {endpoint}; check the name (ORG/NAME, e.g. "
                       "JetLM/SDAR-1.7B-Chat) or pass a local checkpoint directory") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{repo_id} has no revision {revision!r}; pass a branch, tag or commit of it to "
                       "--revision") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if constants.HF_HUB_OFFLINE:
            raise HubError(f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download "
                           "it once with network access (unset HF_HUB_OFFLINE), or pass a local checkpoint "
                           "directory") from exc
        raise HubError(f"cannot reach {endpoint} to download {repo_id}, and it is not in the Hugging Face "
                       "cache: check the network connection (or HF_ENDPOINT), or pass a local checkpoint "
                       "directory") from exc
    except RemoteEntryNotFoundError as exc:
        raise HubError(f"{repo_id} has no config.json, so it is not a Hugging Face model checkpoint; "
                       "sdar_rt runs SDAR checkpoints such as JetLM/SDAR-1.7B-Chat") from exc
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise _refused(endpoint, repo_id, status) from exc
        raise HubError(f"{endpoint} answered HTTP {status or 'nothing'} while downloading {repo_id}; try "
                       "again later, or check HF_ENDPOINT") from exc
    except OSError as exc:  # a full disk or an unwritable cache directory
        raise HubError(f"cannot store {repo_id} in the Hugging Face cache ({exc.strerror or exc}); free "
                       "space or point HF_HOME at a writable directory") from exc


def _status(exc) -> int | None:
    response = getattr(exc, "response", None)
    return response.status_code if response is not None else None


def _refused(endpoint: str, repo_id: str, status: int | None) -> HubError:
    return HubError(f"{endpoint} refused {repo_id} (HTTP {status}): it does not exist, or it is private or "
                    "gated and this request carried no token with access; check the name, or log in (hf auth "
                    "login) or set HF_TOKEN")
