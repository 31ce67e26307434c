"""An unreachable Hugging Face hub fails at once (no ~25 s of retries) and names the bundled sample."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from machinery.data import hub, sources

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def online(monkeypatch):
    """Online mode whatever the environment says, and no remembered reachability."""
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    hub._check_reachable.cache_clear()
    yield huggingface_hub.constants
    hub._check_reachable.cache_clear()


def test_unresolvable_endpoint_fails_fast_naming_the_sample(online, monkeypatch, tmp_path):
    monkeypatch.setattr(online, "ENDPOINT", "http://nonexistent.invalid")
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(hub.HubUnreachableError) as err:
        list(sources.iter_documents("noanabeshima/TinyStoriesV2", "train"))
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "nonexistent.invalid" in message and "--dataset=data/samples/tinystories" in message


def test_refused_connection_fails_fast(online, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(online, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(hub.HubUnreachableError, match="cannot connect to 127.0.0.1"):
        hub.check_hub_reachable("a/b")
    assert time.perf_counter() - start < 5


def test_reachable_endpoint_passes_and_offline_mode_skips_the_check(online, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(online, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.check_hub_reachable("a/b")  # no error
    monkeypatch.setattr(online, "ENDPOINT", "http://nonexistent.invalid")
    monkeypatch.setattr(online, "HF_HUB_OFFLINE", True)
    hub.check_hub_reachable("a/b")  # offline: `datasets` reads its cache, we don't probe


def test_proxy_is_what_gets_probed(online, monkeypatch):
    monkeypatch.setattr(online, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert hub._hub_address() == ("proxy.example", 3128)
    monkeypatch.delenv("https_proxy")
    assert hub._hub_address() == ("huggingface.co", 443)


def test_train_with_hf_endpoint_unresolvable_fails_fast(tmp_path):
    """The real environment variable, the real CLI: one line naming the sample, at once (imports aside)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://nonexistent.invalid", TEMPLATEGPT_TRAINED_DIR=str(tmp_path / "trained"))
    code = ("import time, sys, datasets, train; start = time.perf_counter(); "  # imports (seconds) untimed
            "rc = train.main(['--dataset=noanabeshima/TinyStoriesV2', '--dim=32', '--num_layers=1', "
            f"'--cache_dir={tmp_path / 'cache'}', '--max_iters=2', '--warmup_iters=0', '--model_name=hub']); "
            "print('seconds', time.perf_counter() - start); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    seconds = float(proc.stdout.split("seconds")[-1])
    assert seconds < 5, seconds
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not reach the Hugging Face hub") and "data/samples/tinystories" in last
