"""The TinyStories judge (model_comparison.py --judge_url): sampling, asking, parsing, failures, summary.

Which server each test talks to:
- the real `transformers serve` on 127.0.0.1 (conftest's openai_server) serving a tiny run as the "judge": the
  whole pipeline through model_comparison.main, malformed answers (a tiny model cannot grade: each answer is
  asked twice, then recorded as malformed), HTTP 400 (no chat template), HTTP 500 (an unknown model: bounded
  retries, then one line);
- a closed port: unreachable, one line at once;
- a stub OpenAI-compatible server in this file, for what the real one cannot be made to do: well-formed grades
  (means, confidence intervals, table, plot), a malformed answer followed by a good one, 429 rate limits
  with Retry-After, a timeout, the API key header, 401.
"""
import json
import math
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from scipy import stats

import model_comparison as mc
from machinery.evaluation import judge
from machinery.evaluation.exports import cached_export
from machinery.evaluation.openai_api import ApiError, Endpoint
from machinery.evaluation.serving import free_port

pytestmark = pytest.mark.usefixtures("one_thread")
GOOD = '{"grammar": 7, "creativity": 5, "consistency": 6, "age_group": "C"}'


# --- parsing ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, expected", [
    (GOOD, (7, 5, 6, "C")),
    ("Sure! Here you go:\n```json\n" + GOOD.replace("7", '"8/10"') + "\n```", (8, 5, 6, "C")),
    ('{"Grammar": 9, "Creativity": 4.5, "Consistency": 3, "Age group": "B (4-5)"}', (9, 4.5, 3, "B")),
    ('{"note": "x"} then {"grammar": 2, "creativity": 2, "consistency": 2, "age": "6-7"}', (2, 2, 2, "C")),
    ("Grammar: 7/10, Creativity: 6/10, Consistency: 8/10, Age group: D (8-9)", (7, 6, 8, "D")),
    ("grammar - 10\ncreativity - 1\nconsistency - 5\nage group: f", (10, 1, 5, "F")),
])
def test_grades_are_parsed_from_the_usual_answer_shapes(answer, expected):
    grades = judge.parse_grades(answer)
    assert (grades["grammar"], grades["creativity"], grades["consistency"], grades["age_group"]) == expected


@pytest.mark.parametrize("answer", [
    "", "The story is lovely.", '{"grammar": 7, "creativity": 5, "consistency": 6}',   # no age group
    '{"grammar": 11, "creativity": 5, "consistency": 6, "age_group": "C"}',            # out of range
    '{"grammar": 0, "creativity": 5, "consistency": 6, "age_group": "C"}',
    '{"grammar": true, "creativity": 5, "consistency": 6, "age_group": "C"}',
    '{"grammar": 7, "creativity": 5, "consistency": 6, "age_group": "G"}',             # no such group
    "Grammar: 7/10, Creativity: 5/10", None,
])
def test_answers_without_all_four_valid_grades_are_malformed(answer):
    assert judge.parse_grades(answer) is None


def test_beginnings_are_fixed_prefixes_that_stop_inside_a_sentence():
    stories = judge.story_beginnings(10)
    assert stories == judge.story_beginnings(10) and len(stories) == 10
    from machinery.comparison.texts import load_texts
    for beginning, story in zip(stories, load_texts(max_texts=10)):
        assert story.startswith(beginning) and len(beginning) < len(story)
        assert not beginning.endswith((".", "!", "?"))
        assert 12 <= len(beginning.split()) <= 45


def test_estimates_are_the_mean_and_the_student_t_interval():
    values = [7.0, 5.0, 6.0, 8.0, 4.0]
    est = judge.estimate(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=6.0, scale=stats.sem(values))
    assert est.n == 5 and est.mean == 6.0 and math.isclose(est.ci95, (high - low) / 2)
    assert math.isnan(judge.estimate([3.0]).ci95) and judge.estimate([]).n == 0


