"""Serving a run behind an OpenAI-compatible API: the real `transformers serve` (tests/conftest.py's openai_server,
on 127.0.0.1) answers /v1/completions with the greedy continuation inference.py prints; a server that cannot
start, or does not answer in time, is reported in one error and stopped."""
import json
import time
import urllib.request

import pytest

import inference
from machinery.evaluation import serving
from machinery.evaluation.exports import cached_export

PROMPT = "Once upon a time"


def inference_continuation(run: str, capsys, max_new_tokens: int) -> str:
    """The continuation inference.py prints for PROMPT, greedy."""
    assert inference.main([run, PROMPT, "--temperature=0", f"--max_new_tokens={max_new_tokens}"]) == 0
    block = capsys.readouterr().out.split("--- continuation:\n", 1)[1]
    assert block.startswith(PROMPT) and block.endswith("\n\n")  # prompt + text, then print's newline and a blank
    return block[len(PROMPT):-2]


def test_completions_give_the_text_inference_prints(openai_server, export_cache, capsys):
    run = "llama3_atto"  # (the GPT-2 export is checked against our model in test_hf_export.py)
    export = cached_export(run, export_cache)
    body = {"model": str(export), "prompt": PROMPT, "max_tokens": 40, "temperature": 0}
    request = urllib.request.Request(f"{openai_server}/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    text = answer["choices"][0]["text"]
    assert len(text) > 20
    assert text == inference_continuation(run, capsys, 40)


def _children() -> set[int]:
    psutil = pytest.importorskip("psutil")
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_a_server_that_cannot_start_is_one_error(tmp_path):
    if serving.missing_packages():
        pytest.skip(f"needs {', '.join(serving.missing_packages())}: {serving.INSTALL}")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code") as error:
        with serving.served(tmp_path / "no_model_here", timeout=120):
            pass
    assert "no_model_here" in str(error.value)  # the end of the server's own log says why
    assert time.monotonic() - started < 120


def test_a_server_that_does_not_answer_in_time_is_stopped():
    if serving.missing_packages():
        pytest.skip(f"needs {', '.join(serving.missing_packages())}: {serving.INSTALL}")
    before = _children()
    with pytest.raises(RuntimeError, match="did not answer within 0.5 s"):
        with serving.served(timeout=0.5):
            pass
    assert _children() <= before  # the server process is gone
