"""Generation: the KV cache, left padding and batching never change greedy output; stopping rules; the CLI."""
import contextlib
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inference
import tools
from config import ModelConfig, TrainConfig
from inference import generate, generate_ids
from modules.model import Model
from training.checkpoint import save_weights

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


class CharTokenizer:
    """Stand-in tokenizer: one id per character of a small alphabet, then bos, eos, pad."""
    name = "chars"
    chars = "abcdefghijklmnopqrstuvwxyz .,!?'"

    def __init__(self):
        self.bos_id, self.eos_id, self.pad_id = len(self.chars), len(self.chars) + 1, len(self.chars) + 2
        self.vocab_len = len(self.chars) + 3

    def encode(self, text):
        if isinstance(text, list):
            return [self.encode(t) for t in text]
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i < len(self.chars))

    def display(self, text):
        return "|".join(text)


def tiny_model(vocab_len=64, max_seq_len=32, seed=0, **overrides) -> Model:
    """A random float32 model with peaked logits (large init), so float noise never flips an argmax."""
    torch.manual_seed(seed)
    kw = dict(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=4, max_seq_len=max_seq_len, vocab_len=vocab_len,
              init_std=0.3, tokenizer="byte") | overrides
    return Model(ModelConfig(**kw)).eval()


def greedy_reference(model, prompt, max_len, eos_id=None):
    """The obvious way: one unpadded prompt, the whole sequence through the model every step, no cache."""
    seq, new = list(prompt), []
    while len(new) < max_len and len(seq) < model.cfg.max_seq_len:
        logits, _ = model(torch.tensor([seq]))
        token = int(logits[0, -1].argmax())
        if token == eos_id:
            break
        seq.append(token)
        new.append(token)
    return new


# prompts of different lengths (bos = 60 first); the long one leaves only a few slots of the 32-token context
PROMPTS = [[60, 5, 6, 7, 8, 9], [60, 3], [60] + list(range(10, 35)), [60, 40, 41, 42]]

VARIANTS = {
    "MHA": dict(),
    "GQA": dict(num_kv_heads=2),
    "MQA": dict(num_kv_heads=1),
    "window4": dict(sliding_window=4, num_kv_heads=2),
    "qk_norm": dict(qk_norm=True, num_kv_heads=2),
}