# --- the real server ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def judge_export(export_cache, tmp_path_factory):
    """llama3_atto's export as a stand-in judge, with a chat template (the export, a base model, has none) that
    keeps the prompt's last 300 characters: the tiny model's 256-token context cannot hold a judge prompt."""
    source = cached_export("llama3_atto", export_cache)
    path = tmp_path_factory.mktemp("judge") / "llama3_chat"
    shutil.copytree(source, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[-1]['content'][-300:] }}"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def comparison(tmp_path, url, model, *extra):
    return mc.main(["llama3_atto", "gpt2_atto", f"--out={tmp_path}", "--val_data=None", f"--judge_url={url}",
                    f"--judge_model={model}", "--judge_stories=2", "--judge_max_new_tokens=20",
                    "--judge_answer_tokens=16", "--x=step", *extra])


def read_records(out):
    return [json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()]


def test_end_to_end_against_the_real_server(openai_server, judge_export, tmp_path, capsys):
    assert comparison(tmp_path, openai_server, judge_export) == 0
    records = read_records(tmp_path)
    assert [(r["run"], r["story"]) for r in records] == [("llama3_atto", 0), ("llama3_atto", 1),
                                                         ("gpt2_atto", 0), ("gpt2_atto", 1)]
    for r in records:  # a tiny model's answers are stories, not grades: asked twice, then recorded as such
        assert r["status"] == "malformed" and len(r["answers"]) == 2 and all(r["answers"])
        assert r["continuation"] and r["beginning"] in judge.story_beginnings(2)
    assert (tmp_path / "judge_grades.png").stat().st_size > 0
    table = (tmp_path / "summary.md").read_text()
    assert "judge_grammar" in table and "judge_malformed" in table
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("model, extra, message", [
    ("EXPORT", ["--judge_api=chat"], "HTTP 400 Bad Request: Cannot use chat template"),
    ("no/such_model", ["--judge_retries=1"], "HTTP 500 Internal Server Error: Internal Server Error (gave up after 2"),
])
def test_http_errors_of_the_real_server_are_one_line(model, extra, message, openai_server, export_cache, tmp_path,
                                                     capsys):
    model = cached_export("llama3_atto", export_cache) if model == "EXPORT" else model
    assert comparison(tmp_path, openai_server, model, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_an_unreachable_judge_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    import machinery.evaluation.judge as judge_module
    monkeypatch.setattr(judge_module, "sample_continuations", lambda *a, **k: pytest.fail("sampled first"))
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert comparison(tmp_path, url, "any") == 2  # said before any continuation is sampled
    err = capsys.readouterr().err
    assert f"cannot reach {url}/chat/completions" in err and "Connection refused" in err and "Traceback" not in err
    with pytest.raises(ApiError, match="cannot reach"):  # and from a request, should it go away later
        Endpoint(url, "any").complete("p")


# --- the stub server -----------------------------------------------------------------------------------------
class Stub:
    """An OpenAI-compatible server on 127.0.0.1 answering from a script: each item is a reply text, an
    (HTTP status, Retry-After) pair, or ("sleep", seconds); the last item repeats. It records each request."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                item = stub.script[min(len(stub.requests), len(stub.script)) - 1]
                if isinstance(item, tuple) and item[0] == "sleep":
                    time.sleep(item[1])
                    item = GOOD
                if isinstance(item, tuple):
                    self.send_response(item[0])
                    if item[1] is not None:
                        self.send_header("Retry-After", str(item[1]))
                    payload = json.dumps({"error": {"message": f"scripted {item[0]}"}}).encode()
                else:
                    self.send_response(200)
                    choice = {"message": {"role": "assistant", "content": item}} if "chat" in self.path \
                        else {"text": item}
                    payload = json.dumps({"choices": [choice]}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def start(*script):
        servers.append(Stub(script))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def test_well_formed_grades_give_means_intervals_columns_and_a_plot(stub, tmp_path, capsys):
    answers = [f'{{"grammar": {g}, "creativity": 4, "consistency": {g - 1}, "age_group": "{a}"}}'
               for g, a in [(8, "C"), (6, "B"), (3, "A"), (5, "A")]]
    server = stub(*answers)
    assert comparison(tmp_path, server.url, "big-judge") == 0
    records = read_records(tmp_path)
    assert [r["status"] for r in records] == ["ok"] * 4
    assert len(server.requests) == 4 and server.requests[0]["path"] == "/v1/chat/completions"
    body = server.requests[0]["body"]
    assert body["model"] == "big-judge" and body["temperature"] == 0 and body["max_tokens"] == 16
    prompt = body["messages"][0]["content"]
    assert records[0]["beginning"] + judge.SEPARATOR + records[0]["continuation"] in prompt

    summary = judge.summarize(records)
    llama = summary["llama3_atto"]
    assert llama["grammar"].mean == 7.0 and llama["creativity"].mean == 4.0 and llama["graded"] == 2
    assert math.isclose(llama["grammar"].ci95, stats.t.ppf(0.975, 1) * stats.sem([8, 6]))
    assert llama["age"].mean == (6.5 + 4.5) / 2 and summary["gpt2_atto"]["age"].mean == 3.0
    table = mc.summary_table(["llama3_atto", "gpt2_atto"], judge=judge.judge_columns(summary))
    assert table.loc["gpt2_atto", "judge_grammar"] == 4.0 and table.loc["gpt2_atto", "judge_malformed"] == 0
    assert "judge_consistency_ci95" in (tmp_path / "summary.csv").read_text()
    assert (tmp_path / "judge_grades.png").stat().st_size > 0


def test_a_malformed_answer_is_asked_once_more(stub):
    server = stub("I would rather not.", GOOD)
    record = judge.grade(Endpoint(server.url, "m"), "Once upon a", " time")
    assert record["status"] == "ok" and record["grammar"] == 7 and len(record["answers"]) == 2
    server = stub("no", "still no", GOOD)
    record = judge.grade(Endpoint(server.url, "m"), "Once upon a", " time")
    assert record["status"] == "malformed" and record["answers"] == ["no", "still no"]


def test_rate_limits_are_retried_with_backoff_then_one_line(stub):
    server = stub((429, 0), (429, 0), GOOD)
    assert judge.parse_grades(Endpoint(server.url, "m", retries=3).complete("p")) is not None
    assert len(server.requests) == 3

    server = stub((429, 0))
    with pytest.raises(ApiError, match=r"HTTP 429 .*scripted 429 \(gave up after 3 tries\)"):
        Endpoint(server.url, "m", retries=2, backoff=0.01).complete("p")
    assert len(server.requests) == 3

    server = stub((503, None), GOOD)  # no Retry-After: exponential backoff from `backoff`
    started = time.monotonic()
    Endpoint(server.url, "m", retries=1, backoff=0.2).complete("p")
    assert time.monotonic() - started >= 0.2 and len(server.requests) == 2


def test_a_timeout_is_retried_then_one_line(stub):
    server = stub(("sleep", 3))
    with pytest.raises(ApiError, match=r"no answer within 0.3 s \(gave up after 2 tries\)"):
        Endpoint(server.url, "m", timeout=0.3, retries=1, backoff=0.01).complete("p")
    assert len(server.requests) == 2


def test_the_key_comes_from_the_environment_and_401_says_where(stub, monkeypatch):
    server = stub(GOOD)
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test")
    Endpoint(server.url, "m", key_env="JUDGE_TEST_KEY").complete("p")
    monkeypatch.delenv("JUDGE_TEST_KEY")
    Endpoint(server.url, "m", key_env="JUDGE_TEST_KEY").complete("p")
    assert [r["auth"] for r in server.requests] == ["Bearer sk-test", None]

    server = stub((401, None))
    with pytest.raises(ApiError, match=r"HTTP 401 .*\$JUDGE_TEST_KEY, which is not set"):
        Endpoint(server.url, "m", key_env="JUDGE_TEST_KEY").complete("p")
    assert len(server.requests) == 1  # not retried


def test_completions_api_sends_a_raw_prompt(stub):
    server = stub(GOOD)
    assert Endpoint(server.url, "m", api="completions").complete("the prompt") == GOOD
    assert server.requests[0]["path"] == "/v1/completions" and server.requests[0]["body"]["prompt"] == "the prompt"


@pytest.mark.parametrize("argv, message", [
    (["--judge_url=http://x/v1"], "--judge_url and --judge_model go together"),
    (["--judge_url=ftp://x", "--judge_model=m"], "must start with http:// or https://"),
    (["--judge_url=http://x/v1", "--judge_model=m", "--judge_api=rest"], "api='rest' is not one of"),
    (["--judge_url=http://x/v1", "--judge_model=m", "--judge_stories=0"], "--judge_stories=0"),
])
def test_bad_judge_options_are_one_line(argv, message, tmp_path, capsys):
    assert mc.main(["llama3_atto", f"--out={tmp_path}", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
