"""Generation: the KV cache, left padding, batching and the compiled decode step never change greedy output;
stopping rules; the KV cache's own methods; the CLI."""
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
import machinery.generation.decode_step as decode_step_module
import tools
from config import ModelConfig, TrainConfig
from machinery.generation import GenerationConfig, SamplingConfig, generate, generate_ids
from machinery.generation.decode_step import COMPILE_AFTER_STEPS, should_compile
from machinery.run.weights import save_weights
from modules.attention import AttentionInputs
from modules.kv_cache import KVCache
from modules.model import Model
from tests.helpers import EVERY_OPTION_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
GREEDY = SamplingConfig(temperature=0)


def gen(model, rows, max_new_tokens, sampling=GREEDY, eos_id=None, **options):
    """generate_ids with the options as keywords (compile off unless asked: compiling takes seconds)."""
    options = dict(compile="off") | options
    return generate_ids(model, rows, sampling, GenerationConfig(max_new_tokens=max_new_tokens, **options),
                        eos_id=eos_id)


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
    # what sits outside the layers: every decode path must apply the same embedding and output multipliers
    "mup_softcap": dict(parametrization="mup", mup_base_dim=16, scale_embeddings=True, logit_softcap=1.0),
}


@pytest.fixture(autouse=True)
def fresh_compile_choice(monkeypatch):
    """compile="auto" remembers, per process, what it ran and compiled: each test starts from nothing."""
    monkeypatch.setattr(decode_step_module, "_eager_steps", {})
    monkeypatch.setattr(decode_step_module, "_compiled_shapes", set())


@pytest.fixture
def eager_fixed_slots(monkeypatch):
    """compile="on" runs the fixed-slot decode step without compiling it: its math, tested cheaply."""
    monkeypatch.setattr(decode_step_module, "compiled_decode_step", lambda: decode_step_module.decode_step)


