"""train.py's model, optimizers and step on random tokens: the set-up functions train.py calls
(machinery/run/setup.py) and training/step.py's train_step, fed by the same TokenBatches (pinned, non-blocking
copies). Throughput depends on the shapes alone, so no tokenizer or data set is needed: gpt2_124M's and
llama_1B's tokenizers are not bundled, only their vocab_len matters."""
from __future__ import annotations

import dataclasses

import numpy as np
from bench.gpucheck.context import Context
from machinery.cli import build_configs
from machinery.data.batches import TokenBatches
from machinery.run import distributed
from machinery.run.setup import build_model, prepare_training, set_up
from training.step import train_step

SYNTHETIC_TOKENS = 1 << 21  # random windows are drawn from this many tokens
BOS_ID = 1                   # document starts, for doc_masking (every token id appears about as often)


class SyntheticStep:
    """One process's training step for `preset` + `overrides`, eager until compile() (the same torch.compile call
    as train.py's prepare_training, on the context's backend), optionally sharded with FSDP2 (a process group
    must exist). set_micro_batch() changes the batch and keeps the model and optimizer: the batch-size search
    builds a 1B model once."""

    def __init__(self, ctx: Context, preset: str, overrides: dict, fsdp: bool = False):
        settings = {**overrides, "device": ctx.device.type, "dtype": "bfloat16", "compile": False}
        self.model_cfg, self.cfg = build_configs(settings, preset)
        self.machine = machine = set_up(self.cfg)
        vocab = self.model_cfg.vocab_len
        ids = np.random.default_rng(self.cfg.seed).integers(0, vocab, SYNTHETIC_TOKENS)
        self.tokens = ids.astype(np.uint16 if vocab <= 1 << 16 else np.int32)
        self.model = build_model(self.model_cfg, self.cfg, machine)
        if fsdp:
            distributed.shard_model(self.model)
        self.train_model, self.optimizers = prepare_training(self.model, self.cfg, machine)
        self.compiled, self.index = False, 0
        self.set_micro_batch(self.cfg.micro_batch_size)

    def set_micro_batch(self, batch: int) -> None:
        self.cfg = dataclasses.replace(self.cfg, micro_batch_size=batch)
        T = self.model_cfg.max_seq_len
        self.batches = TokenBatches(self.tokens, batch, T, seed=self.cfg.seed, device=self.machine.device,
                                    doc_masking=self.cfg.doc_masking, bos_id=BOS_ID)
        self.tokens_per_step = batch * self.cfg.grad_accum_steps * T
        for param in self.model.parameters():  # a failed step's gradients go with it
            param.grad = None

    def compile(self, ctx: Context) -> None:
        self.train_model, self.compiled = ctx.compile(self.train_model), True

    def step(self) -> None:
        train_step(self.index, self.train_model, self.optimizers, self.batches, self.cfg, self.machine.device,
                   self.machine.dtype)
        self.index += 1

    def describe(self) -> dict:
        """The keys of a train line that describe this step."""
        return dict(params=self.model.get_num_params(), seq_len=self.model_cfg.max_seq_len,
                    micro_batch=self.cfg.micro_batch_size, tokens_per_step=self.tokens_per_step,
                    flops_per_token=round(self.model.flops_per_token(self.model_cfg.max_seq_len)),
                    activation_checkpointing=self.cfg.activation_checkpointing,
                    dtype=str(self.machine.dtype).removeprefix("torch."), compile=self.compiled)
