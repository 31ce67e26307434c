"""`train.py --init_from=owner/name` when no such folder exists: the model of that name on the Hugging Face hub
(e.g. openai-community/gpt2, HuggingFaceTB/SmolLM2-135M), read from the Hugging Face cache or downloaded into it
with huggingface_hub. Only the config, tokenizer and safetensors files are fetched: a pickled .bin could run code
when loaded. The config comes first, so an architecture we cannot run is refused before any weights download.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

from machinery.data.hub import HubUnreachableError, unreachable_reason
from machinery.interop import hf_import

CONFIG_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json"]
WEIGHT_FILES = ["*.safetensors", hf_import.SAFETENSORS_INDEX]
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # the hub's owner/name


def is_repo_id(text: str) -> bool:
    return bool(REPO_ID.fullmatch(text)) and ".." not in text and not text.endswith(".")


def snapshot(repo_id: str, weights: bool) -> Path:
    """The model's folder in the Hugging Face cache, with its config (and its weights when `weights`), downloaded
    if the cache lacks them. Offline, or with no such model, one error line."""
    import huggingface_hub.constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = CONFIG_FILES + (WEIGHT_FILES if weights else [])
    with contextlib.suppress(LocalEntryNotFoundError):  # already downloaded: no network needed
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if _has(folder, weights):
            return folder
    what = f"--init_from={repo_id} is not a folder here, and the Hugging Face cache " \
           f"({huggingface_hub.constants.HF_HUB_CACHE}) lacks the hub model of that name{' or its weights' * weights}"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise HubUnreachableError(f"{what}; HF_HUB_OFFLINE=1 forbids downloading it")
    if reason := unreachable_reason():
        raise HubUnreachableError(f"{what}, and the hub cannot be reached to download it ({reason}): download it "
                                  f"with internet once, or give the path of a model folder")
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise FileNotFoundError(f"--init_from={repo_id} is neither a folder here nor a model on the Hugging Face hub "
                                f"that you may download ({type(e).__name__}; a gated or private model needs "
                                f"`hf auth login` first)") from None
    except (HfHubHTTPError, OSError) as e:
        raise HubUnreachableError(f"--init_from={repo_id}: downloading it from the Hugging Face hub failed "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--init_from={repo_id}: the hub model has no config.json, so it is no transformers "
                                f"model we can read")
    if weights and not _has(folder, weights):
        raise FileNotFoundError(f"--init_from={repo_id}: the hub model has no safetensors weights (pickled .bin "
                                f"files are never loaded: they can run code)")
    return folder


def _has(folder: Path, weights: bool) -> bool:
    """Whether a cached snapshot holds the config and, if asked, every safetensors file of the weights."""
    if not (folder / "config.json").is_file():
        return False
    if not weights:
        return True
    try:
        return all(path.is_file() for path in hf_import.weight_files(folder))
    except (FileNotFoundError, ValueError):
        return False
