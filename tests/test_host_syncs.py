"""One training step reads the device from the host exactly once (training/step.py's finiteness check): every
other value stays on the device, so a GPU never waits for Python mid-step. On a CPU the reads are caught at
the dispatcher (.item(), bool(), float(), nonzero, ...); tests/test_cuda.py checks the same on a GPU with
CUDA's own sync detector."""
from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from config import ModelConfig, TrainConfig
from machinery.data.batches import TokenBatches
from modules.model import Model
from training.optim import build_optimizers
from training.step import train_step

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
# ops whose result the host must read (on a GPU: wait for) before Python can go on
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "allclose", "unique",
              "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave"}


class HostReads(TorchDispatchMode):
    """Records (op, project file:line) of every host-reading op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            ours = [f for f in traceback.extract_stack()
                    if f.filename.startswith(str(ROOT)) and "tests" not in f.filename]
            where = f"{Path(ours[-1].filename).relative_to(ROOT)}:{ours[-1].line}" if ours else "outside the project"
            self.seen.append((name, where))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_one_training_step_reads_the_device_once(optimizer):
    cfg = TrainConfig(micro_batch_size=2, grad_accum_steps=2, optimizer=optimizer, doc_masking=True, max_iters=10,
                      warmup_iters=2)
    model = Model(ModelConfig(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, vocab_len=64, max_seq_len=16,
                              sliding_window=4, qk_norm=True))
    optimizers = build_optimizers(model, cfg, torch.device("cpu"))
    batches = TokenBatches(np.random.default_rng(0).integers(0, 64, 1000), 2, 16, seed=0, doc_masking=True, bos_id=1)
    train_step(0, model, optimizers, batches, cfg, torch.device("cpu"), torch.float32)  # optimizer state made
    with HostReads() as reads:
        train_step(1, model, optimizers, batches, cfg, torch.device("cpu"), torch.float32)
    finiteness_check = "training/step.py:if not torch.isfinite(step_loss + grad_norm).item():"
    assert reads.seen == [("_local_scalar_dense", finiteness_check)]
