"""An OpenAI-compatible server for a run: `transformers serve` (pip install "transformers[serving]") on the run's
export, as a child process on 127.0.0.1, offline. It answers /v1/completions (a raw prompt: any base model)
and /v1/chat/completions (models whose tokenizer has a chat template).

    with served(cached_export("llama3_atto")) as url:       # http://127.0.0.1:<free port>/v1
        Endpoint(url, model=...).complete("Once upon a time")

The server is stopped on leaving the block, however it is left; a server that does not come up within
`timeout` seconds is stopped and reported with the end of its log.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVING_PACKAGES = ("fastapi", "uvicorn", "openai", "pydantic")  # what `transformers serve` imports
INSTALL = 'pip install "transformers[serving]"'


def missing_packages() -> list[str]:
    return [name for name in SERVING_PACKAGES if importlib.util.find_spec(name) is None]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_command(model_dir: str | Path | None, host: str, port: int, device: str = "cpu") -> list[str]:
    """`transformers serve` through this interpreter (no reliance on PATH). With model_dir the model is loaded
    at start and answers every request; without, each request's "model" (a local folder) is loaded on demand."""
    cli = "from transformers.cli.transformers import main; main()"
    command = [sys.executable, "-c", cli, "serve", "--host", host, "--port", str(port), "--device", device]
    return command + ([str(model_dir)] if model_dir is not None else [])


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def served(model_dir: str | Path | None = None, host: str = "127.0.0.1", port: int | None = None,
           device: str = "cpu", timeout: float = 120.0, threads: int | None = None):
    """Yield the server's base URL (http://host:port/v1) once /health answers; always stop the server.
    threads: torch's CPU threads in the server (OMP_NUM_THREADS). On a busy machine a small model decodes
    20x faster with 1 than with all cores fighting for them (measured: 0.4 s vs 8-13 s for 40 tokens of
    llama3_atto, 2 cores at load 8)."""
    if missing_packages():
        raise ValueError(f"serving needs {', '.join(missing_packages())}: {INSTALL}")
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryFile(mode="w+b") as log:
        process = subprocess.Popen(serve_command(model_dir, host, port, device), stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(base):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode("utf-8", "replace").strip().splitlines()[-15:]
                    state = f"exited with code {process.returncode}" if process.poll() is not None \
                        else f"did not answer within {timeout:g} s"
                    raise RuntimeError(f"transformers serve {state}; its last lines:\n" + "\n".join(tail))
                time.sleep(0.25)
            yield f"{base}/v1"
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (uvicorn shuts down cleanly), SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