@pytest.mark.parametrize("pos_enc_type", ["RoPE", "learnable", "Sinusoidal"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_cache_padding_and_batching_change_nothing(pos_enc_type, variant):
    model = tiny_model(pos_enc_type=pos_enc_type, **VARIANTS[variant])
    # max_len beyond the context: every row runs until its own context is full
    with torch.inference_mode():
        expected = [greedy_reference(model, p, max_len=40) for p in PROMPTS]
    assert [len(e) for e in expected] == [32 - len(p) for p in PROMPTS]
    assert generate_ids(model, PROMPTS, max_len=40, temp=0, use_cache=True) == expected
    assert generate_ids(model, PROMPTS, max_len=40, temp=0, use_cache=False) == expected
    for p, e in zip(PROMPTS, expected):  # each prompt alone
        assert generate_ids(model, [p], max_len=40, temp=0) == [e]


def test_outputs_are_not_degenerate():
    # guards the test above: differently prompted rows should not all produce one repeated token
    model = tiny_model()
    out = generate_ids(model, PROMPTS, max_len=10, temp=0)
    assert len({tuple(o) for o in out}) > 1 and any(len(set(o)) > 1 for o in out)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_row_stops_at_eos_and_the_others_go_on(use_cache):
    model = tiny_model()
    free = generate_ids(model, PROMPTS, max_len=12, temp=0)
    # call a token that row 0 first produces at step >= 2, and some other full-length row never produces, eos
    eos = next(t for k, t in enumerate(free[0]) if k >= 2 and t not in free[0][:k]
               and any(t not in o for o in free[1:] if len(o) == 12))
    out = generate_ids(model, PROMPTS, max_len=12, temp=0, eos_id=eos, use_cache=use_cache)
    # each row is cut just before its first eos (eos itself is not output); rows without one run on
    assert out == [o[:o.index(eos)] if eos in o else o for o in free]
    assert len(out[0]) >= 2 and any(len(o) == 12 for o in out[1:])


def test_max_len_counts_new_tokens():
    model = tiny_model()
    assert [len(o) for o in generate_ids(model, PROMPTS, max_len=3, temp=0)] == [3, 3, 3, 3]
    assert [len(o) for o in generate_ids(model, PROMPTS, max_len=1, temp=0)] == [1, 1, 1, 1]


def test_context_limit():
    model = tiny_model()
    full = [60] + [1] * 30  # 31 tokens: room for exactly one more in the 32-token context
    assert [len(o) for o in generate_ids(model, [full, [60]], max_len=100, temp=0)] == [1, 31]
    with pytest.raises(ValueError, match="context is 32"):
        generate_ids(model, [[60] + [1] * 31], max_len=5)
    with pytest.raises(ValueError, match="vocab_len is 64"):
        generate_ids(model, [[60, 64]], max_len=5)


def test_sampling_is_seeded_and_batched_rows_differ():
    model = tiny_model()
    rows = [[60, 1, 2]] * 4
    a = generate_ids(model, rows, max_len=8, temp=1.5, seed=3)
    assert a == generate_ids(model, rows, max_len=8, temp=1.5, seed=3)
    assert a != generate_ids(model, rows, max_len=8, temp=1.5, seed=4)
    assert len({tuple(r) for r in a}) > 1  # same prompt, independent samples
    # sampling with and without the cache is the same computation, so the same seed gives the same tokens
    assert a == generate_ids(model, rows, max_len=8, temp=1.5, seed=3, use_cache=False)


def test_generate_text_prepends_bos_and_repeats_samples():
    tok = CharTokenizer()
    model = tiny_model(vocab_len=tok.vocab_len)
    prompts = ["once upon", "a dog"]
    texts = generate(model, tok, prompts, max_len=6, temp=0)
    ids = generate_ids(model, [[tok.bos_id] + tok.encode(p) for p in prompts], max_len=6, temp=0,
                       eos_id=tok.eos_id)
    assert texts == [tok.decode(i) for i in ids]
    assert generate(model, tok, "a dog", max_len=6, temp=0) == texts[1:]  # a single string works too
    samples = generate(model, tok, prompts, max_len=6, temp=0, num_samples=3)
    assert samples == [texts[0]] * 3 + [texts[1]] * 3  # grouped by prompt
    assert len(generate(model, tok, prompts, max_len=6, temp=1.0, num_samples=2, seed=0)) == 4


def test_model_mode_is_restored_and_dropout_is_off():
    model = tiny_model(dropout_attn=0.5, dropout_resid=0.5).train()
    a = generate_ids(model, PROMPTS, max_len=5, temp=0)
    assert model.training
    assert a == generate_ids(model.eval(), PROMPTS, max_len=5, temp=0)


def test_cache_takes_the_autocast_dtype():
    model = tiny_model()
    dtypes = []
    new_cache = model.new_cache
    model.new_cache = lambda *a, **kw: dtypes.append(kw.get("dtype")) or new_cache(*a, **kw)
    generate_ids(model, PROMPTS[:2], max_len=3, temp=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate_ids(model, PROMPTS[:2], max_len=3, temp=0)
    assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16
    assert [len(o) for o in out] == [3, 3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_len=0), "max_len"), (dict(temp=-1), "temp"), (dict(top_p=2), "top_p"), (dict(top_k=0), "top_k"),
    (dict(min_p=1.5), "min_p"), (dict(num_samples=0), "num_samples"), (dict(prompts=[]), "prompts"),
    (dict(prompts=[3]), "prompts"),
])
def test_generate_rejects_bad_arguments(kwargs, match):
    tok = CharTokenizer()
    model = tiny_model(vocab_len=tok.vocab_len)
    args = dict(prompts=["a"]) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(model, tok, **args)


