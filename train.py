"""Train a model; everything about the run lands in trained/<model_name>/.

    python train.py --preset=llama3_atto --dataset=data/samples/tinystories
    python train.py --preset=llama3_atto --model_name=my_run --max_iters=2000 --lr_max=3e-3
    python train.py --config=trained/my_run --model_name=my_run_2 --qk_norm=true   # start from a run's configs
    python train.py --model_name=my_run --resume                                  # continue a stopped run
    torchrun --nproc_per_node=2 train.py --preset=llama3_atto ...                 # several processes

Any ModelConfig or TrainConfig field can be given as --key=value (see config.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

import tools
from cli import build_configs, split_args as parse_cli
from config import MODEL_FIELDS, PRESETS, RENAMED_FIELDS, ModelConfig, TrainConfig
from data.sources import HubUnreachableError
from modules.model import Model
from training import distributed, runs
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_weights
from training.device import autocast, peak_flops, pick_device, pick_dtype
from training.optim import build_optimizers, set_lr
from training.run_log import RunLog
from training.schedule import lr_at
from training.trackers import Tracker, make_tracker


class TrainingError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


# --- the command line ----------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[ModelConfig, TrainConfig, Path, bool]:
    overrides, positional = parse_cli(argv)
    if positional:
        raise TrainingError(f"unexpected argument(s) {positional}: settings are given as --key=value")
    preset = overrides.pop("preset", None)
    base_run = overrides.pop("config", None)
    resume = _flag("resume", overrides.pop("resume", "false"))
    overwrite = _flag("overwrite", overrides.pop("overwrite", "false"))
    if resume and overwrite:
        raise TrainingError("--resume continues a run and --overwrite deletes it: give one of them")

    base = None
    if resume:  # the run's own configs, with any overrides on top (e.g. a larger --max_iters)
        name = overrides.get("model_name")
        if not name:
            raise TrainingError("--resume needs --model_name=NAME of the run in trained/ to continue")
        base_run = runs.resolve_run(name)
    if base_run is not None:
        model_cfg, train_cfg = runs.load_configs(runs.resolve_run(base_run))
        base = (model_cfg.to_dict(), train_cfg.to_dict())
        if not resume:
            base[1]["model_name"] = None  # a new run needs its own name
    model_cfg, train_cfg = build_configs(overrides, preset, base)
    if train_cfg.init_from is not None and not resume:  # the architecture is the source's
        from interop import init_from
        given = set(overrides) | set(PRESETS.get(preset, {})) | set(base[0] if base else {})
        given = {RENAMED_FIELDS.get(k, k) for k in given} & MODEL_FIELDS
        model_cfg = init_from.model_config(train_cfg.init_from, {k: getattr(model_cfg, k) for k in given})

    if model_cfg.vocab_len is None:  # the tokenizer decides
        model_cfg = dataclasses.replace(model_cfg, vocab_len=tools.get_tokenizer(model_cfg.tokenizer).vocab_len)
    if train_cfg.model_name is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        train_cfg = dataclasses.replace(train_cfg, model_name=f"{preset or 'custom'}_{stamp}")
    run_dir = runs.run_dir_for(train_cfg.model_name)  # refuses links and files
    if run_dir.exists() and not resume:
        if not overwrite:
            raise TrainingError(f"{run_dir} already exists: add --resume to continue it, --overwrite to "
                                f"replace it, or choose another --model_name")
    return model_cfg, train_cfg, run_dir, resume


def _flag(name: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise TrainingError(f"--{name} is a flag: give it alone, or as --{name}=true/false")


# --- evaluation ------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, val_tokens, model_cfg: ModelConfig, cfg: TrainConfig, info, device, dtype, bos_id) -> float:
    """Mean loss over the same eval_samples validation batches every time, with dropout off."""
    from data.batches import TokenBatches
    batches = TokenBatches(val_tokens, cfg.micro_batch_size, model_cfg.max_seq_len, seed=cfg.seed,
                           sampling="sequential", rank=info.rank, world_size=info.world_size, device=device,
                           doc_masking=cfg.doc_masking, bos_id=bos_id)
    model.eval()
    total = torch.zeros((), device=device)
    for _ in range(cfg.eval_samples):
        batch = next(batches)
        with autocast(device, dtype):
            _, loss = model(batch.inputs, batch.targets, doc_ids=batch.doc_ids)
        total += loss.float()
    model.train()
    return distributed.mean_across_ranks(total / cfg.eval_samples, info).item()


# --- state that makes resume exact -----------------------------------------------------------------------
def full_states(model, optimizers, info) -> tuple[dict, list[dict]]:
    """Model and optimizer state dicts, gathered whole (FSDP shards them across ranks)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True, cpu_offload=info.enabled)
    return (get_model_state_dict(model, options=options),
            [get_optimizer_state_dict(model, opt, options=options) for opt in optimizers])


