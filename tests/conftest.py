"""Shared fixtures. Real data: the sample bundled in data/samples (the tests need nothing outside the repository)."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "data" / "samples"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)


@pytest.fixture
def sample_data() -> Path:
    if not SAMPLE_DATA.is_dir():
        pytest.fail(f"the bundled sample data is missing from {SAMPLE_DATA}: restore it with git checkout data/samples")
    return SAMPLE_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy machine its spin-waits cost
    up to 10x: modules of tiny-model tests opt in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def trained_dir(tmp_path, monkeypatch) -> Path:
    """A private trained/ for the runs a test makes (machinery/run/runs.py reads the variable at every call)."""
    path = tmp_path / "trained"
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def fresh_clone(tmp_path_factory) -> Path:
    """A copy of what a clone of this checkout holds (git's tracked files plus new files it does not ignore):
    no token cache, no runs beyond the shipped ones, nothing a developer's checkout gathered."""
    import shutil
    import subprocess
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e}): cannot tell what a clone holds")
    clone = tmp_path_factory.mktemp("clone") / "templateGPT"
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():  # (a file deleted but not yet committed is listed too)
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    return clone
