"""Reaching the Hugging Face hub: fail at once, with what to do, when it cannot be reached.

Without a network `datasets` retries for ~25 s before giving up; check_hub_reachable resolves and connects
to the hub's host (or the HTTPS proxy) with a 3 s limit first. Every hub call of the data layer goes
through hub_call, which also turns "no such dataset" into a clear error.
"""
from __future__ import annotations

import functools
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from machinery import PROJECT_ROOT

LOCAL_HINT = ("Offline, use the sample bundled with the project: --dataset=data/samples/tinystories "
              "(TinyStories, train.jsonl and validation.jsonl) or "
              "--dataset=data/samples/tinyshakespeare/input.txt, or point --dataset at your own file or folder.")
_HUB_CONNECT_TIMEOUT_S = 3.0  # resolving and connecting to the hub's host; `datasets` alone retries for ~25 s


def looked_in() -> str:
    """Where a relative dataset path is looked for: the folder you run from, then the project (named once when
    they are the same folder)."""
    return " and in ".join(dict.fromkeys(map(str, (Path.cwd(), PROJECT_ROOT))))


class HubUnreachableError(RuntimeError):
    """The Hugging Face hub could not be reached; the message says how to use local data instead."""


def _hub_error(dataset: str, err: Exception) -> HubUnreachableError:
    return HubUnreachableError(f"could not reach the Hugging Face hub to load dataset {dataset!r} "
                               f"({type(err).__name__}: {err}); it is not a local path either "
                               f"(looked in {looked_in()}). Check your connection, or if the dataset is "
                               f"already downloaded set HF_HUB_OFFLINE=1. {LOCAL_HINT}")


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE=1: `datasets` reads only its local cache and fails at once without it."""
    import datasets.config
    import huggingface_hub.constants
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def _hub_address() -> tuple[str, int]:
    """(host, port) a hub request first connects to: the HTTP(S) proxy if one is set, else the endpoint
    (HF_ENDPOINT, default https://huggingface.co)."""
    import urllib.request
    from urllib.parse import urlsplit

    import huggingface_hub.constants
    endpoint = urlsplit(huggingface_hub.constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(endpoint.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    else:
        url = endpoint
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


@functools.lru_cache(maxsize=None)  # failures raise, so only a reachable address is remembered
def _check_reachable(host: str, port: int, timeout: float = _HUB_CONNECT_TIMEOUT_S) -> None:
    """Resolve the host and open one TCP connection, giving up after `timeout` seconds. Run in a thread
    because name resolution (getaddrinfo) takes no timeout of its own."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(lambda: socket.create_connection((host, port), timeout=timeout).close()).result(timeout)
    except FutureTimeout:
        raise TimeoutError(f"no answer from {host}:{port} within {timeout:g} s") from None
    finally:
        pool.shutdown(wait=False)  # a hung resolver thread must not hold us up


def unreachable_reason() -> str | None:
    """Why the hub's host cannot be resolved or connected to within 3 s, or None when it can."""
    host, port = _hub_address()
    try:
        _check_reachable(host, port)
    except OSError as e:  # socket.gaierror (no such host), ConnectionRefusedError, TimeoutError
        return f"cannot connect to {host}:{port}: {e}"
    return None


def check_hub_reachable(dataset: str) -> None:
    """Fail at once, with what to do, when the hub's host cannot be resolved or connected to (without
    this, `datasets` retries for ~25 s). Offline mode (HF_HUB_OFFLINE=1) skips the check: the library
    then reads its cache."""
    if _hub_offline():
        return
    if reason := unreachable_reason():
        raise _hub_error(dataset, ConnectionError(reason))


def hub_call(dataset: str, fn, *args, **kwargs):
    """Run a `datasets` hub call, turning network and not-found failures into clear errors."""
    from datasets.exceptions import DatasetNotFoundError
    check_hub_reachable(dataset)
    try:
        return fn(*args, **kwargs)
    except ConnectionError as e:
        raise _hub_error(dataset, e) from e
    except DatasetNotFoundError as e:
        raise FileNotFoundError(f"dataset {dataset!r} is neither a local path (looked in {looked_in()}) nor "
                                f"a dataset on the Hugging Face hub. {LOCAL_HINT}") from e
