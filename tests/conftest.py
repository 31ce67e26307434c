"""Shared fixtures. Real data: the sample bundled in data/samples (the tests need nothing outside the repository)."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "data" / "samples"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
    torch.use_deterministic_algorithms(False)  # a --deterministic run in this process must not outlive its test


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


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One token cache for the tiny runs (tokenizing the sample takes longer than training on it)."""
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture
def trained_dir(tmp_path, monkeypatch) -> Path:
    """A private trained/ for the runs a test makes (machinery/run/runs.py reads the variable at every call)."""
    path = tmp_path / "trained"
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def openai_server():
    """A real `transformers serve` on 127.0.0.1 (a free port, HF_HUB_OFFLINE=1), shared by the serving and judge
    tests: it loads whatever local export folder a request names as its model. Stopped at the end, however
    the tests end; skipped when the optional serving packages are missing."""
    from machinery.evaluation import serving
    missing = serving.missing_packages()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: {serving.INSTALL}")
    with serving.served(timeout=180, threads=1) as url:  # 1 thread: tiny models, a busy CI machine
        yield url


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory) -> Path:
    """A private folder for the tests' cached Hugging Face exports (machinery/evaluation/exports.py)."""
    pytest.importorskip("transformers", reason="exporting needs transformers: pip install -r requirements-optional.txt")
    return tmp_path_factory.mktemp("exports")


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
