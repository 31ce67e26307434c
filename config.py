"""The whole experiment in two dataclasses: ModelConfig (architecture) and TrainConfig (data, batch,
optimizer, schedule). Presets are named sets of overrides; `--key=value` on the command line overrides
any field. Every field is validated in __post_init__ with a ValueError that names it.

This file imports only machinery/validation.py (the generic field checks): everything else reads it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Optional

from machinery.validation import Validated
from machinery.validation import renamed as _renamed

# Allowed values. Each model-side name also needs its code: a table in modules/ (NORMS in norm.py, ACTIVATIONS
# in mlp.py, POSITION_ENCODINGS in positional.py) and a written-out twin in modules/reference.py; a name
# listed here without them stops the model build with one line (README "Trying your own idea").
POS_ENC_TYPES = ("RoPE", "learnable", "Sinusoidal")
MLP_NONLINEARITIES = ("GeLU", "SiLU", "ReLU", "GeLU_tanh")  # GeLU_tanh: GPT-2's own tanh approximation
NORM_TYPES = ("RMSNorm", "LayerNorm", "CosineNorm")
ANNEAL_TYPES = ("cos", "lin", "wsd")
OPTIMIZERS = ("adamw", "muon")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16")
SAMPLING = ("random", "sequential")
PARALLEL = ("ddp", "fsdp")
TRACKERS = ("none", "tensorboard", "wandb")
PARAMETRIZATIONS = ("sp", "mup")  # standard, or μP (modules/mup.py: lr and init that transfer across widths)
RESUME_SCHEDULES = ("stretch", "extend_tail", "restart_decay")  # --resume with a new max_iters (training/schedule.py)
# Each choice field -> the tuple above that lists its allowed values, looked up at each use: a name added to a
# tuple is allowed, and listed by --help=FIELD, at once.
CHOICES = {"pos_enc_type": "POS_ENC_TYPES", "mlp_nonlinearity": "MLP_NONLINEARITIES", "norm_type": "NORM_TYPES",
           "parametrization": "PARAMETRIZATIONS", "anneal_type": "ANNEAL_TYPES", "optimizer": "OPTIMIZERS",
           "device": "DEVICES", "dtype": "DTYPES", "sampling": "SAMPLING", "parallel": "PARALLEL",
           "tracker": "TRACKERS", "resume_schedule": "RESUME_SCHEDULES"}
# A run name is a folder in trained/ that inference finds again by name: letters, digits and . _ - + =,
# not starting with '.', '-' or '~' (hidden files, options, home folders), short enough for any file system.
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,99}")
MAX_SEED = 2**64 - 1             # torch.manual_seed's range
MAX_MLP_WIDTH_MULT = 64          # mlp_hidden_mult above this is a typo, not an experiment (and an OOM)


# Fields that were renamed: old name -> new name. Saved runs and old command lines keep working.
RENAMED_FIELDS: dict[str, str] = {
    "out_weight_share": "tie_embeddings",        # the usual name for one matrix as input embedding and output head
    "second_resid_norm": "post_sublayer_norm",   # Gemma-2's "sandwich" norm after each sublayer
    "scale_first_resid": "scale_embeddings",     # it multiplies the token embeddings by sqrt(dim)
    "eval_samples": "eval_batches",  # it always counted batches
    "eps": "norm_eps",                 # one of two epsilons: the norms'
    "epsilon": "adamw_eps",            # the other: AdamW's
}


def renamed(values: dict, known: set[str], where: str) -> dict:
    """`values` with old field names replaced by their new ones; a name `known` does not hold is an error."""
    return _renamed(values, known, where, RENAMED_FIELDS)


class _Validated(Validated):
    RENAMES = RENAMED_FIELDS

    @classmethod
    def choices(cls, name: str) -> tuple | None:
        return globals()[CHOICES[name]] if name in CHOICES else None


@dataclass
class ModelConfig(_Validated):
    # --- size ---
    dim: int = 128                      # residual stream width
    num_layers: int = 4                 # transformer blocks
    num_q_heads: int = 4                # query heads
    num_kv_heads: int = 4               # key/value heads: = q heads is MHA, fewer is GQA, 1 is MQA
    head_dim: Optional[int] = None      # per-head width; None -> dim // num_q_heads
    max_seq_len: int = 256              # context length (training windows and the RoPE/position tables)
    # --- tokenizer ---
    tokenizer: str = "bpe_tinyStories"  # folder in tokenizers/: 'bpe_tinyStories', 'bpe_fineweb-edu', 'byte', ...
    vocab_len: Optional[int] = None     # tokenizer size (512/1024/2048 for bpe_tinyStories); None -> tokenizer's default
    # --- positions ---
    pos_enc_type: str = "RoPE"          # 'RoPE' (rotary, relative), 'learnable' (GPT-2), 'Sinusoidal' (fixed)
    theta: float = 10_000.0             # RoPE base frequency
    # --- MLP ---
    mlp_hidden_mult: float = 4.0        # hidden width = mult * dim (x2/3 when gated, so parameters match)
    mlp_nonlinearity: str = "GeLU"      # 'GeLU', 'SiLU', 'ReLU', 'GeLU_tanh' (GPT-2's approximation)
    mlp_gated: bool = False             # GLU variant: SiLU -> SwiGLU, GeLU -> GeGLU
    mlp_multiple_of: int = 1            # round the hidden width up to a multiple of this (64-256 helps GPUs)
    # --- normalization ---
    norm_type: str = "RMSNorm"          # 'RMSNorm', 'LayerNorm', 'CosineNorm'
    norm_affine: bool = True            # learnable scale in each norm
    norm_bias: bool = False             # learnable bias in each norm (needs norm_affine)
    norm_eps: float = 1e-6              # added inside the norm's square root
    post_sublayer_norm: bool = False    # also normalize each sublayer's output before adding it (Gemma-2 sandwich)
    scale_embeddings: bool = False      # multiply the token embeddings by sqrt(dim) (Gemma style)
    # --- linear layers and output ---
    linear_bias: bool = False           # biases in every Linear layer
    tie_embeddings: bool = True         # the output head reuses the token embedding matrix (tied embeddings)
    logit_softcap: Optional[float] = None  # final logits -> cap * tanh(logits / cap) (Gemma-2); None = off
    # --- attention ---
    qk_norm: bool = False               # RMS-normalize queries and keys per head before attention
    sliding_window: Optional[int] = None  # each token sees at most this many tokens (itself included); None = full causal
    # --- dropout (0 turns each off; always off in eval mode) ---
    dropout_embed: float = 0.0          # on the embedding output
    dropout_attn: float = 0.0           # on the attention probabilities
    dropout_resid: float = 0.0          # on each sublayer's output before the residual add
    # --- init ---
    init_std: float = 0.02              # std of weights; residual projections get init_std / sqrt(2 * num_layers)
    # --- width scaling (modules/mup.py) ---
    parametrization: str = "sp"         # 'sp' (standard) or 'mup': lr and init tuned at mup_base_dim carry to any dim
    mup_base_dim: int = 128             # 'mup': the width at which μP equals 'sp' (the width you tuned at)
    mup_base_head_dim: Optional[int] = None  # 'mup': head_dim of that base model; None -> head_dim * mup_base_dim / dim

    def __post_init__(self):
        for name in ("dim", "num_layers", "num_q_heads", "num_kv_heads", "max_seq_len", "mlp_multiple_of"):
            self._int(name)
        self._int("head_dim", optional=True)
        self._int("vocab_len", minimum=2, optional=True)
        self._int("sliding_window", optional=True)
        self._int("mup_base_dim")
        self._int("mup_base_head_dim", optional=True)
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            self._fail("tokenizer", "must be the name of a folder in tokenizers/, e.g. 'bpe_tinyStories' or 'byte'")
        self._check_choices()
        self._float("theta", lo=0, lo_open=True)
        self._float("mlp_hidden_mult", lo=0, hi=MAX_MLP_WIDTH_MULT, lo_open=True)
        self._float("norm_eps", lo=0, hi=1, lo_open=True)
        self._float("init_std", lo=0, lo_open=True)
        self._float("logit_softcap", lo=0, lo_open=True, optional=True)
        for name in ("dropout_embed", "dropout_attn", "dropout_resid"):
            self._float(name, hi=0.999)
        for name in ("mlp_gated", "norm_affine", "norm_bias", "post_sublayer_norm", "scale_embeddings",
                     "linear_bias", "tie_embeddings", "qk_norm"):
            self._bool(name)
        # cross-field rules
        if self.head_dim is None:
            if self.dim % self.num_q_heads:
                self._fail("num_q_heads", f"dim={self.dim} must be divisible by num_q_heads "
                                          f"(or set head_dim explicitly)")
            self.head_dim = self.dim // self.num_q_heads
        if self.num_q_heads % self.num_kv_heads:
            self._fail("num_kv_heads", f"must divide num_q_heads={self.num_q_heads} "
                                       f"(MHA: equal, GQA: a divisor, MQA: 1)")
        if self.pos_enc_type == "RoPE" and self.head_dim % 2:
            self._fail("head_dim", "RoPE rotates pairs of dimensions, so head_dim must be even")
        if self.pos_enc_type == "Sinusoidal" and self.dim % 2:
            self._fail("dim", "Sinusoidal positions need an even dim")
        if self.norm_bias and not self.norm_affine:
            self._fail("norm_bias", "a norm bias needs norm_affine=True")
        if self.parametrization == "mup" and self.norm_type == "CosineNorm":
            self._fail("norm_type", "parametrization='mup' needs 'RMSNorm' or 'LayerNorm' (CosineNorm's "
                                    "coordinates shrink as 1/sqrt(dim), see modules/mup.py)")
        width = round(self.mlp_hidden_mult * self.dim * (2 / 3 if self.mlp_gated else 1))
        if width < 1:
            self._fail("mlp_hidden_mult", f"gives the MLP zero width with dim={self.dim}: it needs "
                                          f"mlp_hidden_mult * dim >= 1 (x2/3 when gated)")
        if self.mlp_multiple_of > width:  # rounding up to it would more than double the MLP
            self._fail("mlp_multiple_of", f"must not exceed the MLP width it rounds, {width} "
                                          f"(mlp_hidden_mult * dim{' * 2/3' if self.mlp_gated else ''})")

    @property
    def mlp_hidden_dim(self) -> int:
        hidden = self.mlp_hidden_mult * self.dim
        if self.mlp_gated:  # three matrices instead of two: shrink so the parameter count stays the same
            hidden = hidden * 2 / 3
        m = self.mlp_multiple_of
        return int(m * math.ceil(round(hidden) / m))


@dataclass
class TrainConfig(_Validated):
    # --- run ---
    model_name: Optional[str] = None    # folder in trained/; None -> '<preset or custom>_<date-time>'
    init_from: Optional[str] = None     # start from the weights (and architecture) of a run in trained/ or of a
                                        # Hugging Face Llama / GPT-2 folder; data and training settings are new
    tracker: str = "none"               # also log rows and configs to 'tensorboard' or 'wandb' (offline by default)
    seed: int = 1337                    # seeds torch, numpy and the data order
    device: str = "auto"                # 'auto' picks cuda, then mps, then cpu
    dtype: str = "auto"                 # 'auto': bfloat16 autocast on CUDA with bf16 (and AMX CPUs), else float32
    compile: bool = False               # torch.compile the model (CUDA: usually faster; CPU: try it)
    deterministic: bool = False         # deterministic GPU kernels, so a rerun or a resumed run repeats its losses
                                        # bit for bit (somewhat slower; CPU runs repeat anyway)
    # --- data ---
    dataset: str = "data/samples/tinystories"  # a local .txt/.jsonl/.json/.parquet file or folder (relative
                                        # paths: the current folder, else the project's), or a hub name such as
                                        # 'noanabeshima/TinyStoriesV2'; the default is the bundled sample
    data_subset: Optional[str] = None   # hub config name, e.g. 'sample-10BT' for FineWeb(-Edu)
    streaming: bool = False             # stream from the hub, tokenizing only as much as training needs
    text_field: str = "text"            # column holding the text
    doc_separator: Optional[str] = None  # split a .txt file into documents on this string, e.g. '<|endoftext|>'
    val_fraction: float = 0.05          # held-out fraction when the dataset has no validation split
    cache_dir: str = "data_cache"       # where pre-tokenized token files are kept
    sampling: str = "random"            # 'random' windows, or 'sequential' passes through the data
    doc_masking: bool = False           # tokens attend only within their own document
    # --- batch ---
    micro_batch_size: int = 32          # sequences per forward pass on each process
    grad_accum_steps: int = 1           # micro-batches per optimizer step
    # --- length and bookkeeping ---
    max_iters: int = 1000               # optimizer steps
    log_interval: int = 10              # print training loss, lr and tokens/s every this many steps
    eval_interval: int = 100            # evaluate (and log a row) every this many steps
    eval_batches: int = 20              # validation batches (micro_batch_size sequences each) per evaluation
    checkpoint_interval: int = 500      # save a resumable checkpoint every this many steps (and at the end)
    # --- optimizer ---
    optimizer: str = "adamw"            # 'adamw', or 'muon' (Muon for hidden matrices, AdamW for the rest)
    beta1: float = 0.9                  # AdamW's decay rate of the gradient mean (momentum)
    beta2: float = 0.95                 # AdamW's decay rate of the squared-gradient mean
    adamw_eps: float = 1e-8             # AdamW's denominator guard
    weight_decay: float = 0.1           # not applied to norms, biases or embeddings
    grad_clip: float = 1.0              # max global grad norm; 0 = off
    muon_lr: float = 0.02               # learning rate of Muon's matrices (scaled by the same schedule)
    # --- learning-rate schedule (tools.lr_schedule plots it) ---
    lr_init: float = 1e-5               # lr at step 0, warmed up linearly to lr_max
    lr_max: float = 1e-3                # peak lr
    lr_min: float = 1e-4                # lr at the end of each annealing
    warmup_iters: Optional[int] = None  # linear warmup steps; None -> 10% of max_iters
    final_flat_iters: int = 0           # steps held at lr_min at the very end
    anneal_type: str = "cos"            # 'cos', 'lin', or 'wsd' (warmup-stable-decay)
    wsd_decay_frac: float = 0.2         # 'wsd': the last fraction of annealing steps decays linearly
    num_restarts: int = 0               # warm restarts (SGDR) during annealing
    T_mult: float = 2.0                 # each restart's cycle is T_mult times longer than the last
    resume_schedule: str = "stretch"    # --resume with a new max_iters: 'stretch' the schedule to the new length,
                                        # 'extend_tail' (keep the decay; lr_min for the added steps), 'restart_decay'
                                        # (from the lr at the resume step, a new decay to lr_min over the steps left)
    decay_restart_step: Optional[int] = None  # set by 'restart_decay': from this step the lr decays from
    decay_restart_lr: Optional[float] = None  # decay_restart_lr to lr_min (anneal_type's shape, no restarts)
    # --- multi-process ---
    parallel: str = "ddp"               # under torchrun: 'ddp' replicates, 'fsdp' shards parameters (FSDP2)
    activation_checkpointing: bool = False  # recompute block activations in backward to save memory

    def __post_init__(self):
        if self.model_name is not None and (not isinstance(self.model_name, str)
                                            or not RUN_NAME.fullmatch(self.model_name)):
            self._fail("model_name", "must be a folder name inference can find again: 1-100 letters, digits "
                                     "and . _ - + =, not starting with '.' or '-'")
        if not isinstance(self.dataset, str) or not self.dataset:
            self._fail("dataset", "must be a hub name like 'noanabeshima/TinyStoriesV2' or a local path")
        self._check_choices()
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            self._fail("init_from", "must be a run name in trained/, a run folder or a Hugging Face model folder")
        for name in ("micro_batch_size", "grad_accum_steps", "max_iters", "log_interval", "eval_interval",
                     "eval_batches", "checkpoint_interval"):
            self._int(name)
        self._int("seed", minimum=0, maximum=MAX_SEED)  # torch.manual_seed's range
        for name in ("cache_dir", "text_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                self._fail(name, "must not be empty" + (" (it would write into the current folder)"
                                                        if name == "cache_dir" else ""))
        for name in ("data_subset", "doc_separator"):
            if getattr(self, name) is not None and (not isinstance(getattr(self, name), str)
                                                    or not getattr(self, name)):
                self._fail(name, "must be a non-empty string or None")
        self._int("warmup_iters", minimum=0, optional=True)
        for name in ("final_flat_iters", "num_restarts"):
            self._int(name, minimum=0)
        for name in ("compile", "deterministic", "streaming", "doc_masking", "activation_checkpointing"):
            self._bool(name)
        self._float("val_fraction", lo=0, hi=0.5, lo_open=True)
        self._float("beta1", hi=0.9999)
        self._float("beta2", hi=0.9999)
        self._float("adamw_eps", lo=0, lo_open=True)
        self._float("weight_decay")
        self._float("grad_clip")
        self._float("muon_lr", lo=0, lo_open=True)
        self._float("lr_init")
        self._float("lr_max", lo=0, lo_open=True)
        self._float("lr_min")
        self._float("wsd_decay_frac", lo=0, hi=1, lo_open=True)
        self._float("T_mult", lo=1)
        if self.lr_min > self.lr_max:
            self._fail("lr_min", f"must not exceed lr_max={self.lr_max}")
        self._int("decay_restart_step", minimum=0, optional=True)
        self._float("decay_restart_lr", lo=self.lr_min, hi=self.lr_max, optional=True)
        if (self.decay_restart_step is None) != (self.decay_restart_lr is None):
            self._fail("decay_restart_step", f"decay_restart_step and decay_restart_lr={self.decay_restart_lr!r} "
                                             f"are set together (--resume with resume_schedule='restart_decay' "
                                             f"sets both) or both None")
        if self.warmup_steps + self.final_flat_iters > self.max_iters:
            self._fail("warmup_iters", f"warmup_iters + final_flat_iters must be <= max_iters={self.max_iters}")
        self._check_restarts()

    def _check_restarts(self) -> None:
        """Warm restarts split the annealing steps into cycles growing T_mult times: the first cycle must
        last at least one step (and the cycle lengths must not overflow a float)."""
        if self.num_restarts == 0:
            return
        anneal = self.max_iters - self.warmup_steps - self.final_flat_iters
        growth = self.num_restarts * math.log(self.T_mult)  # log of the last cycle's length / the first's
        total = self.num_restarts + 1 if self.T_mult == 1 else (
            math.inf if growth > 700 else (self.T_mult ** (self.num_restarts + 1) - 1) / (self.T_mult - 1))
        if anneal / total < 1:
            name = "T_mult" if self.num_restarts < anneal and self.T_mult > 1 else "num_restarts"
            self._fail(name, f"num_restarts={self.num_restarts} with T_mult={self.T_mult} makes the first of "
                             f"the cycles shorter than one step: {anneal} annealing steps "
                             f"(max_iters - warmup_iters - final_flat_iters) are too few")

    @property
    def warmup_steps(self) -> int:
        """warmup_iters, or 10% of max_iters when it is None (kept None in the config, so a run started from this
        one with another max_iters gets 10% of its own)."""
        return self.max_iters // 10 if self.warmup_iters is None else self.warmup_iters

    @property
    def batch_size(self) -> int:
        """Sequences per optimizer step on one process (times world size for the global batch)."""
        return self.micro_batch_size * self.grad_accum_steps


# ---------------------------------------------------------------------------------------------------
# Presets: named overrides of either config's fields. `python train.py --preset=NAME`.
_GPT2 = dict(pos_enc_type="learnable", norm_type="LayerNorm", norm_bias=True, mlp_nonlinearity="GeLU",
             mlp_gated=False, linear_bias=True, norm_eps=1e-5)
_LLAMA3 = dict(pos_enc_type="RoPE", norm_type="RMSNorm", mlp_nonlinearity="SiLU", mlp_gated=True,
               linear_bias=False, theta=500_000.0, norm_eps=1e-5)
_GPU = dict(dtype="auto", compile=True, micro_batch_size=16, eval_interval=250, checkpoint_interval=1000,
            max_iters=20_000, warmup_iters=700, lr_max=6e-4, lr_min=6e-5, tokenizer="bpe_fineweb-edu",
            vocab_len=32768, dataset="HuggingFaceFW/fineweb-edu", data_subset="sample-10BT", streaming=True)

PRESETS: dict[str, dict] = {
    # ~1M-parameter models for a laptop CPU, as in the original template
    "gpt2_atto": dict(_GPT2, dim=128, num_layers=4, num_q_heads=4, num_kv_heads=4, max_seq_len=256,
                      tokenizer="bpe_tinyStories", vocab_len=1024, dataset="data/samples/tinystories"),
    "llama3_atto": dict(_LLAMA3, dim=128, num_layers=5, num_q_heads=4, num_kv_heads=2, max_seq_len=256,
                        tokenizer="bpe_tinyStories", vocab_len=1024, dataset="data/samples/tinystories"),
    # nanoGPT's CPU Shakespeare reference run (bytes = characters for this ASCII text), and the
    # same size and schedule with the Llama-3 architecture
    "nanogpt_shakespeare": dict(_GPT2, linear_bias=False, norm_bias=False, dim=128, num_layers=4,
                                num_q_heads=4, num_kv_heads=4, max_seq_len=64, tokenizer="byte",
                                dataset="data/samples/tinyshakespeare/input.txt", val_fraction=0.1,
                                micro_batch_size=12, max_iters=2000, eval_interval=250, eval_batches=20,
                                lr_init=0.0, lr_max=1e-3, lr_min=1e-4, warmup_iters=100, beta2=0.99,
                                weight_decay=0.1, grad_clip=1.0, dtype="float32"),
    "llama3_shakespeare": dict(_LLAMA3, dim=128, num_layers=4, num_q_heads=4, num_kv_heads=2,
                               max_seq_len=64, tokenizer="byte",
                               dataset="data/samples/tinyshakespeare/input.txt", val_fraction=0.1,
                               micro_batch_size=12, max_iters=2000, eval_interval=250, eval_batches=20,
                               lr_init=0.0, lr_max=1e-3, lr_min=1e-4, warmup_iters=100, beta2=0.99,
                               weight_decay=0.1, grad_clip=1.0, dtype="float32"),
    # GPU scale
    "gpt2_124M": dict(_GPU, **_GPT2, dim=768, num_layers=12, num_q_heads=12, num_kv_heads=12,
                      max_seq_len=1024, tokenizer="bpe_fineweb-edu", vocab_len=32768),
    "llama_125M": dict(_GPU, **_LLAMA3, dim=768, num_layers=12, num_q_heads=12, num_kv_heads=4,
                       max_seq_len=1024, mlp_multiple_of=256),
    "llama_350M": dict(_GPU, **_LLAMA3, dim=1024, num_layers=24, num_q_heads=16, num_kv_heads=8,
                       max_seq_len=2048, mlp_multiple_of=256, micro_batch_size=8),
    "llama_1B": dict(_GPU, **_LLAMA3, dim=2048, num_layers=16, num_q_heads=32, num_kv_heads=8,
                     max_seq_len=2048, mlp_hidden_mult=6.0, mlp_multiple_of=256, micro_batch_size=4, grad_accum_steps=4,
                     lr_max=3e-4, lr_min=3e-5),
}

MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}
if MODEL_FIELDS & TRAIN_FIELDS:  # one flat `--key=value` namespace needs unique names
    raise RuntimeError(f"fields in both configs: {MODEL_FIELDS & TRAIN_FIELDS}")