def restore_optimizers(model, optimizers, states: list[dict]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    for opt, state in zip(optimizers, states):
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --- the run ---------------------------------------------------------------------------------------------
def train(model_cfg: ModelConfig, cfg: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    from data.batches import TokenBatches
    from data.pretokenize import load_tokens

    device = pick_device(cfg.device)
    info = distributed.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    dtype = pick_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    tokenizer = tools.get_tokenizer(model_cfg.tokenizer, model_cfg.vocab_len)
    say = print if info.is_main else (lambda *a, **k: None)
    tracker = make_tracker(cfg.tracker) if info.is_main else Tracker()  # a missing package fails here, early

    # data: rank 0 tokenizes into the cache, the others then read it
    T = model_cfg.max_seq_len
    tokens_per_step = cfg.micro_batch_size * cfg.grad_accum_steps * T * info.world_size
    # streaming: tokenize only what this run will read (a longer run later extends the cache)
    train_needed = (cfg.max_iters + 1) * tokens_per_step + T + 1 if cfg.streaming else None
    val_needed = cfg.eval_samples * cfg.micro_batch_size * info.world_size * T + 1 if cfg.streaming else None
    for turn in ("main", "others"):
        if info.is_main == (turn == "main"):
            train_tokens = load_tokens(cfg, tokenizer, "train", max_tokens=train_needed, show_progress=info.is_main)
            val_tokens = load_tokens(cfg, tokenizer, "validation", max_tokens=val_needed,
                                     show_progress=info.is_main)
        distributed.barrier(info)
    batches = TokenBatches(train_tokens, cfg.micro_batch_size, T, seed=cfg.seed, sampling=cfg.sampling,
                           rank=info.rank, world_size=info.world_size, device=device,
                           doc_masking=cfg.doc_masking, bos_id=tokenizer.bos_id)

    model = Model(model_cfg).to(device)
    model.activation_checkpointing = cfg.activation_checkpointing
    step, tokens_seen, elapsed, best_val = 0, 0, 0.0, math.inf
    checkpoint = latest_checkpoint(run_dir) if resume else None
    resumed_state = None
    if checkpoint is not None:
        resumed_state = load_checkpoint(checkpoint, model)  # weights before wrapping/sharding
    train_model = distributed.wrap_model(model, info, cfg.parallel, device)
    state_owner = train_model if cfg.parallel == "fsdp" else model  # what state dicts are gathered from
    optimizers = build_optimizers(model, cfg, device)
    interval_loss, interval_steps, interval_tokens = torch.zeros((), device=device), 0, 0
    if resumed_state is not None:
        restore_optimizers(state_owner, optimizers, resumed_state["optimizers"])
        batches.load_state_dict(resumed_state["data"][info.rank])
        set_rng_state(resumed_state["rng"], device)
        step, tokens_seen = resumed_state["step"], resumed_state["tokens"]
        elapsed, best_val = resumed_state["elapsed_s"], resumed_state["best_val"]
        interval_loss += resumed_state["interval_loss"].to(device)  # a checkpoint may fall between evals
        interval_steps, interval_tokens = resumed_state["interval_steps"], resumed_state["interval_tokens"]
        say(f"resuming {run_dir.name} from step {step} ({checkpoint})")
    elif resume:
        say(f"no complete checkpoint in {run_dir}: starting from step 0")
    if resumed_state is None and cfg.init_from is not None:
        from interop import init_from
        init_from.load_weights(model, cfg.init_from)
        say(f"starting from the weights of {cfg.init_from}")
    if cfg.compile:
        train_model = torch.compile(train_model)

    log = RunLog.resume(run_dir / "log_data.csv", step) if resume else RunLog(run_dir / "log_data.csv")
    if info.is_main:
        if not resume and run_dir.exists():
            runs.clear_run(run_dir)  # --overwrite
        runs.write_description(run_dir, model_cfg, cfg)
        tracker.start(run_dir, {"model": model_cfg.to_dict(), "train": cfg.to_dict()}, step if resume else None)
    flops_per_token = model.flops_per_token(T)
    peak = peak_flops(device.type, dtype) * info.world_size
    say(f"{run_dir.name}: {model.get_num_params() / 1e6:.2f}M parameters, {device.type} {str(dtype)[6:]}, "
        f"{info.world_size} process(es), {tokens_per_step:,} tokens/step, "
        f"{len(train_tokens):,} train / {len(val_tokens):,} val tokens")

    interval_time, grad_norm = 0.0, torch.zeros(())
    progress = tqdm(range(step, cfg.max_iters), initial=step, total=cfg.max_iters, disable=not info.is_main,
                    dynamic_ncols=True, desc=run_dir.name)
    for step in progress:
        start = time.perf_counter()
        lr = lr_at(step, cfg)
        set_lr(optimizers, lr, cfg)
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum_steps):
            batch = next(batches)
            last_micro = micro == cfg.grad_accum_steps - 1
            with distributed.grad_sync(train_model, last_micro):
                with autocast(device, dtype):
                    _, loss = train_model(batch.inputs, batch.targets, doc_ids=batch.doc_ids)
                (loss / cfg.grad_accum_steps).backward()
            step_loss += loss.detach() / cfg.grad_accum_steps
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        if not math.isfinite(step_loss.item()):
            progress.close()
            kept = latest_checkpoint(run_dir)
            raise TrainingError(f"loss became {step_loss.item()} at step {step}: the run stopped. The last good "
                                f"checkpoint is {kept or 'none yet'}. Try a lower --lr_max, --grad_clip=1, "
                                f"or --dtype=float32; then --resume.")
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        interval_loss += step_loss
        interval_steps += 1
        interval_tokens += tokens_per_step
        tokens_seen += tokens_per_step
        interval_time += time.perf_counter() - start
        done = step + 1

        if done % cfg.eval_interval == 0 or done == cfg.max_iters:
            val_loss = evaluate(train_model, val_tokens, model_cfg, cfg, info, device, dtype, tokenizer.bos_id)
            train_loss = distributed.mean_across_ranks(interval_loss / interval_steps, info).item()
            tokens_per_sec = interval_tokens / interval_time
            elapsed += interval_time
            row = dict(step=done, tokens=tokens_seen, elapsed_s=round(elapsed, 3),
                       tokens_per_sec=round(tokens_per_sec, 1), train_loss=train_loss, val_loss=val_loss,
                       perplexity=math.exp(min(val_loss, 50)), lr=lr, grad_norm=float(grad_norm),
                       mfu=round(flops_per_token * tokens_per_sec / peak, 5))
            if info.is_main:
                log.append(row)
                tracker.log(row)
            if val_loss < best_val:
                best_val = val_loss
                model_state = full_states(state_owner, [], info)[0] if cfg.parallel == "fsdp" else None
                if info.is_main:
                    save_weights(model, run_dir / "model.safetensors", model_state)
            progress.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}", lr=f"{lr:.2e}",
                                 tok_s=f"{tokens_per_sec:,.0f}")
            interval_loss.zero_()
            interval_steps, interval_tokens, interval_time = 0, 0, 0.0

        if done % cfg.checkpoint_interval == 0 or done == cfg.max_iters:
            model_state, optimizer_states = full_states(state_owner, optimizers, info)
            data_states = [None] * info.world_size
            if info.enabled:
                torch.distributed.all_gather_object(data_states, batches.state_dict())
            else:
                data_states = [batches.state_dict()]
            state = dict(step=done, tokens=tokens_seen, elapsed_s=elapsed, best_val=best_val,
                         interval_loss=interval_loss.cpu(), interval_steps=interval_steps,
                         interval_tokens=interval_tokens, optimizers=optimizer_states, data=data_states,
                         rng=rng_state(device))
            if info.is_main:
                save_checkpoint(run_dir, done, model, state, model_state)
            distributed.barrier(info)
    progress.close()
    tracker.finish()
    distributed.shutdown()
    final = log.rows[-1] if log.rows else {}
    say(f"done: {run_dir} (best val loss {best_val:.4f})")
    return {"best_val": best_val, **final}


def main(argv: list[str] | None = None) -> int:
    try:
        model_cfg, train_cfg, run_dir, resume = parse_args(sys.argv[1:] if argv is None else argv)
        main_process = os.environ.get("RANK", "0") == "0"  # torchrun's rank 0 holds the lock for all
        with runs.RunLock(run_dir) if main_process else contextlib.nullcontext():
            train(model_cfg, train_cfg, run_dir, resume)
    except (TrainingError, ValueError, FileNotFoundError, HubUnreachableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: continue with --resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
