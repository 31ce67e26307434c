"""On a CUDA GPU (skipped elsewhere; bench/gpu_check.py runs this file there, time-boxed): the fast paths equal
modules/reference.py in float32 and within bf16 tolerance, SDPA really takes the flash or cuDNN kernel for
unmasked causal attention (GQA too), FlexAttention equals the reference, compiled equals eager, checkpoints
move between CUDA and CPU, KV-cache generation equals no cache, the CUDA RNG state is saved and restored with
a checkpoint, and a training step reads the device from the host only once.

Errors are relative: ||out - ref|| / ||ref|| (float32 without TF32 lands far below 1e-5; bf16 near 1e-2).

Rehearsal without a GPU: TEMPLATEGPT_CUDA_TESTS_ON=cpu runs every test that needs no CUDA feature of its own on
the CPU instead (the others say why they skip), so the file's code has run before a GPU window.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import train
from config import ModelConfig, TrainConfig
from machinery.data.batches import TokenBatches
from machinery.generation import GenerationConfig, SamplingConfig, generate_ids
from machinery.run.checkpoint import latest_checkpoint
from machinery.run.run_state import RunState
from machinery.run.weights import read_weights
from modules import reference
from modules.attention import AttentionInputs, SelfAttention, attention_mask
from modules.mlp import MLP
from modules.model import Model
from modules.norm import build_norm
from modules.positional import RotaryEmbedding
from tests.conftest import SAMPLE_DATA
from tests.helpers import deterministic, read_log
from training.optim import build_optimizers
from training.step import train_step

CUDA = torch.device(os.environ.get("TEMPLATEGPT_CUDA_TESTS_ON", "cuda"))  # 'cpu': the rehearsal above
REHEARSAL = CUDA.type != "cuda"
pytestmark = pytest.mark.skipif(not REHEARSAL and not torch.cuda.is_available(),
                                reason="no CUDA GPU is visible: these tests run on a GPU machine "
                                       "(python bench/gpu_check.py runs them there)")
needs_cuda = pytest.mark.skipif(REHEARSAL, reason="rehearsal on the CPU: this test needs CUDA itself")
FLOAT32_TOL, BF16_TOL = 1e-5, 2e-2


@pytest.fixture(autouse=True)
def full_float32():
    """float32 matmuls in float32 (not TF32) while a test runs, so float32 comparisons can be tight; and
    torch's default kernels again after a test whose run asked for deterministic ones."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    threads = torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all()
    return float((out - ref).norm() / ref.norm())


def cfg(**kw) -> ModelConfig:
    base = dict(dim=128, num_layers=2, num_q_heads=4, num_kv_heads=2, vocab_len=256, max_seq_len=64)
    return ModelConfig(**{**base, **kw})


def randomized(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2).add_(1.0 if p.dim() == 1 else 0.0)
    return module.to(CUDA)


