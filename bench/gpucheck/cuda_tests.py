"""Section tests: `pytest tests/test_cuda.py`, time-boxed, its pass/fail counts and failures as one line (on a
machine without a GPU every test is skipped, with the reason)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.gpucheck.context import Context

ROOT = Path(__file__).resolve().parents[2]
ITEMS = ("test_cuda",)
TEST_FILE = "tests/test_cuda.py"


def junit_counts(xml_path: Path) -> dict:
    """passed / failed / skipped / errors and the failures (test: first line of the message) of a JUnit file."""
    counts = dict(passed=0, failed=0, skipped=0, errors=0, failures=[], skip_reasons=[])
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name")
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        message = (outcome.get("message") or outcome.text or "").strip().splitlines()
        first = message[0][:300] if message else ""
        if outcome.tag == "skipped":
            counts["skipped"] += 1
            if first not in counts["skip_reasons"]:
                counts["skip_reasons"].append(first)
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            counts["failures"].append(f"{name}: {first}")
    return counts


def run(ctx: Context, items: tuple[str, ...]) -> None:
    ctx.run_item("test_cuda", ctx.sizes["estimate_s"], lambda: test_cuda(ctx))


def test_cuda(ctx: Context) -> None:
    timeout = max(10.0, min(ctx.sizes["timeout_s"], ctx.time_left()))
    # pytest.ini's addopts run the suite on two workers (pytest-xdist), which the GPU machine does not have:
    # cleared, and xdist blocked, so the CPU rehearsal runs this command as the GPU machine will
    command = [sys.executable, "-m", "pytest", TEST_FILE, "-o", "addopts=", "-p", "no:xdist", "-q", "-p",
               "no:cacheprovider", "-rs"]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        start = time.time()
        try:
            proc = subprocess.run([*command, f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout)
            timed_out, output = False, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            timed_out = True
            output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        ctx.log(output[-6000:])
        counts = junit_counts(xml) if xml.is_file() else dict(passed=0, failed=0, skipped=0, errors=0, failures=[],
                                                              skip_reasons=[])
    bad = counts["failed"] + counts["errors"]
    collected = bad + counts["passed"] + counts["skipped"] > 0  # a collection error leaves no test case
    status = "timeout" if timed_out else ("error" if bad or not collected else "ok")
    error = (f"pytest ran past {timeout:.0f} s" if timed_out else
             f"{bad} test(s) failed" if bad else None if status == "ok" else f"pytest ran no test: {output[-300:]}")
    ctx.write("test_cuda", status, error=error, timed_out=timed_out, seconds=round(time.time() - start, 1),
              command=" ".join(["python", "-m", "pytest", TEST_FILE]), device=ctx.device.type, **counts)

