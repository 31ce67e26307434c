"""evaluate.py: lm-evaluation-harness on runs through their cached Hugging Face export.

The bundled task (tinystories_bpb) must equal model_comparison.py's bits per byte on the same stories: each
story scored as [bos] + tokens + [eos] in windows of max_seq_len (some stories are longer than the context),
bos once. The harness's stock model, whose rolling loglikelihood puts its bos in front of the tokenizer's,
differs. Results land in the run folder and show up as comparison columns, for the current weights only."""
import json
import math
import shutil
import sys

import pytest
import torch

import evaluate
import model_comparison as mc
import tools
from machinery.comparison import metrics
from machinery.comparison.report import evaluate_run as comparison_row
from machinery.comparison.texts import load_texts
from machinery.evaluation import exports, harness
from machinery.evaluation.results import result_path, save_result

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = harness.BUNDLED_TASK


def needs_harness():
    pytest.importorskip("lm_eval.models.huggingface", reason=f"needs lm-evaluation-harness: {harness.INSTALL}")


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory):
    """llama3_atto copied: results are written into the run folder, never into the shipped one."""
    path = tmp_path_factory.mktemp("runs") / "llama3_copy"
    shutil.copytree(tools.resolve_run("llama3_atto"), path)
    return path


@pytest.fixture(scope="module")
def evaluated(run_copy, tmp_path_factory):
    """evaluate.py on the copy, offline, with the bundled task: (its saved record, the comparison's row)."""
    needs_harness()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        code = evaluate.main([str(run_copy), f"--tasks={TASK}",
                              f"--export_cache={tmp_path_factory.mktemp('exports')}"])
    assert code == 0
    record = json.loads(result_path(run_copy, TASK).read_text())
    return record, comparison_row(str(run_copy), load_texts(max_texts=200))


def test_bundled_task_equals_the_comparison_bits_per_byte(evaluated, run_copy):
    record, row = evaluated
    assert record["n_samples"]["effective"] == 80  # every bundled validation story, as the comparison takes
    assert abs(record["metrics"]["bits_per_byte"] - row["bits_per_byte"]) < 1e-4
    # the same number, by definition: byte perplexity = 2 ** bits per byte
    assert math.isclose(record["metrics"]["byte_perplexity"], 2 ** record["metrics"]["bits_per_byte"], rel_tol=1e-9)
    # the stories longer than the context are cut into windows on both sides
    _, tokenizer, cfg, _ = tools.load_model(run_copy)
    assert any(len(ids) - 1 > cfg.max_seq_len for ids in metrics.text_sequences(tokenizer, load_texts()))


def test_the_stock_harness_model_adds_a_second_bos_and_differs(evaluated, export_cache):
    """What the issue measured from outside: the harness's default model puts its prefix bos in front of the
    tokenizer's bos in rolling loglikelihood; TemplateGPTLM scores the comparison's [bos] + tokens + [eos]."""
    needs_harness()
    from lm_eval.models.huggingface import HFLM
    export = exports.cached_export("llama3_atto", export_cache)
    stock = HFLM(pretrained=str(export), device="cpu", batch_size=16, dtype="float32", max_length=256)
    story = load_texts(max_texts=1)[0]
    assert stock.tok_encode(story)[0] == stock.prefix_token_id == stock.tokenizer.bos_token_id  # bos twice
    ours = harness.harness_model(export, 256)
    ids = ours.text_ids(story)
    assert ids[0] == ours.tokenizer.bos_token_id and ids[1] != ids[0] and ids[-1] == ours.tokenizer.eos_token_id

    manager = harness.task_manager([TASK])
    limit = 20
    comparison = comparison_row("llama3_atto", load_texts(max_texts=limit))["bits_per_byte"]
    ours_bpb = harness.run_tasks(ours, [TASK], manager, limit=limit)["results"][TASK]["bits_per_byte,none"]
    stock_bpb = harness.run_tasks(stock, [TASK], manager, limit=limit)["results"][TASK]["bits_per_byte,none"]
    assert abs(ours_bpb - comparison) < 1e-4
    assert abs(stock_bpb - comparison) > 3e-3  # measured: +0.008 (0.7%) on llama3_atto's 80 stories