@pytest.mark.parametrize("pos_enc_type", ["RoPE", "learnable", "Sinusoidal"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_cache_padding_and_batching_change_nothing(pos_enc_type, variant, eager_fixed_slots):
    model = tiny_model(pos_enc_type=pos_enc_type, **VARIANTS[variant])
    # max_new_tokens beyond the context: every row runs until its own context is full
    with torch.inference_mode():
        expected = [greedy_reference(model, p, max_len=40) for p in PROMPTS]
    assert [len(e) for e in expected] == [32 - len(p) for p in PROMPTS]
    assert gen(model, PROMPTS, 40, use_cache=True) == expected
    assert gen(model, PROMPTS, 40, use_cache=False) == expected
    assert gen(model, PROMPTS, 40, compile="on") == expected  # the fixed-slot step (eager here)
    for p, e in zip(PROMPTS, expected):  # each prompt alone
        assert gen(model, [p], 40) == [e]


def test_compiled_decode_step_gives_the_eager_tokens():
    """The real torch.compile of the fixed-slot step (compiled once: seconds), on padded rows, with eos, for the
    model with every option on (tests/helpers.py). (Sampling runs the same step; the eager tests cover it.)"""
    model = tiny_model(**EVERY_OPTION_VARIANTS["RoPE"])
    with torch.inference_mode():
        expected = [greedy_reference(model, p, max_len=40) for p in PROMPTS]
    assert gen(model, PROMPTS, 40, compile="on") == expected == gen(model, PROMPTS, 40, use_cache=False)
    eos = expected[0][3]
    assert gen(model, PROMPTS, 40, compile="on", eos_id=eos) == gen(model, PROMPTS, 40, eos_id=eos)


def test_when_auto_compiles():
    decode_step_module._compiled_shapes.add((4, 128))
    cpu = torch.device("cpu")
    # ski rental: eager until this shape has run COMPILE_AFTER_STEPS steps eagerly, then compiled
    steps = COMPILE_AFTER_STEPS // 3 + 1
    assert [should_compile("auto", 1, 64, steps, cpu) for _ in range(4)] == [False, False, False, True]
    assert not should_compile("auto", 2, 64, steps, cpu)  # another shape counts on its own
    assert should_compile("auto", 4, 128, 1, cpu)  # already compiled in this process: free to use
    assert should_compile("on", 1, 64, 1, cpu) and not should_compile("off", 4, 128, 10 ** 6, cpu)
    assert not should_compile("auto", 1, 64, 10 ** 6, torch.device("mps"))


def test_outputs_are_not_degenerate():
    # guards the test above: differently prompted rows should not all produce one repeated token
    model = tiny_model()
    out = gen(model, PROMPTS, 10)
    assert len({tuple(o) for o in out}) > 1 and any(len(set(o)) > 1 for o in out)


@pytest.mark.parametrize("path", ["cache", "no_cache", "fixed_slots"])
def test_a_row_stops_at_eos_and_the_others_go_on(path, eager_fixed_slots):
    model = tiny_model()
    free = gen(model, PROMPTS, 12)
    # call a token that row 0 first produces at step >= 2, and some other full-length row never produces, eos
    eos = next(t for k, t in enumerate(free[0]) if k >= 2 and t not in free[0][:k]
               and any(t not in o for o in free[1:] if len(o) == 12))
    options = dict(cache={}, no_cache=dict(use_cache=False), fixed_slots=dict(compile="on"))[path]
    out = gen(model, PROMPTS, 12, eos_id=eos, **options)
    # each row is cut just before its first eos (eos itself is not output); rows without one run on
    assert out == [o[:o.index(eos)] if eos in o else o for o in free]
    assert len(out[0]) >= 2 and any(len(o) == 12 for o in out[1:])


def test_max_new_tokens_counts_new_tokens():
    model = tiny_model()
    assert [len(o) for o in gen(model, PROMPTS, 3)] == [3, 3, 3, 3]
    assert [len(o) for o in gen(model, PROMPTS, 1)] == [1, 1, 1, 1]


def test_context_limit():
    model = tiny_model()
    full = [60] + [1] * 30  # 31 tokens: room for exactly one more in the 32-token context
    assert [len(o) for o in gen(model, [full, [60]], 100)] == [1, 31]
    with pytest.raises(ValueError, match="context is 32"):
        gen(model, [[60] + [1] * 31], 5)
    with pytest.raises(ValueError, match="vocab_len is 64"):
        gen(model, [[60, 64]], 5)


def test_sampling_is_seeded_and_batched_rows_differ(eager_fixed_slots):
    model = tiny_model()
    rows = [[60, 1, 2]] * 4
    a = gen(model, rows, 8, SamplingConfig(temperature=1.5, seed=3))
    assert a == gen(model, rows, 8, SamplingConfig(temperature=1.5, seed=3))
    assert a != gen(model, rows, 8, SamplingConfig(temperature=1.5, seed=4))
    assert len({tuple(r) for r in a}) > 1  # same prompt, independent samples
    # sampling with and without the cache is the same computation, so the same seed gives the same tokens
    assert a == gen(model, rows, 8, SamplingConfig(temperature=1.5, seed=3), use_cache=False)
    assert a == gen(model, rows, 8, SamplingConfig(temperature=1.5, seed=3), compile="on")


def test_generate_text_prepends_bos_and_repeats_samples():
    tok = CharTokenizer()
    model = tiny_model(vocab_len=tok.vocab_len)
    prompts = ["once upon", "a dog"]
    six = GenerationConfig(max_new_tokens=6)
    texts = generate(model, tok, prompts, GREEDY, six)
    ids = gen(model, [[tok.bos_id] + tok.encode(p) for p in prompts], 6, eos_id=tok.eos_id)
    assert texts == [tok.decode(i) for i in ids]
    assert generate(model, tok, "a dog", GREEDY, six) == texts[1:]  # a single string works too
    samples = generate(model, tok, prompts, GREEDY, GenerationConfig(max_new_tokens=6, num_samples=3))
    assert samples == [texts[0]] * 3 + [texts[1]] * 3  # grouped by prompt
    assert len(generate(model, tok, prompts, SamplingConfig(temperature=1.0, seed=0),
                        GenerationConfig(max_new_tokens=6, num_samples=2))) == 4
    assert len(generate(model, tok, prompts)) == 2  # the defaults


def test_model_mode_is_restored_and_dropout_is_off():
    model = tiny_model(dropout_attn=0.5, dropout_resid=0.5).train()
    a = gen(model, PROMPTS, 5)
    assert model.training
    assert a == gen(model.eval(), PROMPTS, 5)


def test_cache_takes_the_autocast_dtype():
    model = tiny_model()
    dtypes = []
    new_cache = model.new_cache
    model.new_cache = lambda *a, **kw: dtypes.append(kw.get("dtype")) or new_cache(*a, **kw)
    gen(model, PROMPTS[:2], 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gen(model, PROMPTS[:2], 3)
    assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16
    assert [len(o) for o in out] == [3, 3]


@pytest.mark.parametrize("make, match", [
    (lambda: GenerationConfig(max_new_tokens=0), "max_new_tokens"),
    (lambda: GenerationConfig(num_samples=0), "num_samples"),
    (lambda: GenerationConfig(compile="always"),
     "GenerationConfig.compile='always' is invalid: allowed values are 'auto', 'on', 'off'"),
    (lambda: GenerationConfig(use_cache="yes"), "use_cache"), (lambda: SamplingConfig(temperature=-1), "temperature"),
    (lambda: SamplingConfig(top_p=2), "top_p"), (lambda: SamplingConfig(top_k=0), "top_k"),
])
def test_options_reject_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("prompts", [[], [3], None])
def test_generate_rejects_bad_prompts(prompts):
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="prompts"):
        generate(tiny_model(vocab_len=tok.vocab_len), tok, prompts)


def test_kv_cache_methods():
    """The cache's own bookkeeping: padding marks, dropping rows and shared padding, fixed-slot writes."""
    cache = KVCache(num_layers=2, batch_size=3, max_positions=6, num_kv_heads=1, head_dim=2)
    cache.mark_padding(torch.tensor([[False, False, True], [False, True, True], [True, True, True]]))
    for layer in range(2):
        cache.update(layer, *[torch.arange(3.0)[None, None, :, None].expand(3, 1, 3, 2) + 10 * layer] * 2)
    cache.advance(3)
    with pytest.raises(ValueError, match="holds 6 positions; 7"):
        cache.update(0, *[torch.zeros(3, 1, 4, 2)] * 2)
    cache.keep_rows(torch.tensor([0, 1]), max_positions=4)  # rows 0, 1 share one padding slot: it goes
    assert cache.batch_size == 2 and cache.length == 2 and cache.max_positions == 4
    assert cache.key_valid.tolist() == [[False, True, True, True], [True, True, True, True]]
    assert cache.k[1][:, 0, :2, 0].tolist() == [[11.0, 12.0], [11.0, 12.0]]
    cache.start_static_writes()
    mask = cache.static_attention_mask()
    assert mask.shape == (2, 1, 1, 4) and mask[:, 0, 0].tolist() == [[False, True, True, False],
                                                                      [True, True, True, False]]
    assert cache.static_attention_mask(sliding_window=2)[0, 0, 0].tolist() == [False, True, True, False]
    k, _ = cache.update(0, *[torch.full((2, 1, 1, 2), 7.0)] * 2)
    assert k.shape == (2, 1, 4, 2) and k[:, 0, 2:, 0].tolist() == [[7.0, 0.0], [7.0, 0.0]]
    cache.advance(1)
    cache.stop_static_writes()
    assert cache.length == 3


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
    code, out, err = cli(run_dir, "Hello", "The cat", "--temperature=0", "--max_new_tokens=5", "--device=cpu", "--dtype=float32")
    assert code == 0, err
    assert "=== prompt 1/2: 'Hello'" in out and "=== prompt 2/2: 'The cat'" in out
    model, tok, _, _ = tools.load_model(run_dir)  # the texts are those of the library call
    texts = generate(model, tok, ["Hello", "The cat"], GREEDY, GenerationConfig(max_new_tokens=5))
    assert f"Hello{texts[0]}\n" in out and f"The cat{texts[1]}\n" in out


def test_cli_options(run_dir):
    code, out, err = cli(run_dir, "Hi", "--temperature=1", "--top_k=5", "--top_p=0.9", "--min_p=None", "--seed=1",
                         "--num_samples=2", "--show_tokens", "--max_new_tokens=4", "--dtype=bfloat16")
    assert code == 0, err
    assert "(sample 1/2)" in out and "(sample 2/2)" in out and "--- tokens" in out
    assert cli(run_dir, "Hi", "--temperature=1", "--seed=1", "--max_new_tokens=8")[1] == \
        cli(run_dir, "Hi", "--temperature=1", "--seed=1", "--max_new_tokens=8")[1]
    code, out, _ = cli(run_dir, "--temperature=0", "--max_new_tokens=2", "--", "--not a flag")
    assert code == 0 and "'--not a flag'" in out


@pytest.mark.parametrize("args, message", [
    (["no_such_model_xyz", "hi"], "no model named 'no_such_model_xyz'"),
    (["{tmp}", "hi"], "not a run folder"),
    (["{run}", "hi", "--temperature=-1"], "SamplingConfig.temperature=-1.0 is invalid: must be a number in [0.0, "),
    (["{run}", "hi", "--temperature=warm"], "--temperature='warm' is not a valid float"),
    (["{run}", "hi", "--temperature=1e-45"], "temperature=1e-45 is invalid: too small, it makes NaN probabilities"),
    (["{run}", "hi", "--temp=1"], "unknown option --temp. Did you mean: --temperature"),
    (["{run}", "hi", "--top_p=2"], "top_p"),
    (["{run}", "hi", "--top_k=0"], "top_k"),
    (["{run}", "hi", "--min_p=-1"], "min_p"),
    (["{run}", "hi", "--max_new_tokens=0"], "GenerationConfig.max_new_tokens=0 is invalid: must be an integer >= 1"),
    (["{run}", "hi", "--max_new_tokens"], "--max_new_tokens='true' is not a valid int"),
    (["{run}", "hi", "--num_samples=0"], "num_samples"),
    (["{run}", "hi", "--seed=-1"], "seed=-1"),
    (["{run}", "hi", "--compile=maybe"], "compile='maybe' is invalid: allowed values are 'auto', 'on', 'off'"),
    (["{run}", "hi", "--device=tpu"], "RunOptions.device='tpu' is invalid: allowed values are 'auto', 'cpu'"),
    (["{run}", "hi", "--dtype=float16"], "RunOptions.dtype='float16' is invalid"),
    (["{run}", "hi", "--temprature=1"], "unknown option --temprature. Did you mean: --temperature"),
    (["{run}", ""], "empty prompt"),
    (["{run}", "ok", "caf\udce9"], "prompt 2 is not valid UTF-8 text (byte e9 at character 3)"),
    (["{run}"], "no prompt given"),
    (["Once upon a time"], "no model named 'Once upon a time' in "),  # the model name forgotten
    (["Once upon a time"], "(the model comes first: python inference.py MODEL 'Once upon a time'); models there: "),
    (["Once upon a time", "The dog"], "no model named 'Once upon a time'"),
    (["no_such_model_xyz"], "no model named 'no_such_model_xyz'"),
    ([], "give a model"),
    (["{run}", "x" * 47], "prompt 1 is 48 tokens"),
])
def test_cli_errors(run_dir, tmp_path, args, message):
    args = [a.format(run=run_dir, tmp=tmp_path) for a in args]
    code, out, err = cli(*args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_help_lists_every_option_with_its_default():
    code, out, _ = cli("--help")
    assert code == 0
    for cls in (SamplingConfig, GenerationConfig, inference.RunOptions):
        for field in dataclasses.fields(cls):
            assert f"--{field.name} (" in out and f"default {field.default!r}" in out, field.name
    code, out, _ = cli("--help=top_p")
    assert code == 0 and "--top_p (float or None, default None)" in out


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
        "ok": ([run_dir, "Once", "--temperature=0", "--max_new_tokens=3"], 0, ""),
        "unknown": (["no_such_model_xyz", "hi"], 2, "no model named"),
        "corrupt": ([broken_run(run_dir, tmp_path, "corrupt"), "hi"], 2, "corrupt"),
        "flag": ([run_dir, "hi", "--top_p=2"], 2, "top_p"),
        "no_prompt": ([run_dir], 2, "no prompt given"),
        "bad_utf8": ([run_dir, b"caf\xe9".decode("utf-8", "surrogateescape")], 2, "prompt 1 is not valid UTF-8"),
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


def test_benchmark_conversion_to_transformers_gives_the_same_model():
    """bench/bench_decode_hf.py races transformers with our weights: its converted model must be ours."""
    pytest.importorskip("transformers")
    from bench.bench_decode_hf import to_transformers
    model = tiny_model(num_kv_heads=2, mlp_gated=True, mlp_nonlinearity="SiLU", norm_type="RMSNorm",
                       tie_embeddings=True, theta=500_000.0)
    hf = to_transformers(model)
    ids = torch.tensor([[60, 5, 6, 7, 8, 9, 10, 11]])
    with torch.inference_mode():
        assert torch.allclose(hf(ids).logits, model(ids)[0], atol=1e-4)
        hf_new = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             min_new_tokens=12, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert hf_new == gen(model, ids.tolist(), 12)[0]
    with pytest.raises(ValueError, match="qk_norm"):
        to_transformers(tiny_model(qk_norm=True))


@pytest.mark.parametrize("batched_positions", [False, True])
def test_rope_in_reals_matches_the_complex_rotation(batched_positions):
    """Under torch.compile RotaryEmbedding hands attention (cos, sin) pairs instead of complex numbers
    (inductor makes no complex kernels): apply_rope must rotate the same either way."""
    from modules.positional import RotaryEmbedding, apply_rope
    rope = RotaryEmbedding(head_dim=16, max_len=32, theta=10_000.0)
    positions = torch.tensor([[3, 4, 5], [0, 1, 2]]) if batched_positions else torch.arange(3)
    rotation = rope(positions)
    x = torch.randn(2, 4, 3, 16)
    real = torch.stack((rotation.real, rotation.imag), dim=-1)
    assert torch.allclose(apply_rope(x, real), apply_rope(x, rotation), atol=1e-6)
    assert torch.allclose(apply_rope(x.bfloat16(), real).float(), apply_rope(x.bfloat16(), rotation).float())


def assert_decode_step_logits_are_the_full_forwards(model, ids: torch.Tensor) -> None:
    """The fixed-slot step's logits for the last token of ids (1, T), after a prefill of the others, are the
    full forward's."""
    T = ids.shape[1]
    with torch.inference_mode():
        expected = model(ids)[0][:, -1]
        cache = model.new_cache(1, max_positions=T + 2)
        model(ids[:, :-1], cache=cache)
        cache.start_static_writes()
        got = decode_step_module.decode_step(model, ids[:, -1:], torch.tensor([[T - 1]]), cache, greedy=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["MHA", "mup_softcap"])
def test_decode_step_logits_equal_the_full_forward(variant):
    """The fixed-slot step's logits, not only its argmax: multipliers and caps outside the layers keep the
    argmax, so only the logits show that every path applies them."""
    model = tiny_model(**VARIANTS[variant])
    assert_decode_step_logits_are_the_full_forwards(model, torch.tensor([[5, 9, 3, 7, 11, 2]]))


@pytest.mark.parametrize("variant", list(EVERY_OPTION_VARIANTS))
def test_every_option_model_generates_its_full_forward(variant, monkeypatch):
    """Every option on at once (tests/helpers.py): the decode step's logits are the full forward's, and the
    growing cache and the fixed-slot step (eager here; compiled in the next test) give its greedy tokens."""
    model = tiny_model(**EVERY_OPTION_VARIANTS[variant])
    assert_decode_step_logits_are_the_full_forwards(model, torch.tensor([[5, 9, 3, 7, 11, 2, 8, 1]]))
    with torch.inference_mode():
        expected = [greedy_reference(model, p, max_len=40) for p in PROMPTS]
    assert gen(model, PROMPTS, 40) == expected
    assert gen(model, PROMPTS, 40, use_cache=False) == expected
    monkeypatch.setattr(decode_step_module, "compiled_decode_step", lambda: decode_step_module.decode_step)
    assert gen(model, PROMPTS, 40, compile="on") == expected


class X0Residual(Model):
    """Model.forward with a research edit in its own body (nanochat's x0 residual lambdas: each layer's input
    mixes back the embeddings x0). Every generation path must follow it: they all run the model's forward."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.x0_lambdas = torch.nn.Parameter(torch.linspace(0.5, 1.5, cfg.num_layers))

    def forward(self, input_ids, targets=None, *, positions=None, doc_ids=None, cache=None, last_only=False):
        if cache is not None and cache.write_slot is not None:
            slots = cache.write_slot
        else:
            start = cache.length if cache is not None else 0
            slots = torch.arange(start, start + input_ids.shape[1])
        positions = slots if positions is None else positions
        x0 = x = self.embed(input_ids, positions)
        inputs = AttentionInputs(slots, self.rope(positions), doc_ids, cache)
        for i, layer in enumerate(self.layers):
            x = layer(x + self.x0_lambdas[i] * x0, inputs)  # the edit
        inputs.advance_cache()
        return self.output_logits(x[:, -1:] if last_only else x), None


def test_generation_follows_an_edit_to_the_model_forward(monkeypatch):
    """Cached, fixed-slot (eager) and compiled decoding give the edited forward's tokens and logits."""
    torch.manual_seed(0)
    model = X0Residual(tiny_model().cfg).eval()
    assert_decode_step_logits_are_the_full_forwards(model, torch.tensor([[5, 9, 3, 7, 11, 2]]))
    with torch.inference_mode():
        expected = [greedy_reference(model, p, max_len=40) for p in PROMPTS]
        plain = Model(model.cfg).eval()
        plain.load_state_dict(model.state_dict(), strict=False)
        assert [greedy_reference(plain, p, max_len=40) for p in PROMPTS] != expected  # the edit matters
    assert gen(model, PROMPTS, 40) == expected  # the growing cache
    assert gen(model, PROMPTS, 40, compile="on") == expected  # the fixed-slot step under torch.compile
    monkeypatch.setattr(decode_step_module, "compiled_decode_step", lambda: decode_step_module.decode_step)
    assert gen(model, PROMPTS, 40, compile="on") == expected  # the same step, eager


@pytest.mark.parametrize("dtype,autocast_on", [("auto", False), ("float32", False), ("bfloat16", True)])
def test_cli_decodes_in_float32_on_cpu_unless_asked(run_dir, monkeypatch, dtype, autocast_on):
    """dtype=auto is float32 for CPU decoding: one-token steps gain nothing from bf16 casts (bench/README.md)."""
    seen = []
    real_generate = inference.generate
    monkeypatch.setattr(inference, "generate",
                        lambda *a, **kw: seen.append(torch.is_autocast_enabled("cpu")) or real_generate(*a, **kw))
    code, _, err = cli(run_dir, "Hi", "--temperature=0", "--max_new_tokens=2", "--device=cpu", f"--dtype={dtype}")
    assert code == 0, err
    assert seen == [autocast_on]
