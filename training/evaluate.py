"""Validation loss: the same eval_batches windows every time (sequential from the start of the split),
dropout off, averaged over processes."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from config import TrainConfig
from machinery.data.batches import TokenBatches
from machinery.run import distributed
from machinery.run.device import autocast


@torch.no_grad()
def evaluate(model: nn.Module, val_tokens: np.ndarray, seq_len: int, train_cfg: TrainConfig, machine,
             bos_id: int) -> float:
    """Mean loss over train_cfg.eval_batches validation batches of micro_batch_size windows each."""
    dist, device = machine.dist, machine.device
    batches = TokenBatches(val_tokens, train_cfg.micro_batch_size, seq_len, seed=train_cfg.seed,
                           sampling="sequential", rank=dist.rank, world_size=dist.world_size, device=device,
                           doc_masking=train_cfg.doc_masking, bos_id=bos_id)
    model.eval()
    total = torch.zeros((), device=device)
    for _ in range(train_cfg.eval_batches):
        batch = next(batches)
        with autocast(device, machine.dtype):
            _, loss = model(batch.inputs, batch.targets, doc_ids=batch.doc_ids)
        total += loss.float()
    model.train()
    return distributed.mean_across_ranks(total / train_cfg.eval_batches, dist).item()