def autocast(dtype: torch.dtype):
    return torch.autocast(CUDA.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


# --- fast paths against the float64 reference ------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float32, FLOAT32_TOL), (torch.bfloat16, BF16_TOL)])
def test_norms_and_mlps_equal_reference(dtype, tol):
    x = torch.randn(4, 16, 128, device=CUDA)
    for norm_type in ("RMSNorm", "LayerNorm"):
        norm = randomized(build_norm(norm_type, 128, 1e-5, affine=True, bias=norm_type == "LayerNorm"))
        with autocast(dtype):
            assert rel_err(norm(x), reference.norm(x, norm_type, norm)) < tol, norm_type
    for nonlinearity, gated in (("GeLU", False), ("SiLU", True)):
        mlp = randomized(MLP(cfg(mlp_nonlinearity=nonlinearity, mlp_gated=gated)))
        with autocast(dtype):
            assert rel_err(mlp(x), reference.mlp(x, mlp, nonlinearity, gated)) < tol, nonlinearity


ATTENTION = {"plain": {}, "GQA+RoPE": dict(rope=True), "window": dict(sliding_window=5),
             "docs": dict(docs=True), "MQA+window+qk_norm": dict(num_kv_heads=1, sliding_window=7, qk_norm=True)}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, FLOAT32_TOL), (torch.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("variant", list(ATTENTION))
def test_sdpa_attention_equals_reference(variant, dtype, tol):
    spec = dict(ATTENTION[variant])
    use_rope, docs = spec.pop("rope", False), spec.pop("docs", False)
    c = cfg(**spec)
    attn = randomized(SelfAttention(c, 0))
    B, T = 2, 40
    x = torch.randn(B, T, c.dim, device=CUDA)
    slots = torch.arange(T, device=CUDA)
    doc_ids = torch.randint(0, 3, (B, T), device=CUDA).sort(dim=1).values if docs else None
    rope = RotaryEmbedding(c.head_dim, T, c.theta).to(CUDA)(slots) if use_rope else None
    with autocast(dtype):
        y = attn(x, AttentionInputs(slots, rope, doc_ids, kernel="sdpa"))
    allowed = reference.mask(T, c.sliding_window, None if doc_ids is None else doc_ids.cpu()).to(CUDA)
    expected = reference.self_attention(x, attn, slots if use_rope else None, c.theta, allowed)
    assert rel_err(y, expected) < tol


@needs_cuda  # FlexAttention has no backward on CPUs
def test_flex_attention_equals_reference_forward_and_backward():
    """The block-mask kernel (compiled: FlexAttention is fast only so) for documents and a window, float32."""
    c = cfg(sliding_window=6)
    attn = randomized(SelfAttention(c, 0))
    B, T = 2, 200  # two 128-token blocks: some blocks skipped, some partly masked
    x = torch.randn(B, T, c.dim, device=CUDA, requires_grad=True)
    slots = torch.arange(T, device=CUDA)
    doc_ids = torch.randint(0, 5, (B, T), device=CUDA).sort(dim=1).values.int()
    flex = attn(x, AttentionInputs(slots, None, doc_ids, kernel="flex"))
    (grad_flex,) = torch.autograd.grad(flex.square().sum(), x)
    sdpa = attn(x, AttentionInputs(slots, None, doc_ids, kernel="sdpa"))
    (grad_sdpa,) = torch.autograd.grad(sdpa.square().sum(), x)
    allowed = attention_mask(slots, slots, 6, doc_ids)[:, 0]  # equal to reference.mask (tests/test_modules.py)
    expected = reference.self_attention(x, attn, None, c.theta, allowed)
    assert rel_err(flex, expected) < FLOAT32_TOL
    assert rel_err(grad_flex, grad_sdpa) < 1e-4


# --- SDPA takes the fused kernels ------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_unmasked_causal_attention_runs_on_flash_or_cudnn(kv_heads):
    """With SDPA restricted to the flash and cuDNN kernels, MHA and GQA causal attention without a mask still run
    (forward and backward, bf16); a mask makes the flash-only kernel refuse, so the restriction is real."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    c = cfg(num_kv_heads=kv_heads)
    attn = randomized(SelfAttention(c, 0))
    x = torch.randn(2, 64, c.dim, device=CUDA, requires_grad=True)
    slots = torch.arange(64, device=CUDA)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]), autocast(torch.bfloat16):
        attn(x, AttentionInputs(slots)).float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    doc_ids = torch.zeros(2, 64, dtype=torch.long, device=CUDA)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast(torch.bfloat16), pytest.raises(RuntimeError):
        attn(x, AttentionInputs(slots, None, doc_ids, kernel="sdpa"))


# --- compile, checkpoints, generation, RNG, host syncs ----------------------------------------------------
@needs_cuda  # compiling on a CPU is tested in tests/test_model.py
def test_compiled_model_equals_eager():
    torch._dynamo.reset()
    eager = Model(cfg(num_layers=1)).to(CUDA)
    model = Model(cfg(num_layers=1)).to(CUDA)
    model.load_state_dict(eager.state_dict())
    x = torch.randint(0, 256, (2, 32), device=CUDA)
    logits, loss = torch.compile(model, dynamic=False)(x, x)
    loss.backward()
    ref_logits, ref_loss = eager(x, x)
    ref_loss.backward()
    assert rel_err(logits, ref_logits) < FLOAT32_TOL and rel_err(loss, ref_loss) < FLOAT32_TOL
    for (name, p), (_, ref) in zip(model.named_parameters(), eager.named_parameters()):
        assert rel_err(p.grad, ref.grad) < 1e-4, name


def tiny_run(cache, name: str, device: str, **extra) -> list[str]:
    settings = dict(dim=64, num_layers=2, num_q_heads=4, num_kv_heads=2, max_seq_len=32, vocab_len=512,
                    tokenizer="bpe_tinyStories", dataset=str(SAMPLE_DATA / "tinystories"), cache_dir=str(cache),
                    micro_batch_size=4, max_iters=6, eval_interval=3, eval_batches=2, checkpoint_interval=3,
                    warmup_iters=2, dtype="float32", device=device, model_name=name, deterministic=True)
    settings.update(extra)
    return [f"--{k}={v}" for k, v in settings.items()]


@pytest.mark.parametrize("first, then", [(CUDA.type, "cpu"), ("cpu", CUDA.type)])
def test_a_checkpoint_moves_between_cuda_and_cpu(first, then, trained_dir, tmp_path):
    args = tiny_run(tmp_path / "cache", "moved", first, max_iters=3)
    assert train.main(args) == 0
    saved = read_weights(latest_checkpoint(trained_dir / "moved") / "model.safetensors")
    assert train.main(tiny_run(tmp_path / "cache", "moved", then) + ["--resume"]) == 0
    import tools
    model = tools.load_model(trained_dir / "moved", device=then)[0]
    assert next(model.parameters()).device.type == then
    assert len(read_log(trained_dir / "moved")) == 2 and all(t.device.type == "cpu" for t in saved.values())


def test_cuda_rng_state_is_saved_and_restored(trained_dir, tmp_path):
    state = RunState()
    state.capture_rng(CUDA)
    drawn = torch.rand(5, device=CUDA)
    state.restore_rng(CUDA)
    assert torch.equal(torch.rand(5, device=CUDA), drawn)
    # end to end: dropout draws from the CUDA generator; a resumed run repeats the straight run exactly
    on = CUDA.type
    assert train.main(tiny_run(tmp_path / "cache", "straight", on, dropout_resid=0.2)) == 0
    assert train.main(tiny_run(tmp_path / "cache", "halted", on, dropout_resid=0.2, max_iters=3)) == 0
    assert train.main(tiny_run(tmp_path / "cache", "halted", on, dropout_resid=0.2) + ["--resume"]) == 0
    assert deterministic(read_log(trained_dir / "halted")) == deterministic(read_log(trained_dir / "straight"))


def test_kv_cache_generation_equals_no_cache():
    model = Model(cfg(sliding_window=9)).to(CUDA).eval()
    rows = [[1, 5, 9, 13], [1, 7], [1, 2, 3, 4, 5, 6]]
    greedy = SamplingConfig(temperature=0.0)
    cached = generate_ids(model, rows, greedy, GenerationConfig(max_new_tokens=20, compile="off"))
    uncached = generate_ids(model, rows, greedy, GenerationConfig(max_new_tokens=20, use_cache=False))
    assert cached == uncached and all(len(r) == 20 for r in cached)


@needs_cuda  # tests/test_host_syncs.py checks the same on a CPU
def test_a_training_step_reads_the_device_once():
    """CUDA's sync detector, on for one step (after two that allocate the optimizer state): the only
    synchronizing call is training/step.py's finiteness check."""
    train_cfg = TrainConfig(micro_batch_size=4, grad_accum_steps=2, doc_masking=True, max_iters=10, warmup_iters=2)
    model = Model(cfg(sliding_window=8)).to(CUDA)
    optimizers = build_optimizers(model, train_cfg, CUDA)
    batches = TokenBatches(np.random.default_rng(0).integers(0, 256, 4096), 4, 64, seed=0, device=CUDA,
                           doc_masking=True, bos_id=1)
    for step in range(2):
        train_step(step, model, optimizers, batches, train_cfg, CUDA, torch.bfloat16)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(2, model, optimizers, batches, train_cfg, CUDA, torch.bfloat16)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1 and syncs[0].split(":")[0].endswith("training/step.py"), syncs