# ---------------------------------------------------------------------------------------------------
# Command line, on a run folder with the real byte tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny_run"
    model_cfg = ModelConfig(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, max_seq_len=48, tokenizer="byte",
                            vocab_len=259, init_std=0.3)
    torch.manual_seed(0)
    save_weights(Model(model_cfg), path / "model.safetensors")
    (path / "model_config.json").write_text(json.dumps(dataclasses.asdict(model_cfg)))
    (path / "train_config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig())))
    return path


def cli(*args):
    """Run inference.main in-process (fast; the real processes are tested below): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = inference.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_cli_prints_each_prompt_with_its_continuation(run_dir):
    code, out, err = cli(run_dir, "Hello", "The cat", "--temp=0", "--max_len=5", "--device=cpu", "--dtype=float32")
    assert code == 0, err
    assert "=== prompt 1/2: 'Hello'" in out and "=== prompt 2/2: 'The cat'" in out
    model, tok, _, _ = tools.load_model(run_dir)  # the texts are those of the library call
    texts = generate(model, tok, ["Hello", "The cat"], max_len=5, temp=0)
    assert f"Hello{texts[0]}\n" in out and f"The cat{texts[1]}\n" in out


def test_cli_options(run_dir):
    code, out, err = cli(run_dir, "Hi", "--temp=1", "--top_k=5", "--top_p=0.9", "--min_p=None", "--seed=1",
                         "--num_samples=2", "--show_tokens", "--max_len=4", "--dtype=bfloat16")
    assert code == 0, err
    assert "(sample 1/2)" in out and "(sample 2/2)" in out and "--- tokens" in out
    assert cli(run_dir, "Hi", "--temp=1", "--seed=1", "--max_len=8")[1] == \
        cli(run_dir, "Hi", "--temp=1", "--seed=1", "--max_len=8")[1]
    code, out, _ = cli(run_dir, "--temp=0", "--max_len=2", "--", "--not a flag")
    assert code == 0 and "'--not a flag'" in out


@pytest.mark.parametrize("args, message", [
    (["no_such_model_xyz", "hi"], "no model named 'no_such_model_xyz'"),
    (["{tmp}", "hi"], "not a run folder"),
    (["{run}", "hi", "--temp=-1"], "temp"),
    (["{run}", "hi", "--temp=warm"], "--temp='warm' is not a number"),
    (["{run}", "hi", "--top_p=2"], "top_p"),
    (["{run}", "hi", "--top_k=0"], "top_k"),
    (["{run}", "hi", "--min_p=-1"], "min_p"),
    (["{run}", "hi", "--max_len=0"], "max_len"),
    (["{run}", "hi", "--num_samples=0"], "num_samples"),
    (["{run}", "hi", "--device=tpu"], "--device='tpu'"),
    (["{run}", "hi", "--dtype=float16"], "--dtype='float16'"),
    (["{run}", "hi", "--tmep=1"], "unknown flag --tmep (did you mean --temp?)"),
    (["{run}", "hi", "--max_len"], "--max_len needs a value"),
    (["{run}", ""], "empty prompt"),
    (["{run}"], "no prompt given"),
    ([], "give a model"),
    (["{run}", "x" * 47], "prompt 1 is 48 tokens"),
])
def test_cli_errors(run_dir, tmp_path, args, message):
    args = [a.format(run=run_dir, tmp=tmp_path) for a in args]
    code, out, err = cli(*args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def broken_run(run_dir: Path, tmp_path: Path, how: str) -> Path:
    bad = tmp_path / how
    bad.mkdir()
    for name in ("model_config.json", "train_config.json"):
        (bad / name).write_text((run_dir / name).read_text())
    if how == "corrupt":
        (bad / "model.safetensors").write_bytes(b"not safetensors at all")
    elif how == "mismatched":  # weights of a wider model
        cfg = ModelConfig(**json.loads((run_dir / "model_config.json").read_text()) | dict(dim=64, head_dim=None))
        save_weights(Model(cfg), bad / "model.safetensors")
    elif how == "bad_config":
        (bad / "model_config.json").write_text('{"dim": -3}')
    return bad


@pytest.mark.parametrize("how, message", [
    ("missing", "no weights at"), ("corrupt", "corrupt"), ("mismatched", "don't fit the model config"),
    ("bad_config", "corrupt or from an incompatible version"),
])
def test_cli_bad_runs(run_dir, tmp_path, how, message):
    code, _, err = cli(broken_run(run_dir, tmp_path, how), "hi")
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_in_real_processes(run_dir, tmp_path):
    """The same entry point as a user runs it: exit codes and stderr of real processes (run concurrently,
    since each pays for importing torch)."""
    cases = {
        "ok": ([run_dir, "Once", "--temp=0", "--max_len=3"], 0, ""),
        "unknown": (["no_such_model_xyz", "hi"], 2, "no model named"),
        "corrupt": ([broken_run(run_dir, tmp_path, "corrupt"), "hi"], 2, "corrupt"),
        "flag": ([run_dir, "hi", "--top_p=2"], 2, "top_p"),
        "no_prompt": ([run_dir], 2, "no prompt given"),
    }
    procs = {name: subprocess.Popen([sys.executable, "inference.py", *map(str, args)], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, _, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        _, code, message = cases[name]
        assert proc.returncode == code, (name, err)
        assert message in err and "Traceback" not in err, (name, err)
        if name == "ok":
            assert "=== prompt 1/1: 'Once'" in out and "--- continuation:\nOnce" in out
