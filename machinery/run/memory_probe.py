"""One micro-batch's forward and backward before the run folder is made, so that a micro-batch that does not fit
in memory is one line and leaves no half run behind (instead of an out-of-memory traceback after the folder,
the tracker and a compile have started).

The probe changes nothing a run carries: it draws its batch and then puts the data position back, runs under a
forked random state (dropout), applies no update and drops its gradients. So resume stays exact and the loss
curve is the same as without it. It costs one micro-batch's forward and backward (at most one step; the first
step pays a torch.compile that the probe then already did). Until the first optimizer step the optimizer's state
does not exist: the probe reserves room for two float32 numbers per trained parameter (AdamW's moments) while the
gradients are alive, so the peak it meets is close to a real step's.
"""
from __future__ import annotations

import torch

from machinery.run import distributed
from machinery.run.device import autocast, nondeterministic_message, nondeterministic_op
from machinery.run.setup import TrainingError, is_out_of_memory


def probe_memory(train_model, model, optimizers: list, batches, train_cfg, machine) -> None:
    """Raise TrainingError (one line) when one micro-batch does not fit in memory; change nothing otherwise."""
    position = batches.state_dict()
    devices = [machine.device] if machine.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            batch = next(batches)
            with distributed.grad_sync(train_model, True), autocast(machine.device, machine.dtype):
                _, loss = train_model(batch.inputs, batch.targets, doc_ids=batch.doc_ids)
            loss.backward()
            reserve = None
            if not any(opt.state for opt in optimizers):  # a fresh run: its optimizer state comes at step 1
                trained = sum(_local_numel(p) for p in model.parameters() if p.requires_grad)
                reserve = torch.empty(2 * trained, dtype=torch.float32, device=machine.device)
            del reserve, loss, batch
    except Exception as e:
        op = nondeterministic_op(e) if train_cfg.deterministic else None
        if op is not None:  # the probe is the first forward and backward: the first place this shows
            raise TrainingError(nondeterministic_message(op, machine.device, "nothing was written")) from None
        if not is_out_of_memory(e):
            raise
        raise TrainingError(f"one micro-batch does not fit in memory on {machine.device} (micro_batch_size="
                            f"{train_cfg.micro_batch_size}, max_seq_len={model.cfg.max_seq_len}): lower "
                            f"--micro_batch_size (raise --grad_accum_steps to keep the batch), or try "
                            f"--activation_checkpointing=true; nothing was written") from None
    finally:
        model.zero_grad(set_to_none=True)
        batches.load_state_dict(position)
        if machine.device.type == "cuda":
            torch.cuda.empty_cache()  # give the probe's blocks back before the run allocates its own


def _local_numel(param) -> int:
    """This process's share of a parameter (FSDP shards them)."""
    return param.to_local().numel() if hasattr(param, "to_local") else param.numel()