def test_harness_windows_are_the_comparison_windows():
    needs_harness()
    from machinery.evaluation.lm_eval_model import comparison_windows
    ids = list(range(1, 24))  # 22 predictions, windows of 8: 8 + 8 + 6
    ours = [(torch.tensor(c + t)[:-1].tolist(), t) for c, t in comparison_windows(ids, 8)]
    theirs = [(inputs[0].tolist(), targets[0].tolist()) for inputs, targets in metrics.windows([ids], 8, 1)]
    assert ours == theirs and [len(t) for _, t in ours] == [8, 8, 6]


def test_saved_results_are_comparison_columns_for_the_current_weights_only(run_copy, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    key = exports.export_key(run)
    save_result(run, {"task": "hellaswag", "metrics": {"acc": 0.25, "acc_norm": 0.26}, "weights_key": key,
                      "limit": None})
    save_result(run, {"task": "piqa", "metrics": {"acc": 0.5}, "weights_key": key, "limit": 10})
    save_result(run, {"task": "arc_easy", "metrics": {"acc": 0.3}, "weights_key": "00000000", "limit": None})
    table = mc.summary_table([str(run)])
    assert table.loc["run", "hellaswag/acc_norm"] == 0.26
    assert table.loc["run", "piqa/acc (limit)"] == 0.5  # a partial evaluation says so
    assert not any(c.startswith("arc_easy") for c in table.columns)  # measured on other weights
    assert any("arc_easy.json was measured on other weights" in n for n in table.attrs["notes"])
    assert table.columns[-1] == "config_diff"

    assert mc.main([str(run), f"--out={tmp_path / 'out'}", "--val_data=None"]) == 0
    captured = capsys.readouterr()
    assert "hellaswag/acc_norm" in captured.out and "other weights" in captured.err


def test_export_cache_reuses_an_export_and_keys_it_by_the_weights(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    run = tmp_path / "run"
    shutil.copytree(tools.resolve_run("gpt2_atto"), run)
    cache = tmp_path / "cache"
    foreign = cache / "someone_elses"
    foreign.mkdir(parents=True)
    first = exports.cached_export(run, cache)
    assert (first / "config.json").is_file() and first.name == f"run-{exports.export_key(run)}"

    import machinery.interop.export as export_module
    monkeypatch.setattr(export_module, "export_run", lambda *a, **k: pytest.fail("exported again"))
    assert exports.cached_export(run, cache) == first  # reused
    monkeypatch.undo()

    from safetensors.torch import load_file, save_file
    weights = load_file(run / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1
    save_file(weights, str(run / "model.safetensors"))
    second = exports.cached_export(run, cache)
    assert second != first and first.is_dir()  # new weights, new export; the old one is not ours to delete
    assert foreign.is_dir() and sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name,
                                                                                   foreign.name])


def test_check_tasks_names_the_unknown_task_with_close_matches():
    class Manager:
        all_tasks = ["hellaswag", "piqa", TASK]
    harness.check_tasks(["hellaswag", TASK], Manager())
    with pytest.raises(ValueError, match="unknown task 'hellaswg'. Did you mean: hellaswag"):
        harness.check_tasks(["hellaswg"], Manager())
    with pytest.raises(ValueError, match="name at least one task"):
        harness.check_tasks([], Manager())


@pytest.mark.parametrize("argv, message", [
    (["llama3_atto"], "--tasks is required"),
    ([f"--tasks={TASK}"], "name at least one run"),
    (["llama3_atto", f"--tasks={TASK}", "--limit=0"], "--limit=0 is invalid"),
    (["llama3_atto", f"--tasks={TASK}", "--taks=x"], "unknown option --taks"),
    (["no_such_run", f"--tasks={TASK}"], "no_such_run"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys):
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_without_the_harness_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval fails
    assert evaluate.main(["llama3_atto", f"--tasks={TASK}"]) == 2
    assert 'pip install "lm_eval[hf]"' in capsys.readouterr().err
