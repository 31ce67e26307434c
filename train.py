"""Train a model; everything about the run lands in trained/<model_name>/.

    python train.py --preset=llama3_atto --dataset=data/samples/tinystories
    python train.py --preset=llama3_atto --model_name=my_run --max_iters=2000 --lr_max=3e-3
    python train.py --config=trained/my_run --model_name=my_run_2 --qk_norm=true   # start from a run's configs
    python train.py --model_name=my_run --resume --max_iters=4000                 # continue a stopped run
    torchrun --nproc_per_node=2 train.py --preset=llama3_atto ...                 # several processes
    python train.py --help          # every setting; --help=FIELD for one

Any ModelConfig or TrainConfig field is a --key=value. The run, in order: set up the machine, lock the run
folder, check it, load the data, build the model, restore a checkpoint (--resume), then the loop: one
training step, a log line every log_interval steps, evaluate and log every eval_interval steps, a
checkpoint every checkpoint_interval steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from config import MODEL_FIELDS, PRESETS, RENAMED_FIELDS, ModelConfig, TrainConfig
from machinery.cli import build_configs, describe_presets, parse_bool, print_help_if_asked, split_args
from machinery.data.hub import HubUnreachableError
from machinery.data.tokenizer import get_tokenizer
from machinery.run import cost, distributed, provenance, runs, stopping
from machinery.run.checkpoint import load_checkpoint, restore, save_best_weights, save_resumable
from machinery.run.curves import plot_training_curves
from machinery.run.device import nondeterministic_message, nondeterministic_op, peak_flops
from machinery.run.divergence import recovery_advice
from machinery.run.memory_probe import probe_memory
from machinery.run.progress import Progress
from machinery.run.run_log import RunLog, TrainLossLog
from machinery.run.run_state import RunState
from machinery.run.setup import (Data, Machine, TrainingError, build_model, choose_cpu_threads, load_data,
                                 prepare_training, set_up)
from machinery.run.trackers import Tracker, make_tracker
from training.evaluate import evaluate
from training.schedule import resumed_schedule
from training.step import NonFiniteStep, StepResult, train_step

RUN_FLAGS = """Run options (not saved with the run):
    --preset=NAME       start from a named set of settings (below)
    --config=RUN        start a new run from a saved run's configs (a name in trained/ or a folder)
    --resume            continue --model_name=NAME from its last checkpoint (training settings may change,
                        the architecture may not)
    --resume=auto       continue --model_name=NAME if it has a checkpoint, else start it (for jobs that a
                        scheduler may restart: the same command starts and continues the run)
    --overwrite         replace an existing run folder

Stopping: Ctrl-C (SIGINT), SIGTERM or SIGUSR1 (Slurm: --signal=USR1@120) finish the current step, save a
checkpoint and exit with 128 + the signal (130, 143, 138); --model_name=NAME --resume continues exactly.
Exit codes: 0 finished, 2 a problem named in one line, 130/143/138 stopped by a signal."""


# --- the command line ----------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[ModelConfig, TrainConfig, Path, bool, bool] | None:
    """(model_cfg, train_cfg, run_dir, resume, overwrite), or None when --help was printed."""
    overrides, positional = split_args(argv)
    if print_help_if_asked(overrides, usage=__doc__, extra=RUN_FLAGS + "\n\n" + describe_presets(),
                           sections=[("Model", ModelConfig), ("Training", TrainConfig)]):
        return None
    if positional:
        raise TrainingError(f"unexpected argument(s) {positional}: settings are given as --key=value")
    preset, base_run = overrides.pop("preset", None), overrides.pop("config", None)
    resume = overrides.pop("resume", "false")
    auto = str(resume).lower() == "auto"
    resume = False if auto else parse_bool(resume, "resume")
    overwrite = parse_bool(overrides.pop("overwrite", "false"), "overwrite")
    if auto:  # a checkpoint decides; the settings that started the run then go on top of its saved configs
        if overwrite or not overrides.get("model_name"):
            raise TrainingError("--resume=auto needs --model_name=NAME and no --overwrite: it continues that run "
                                "if it has a checkpoint and starts it otherwise")
        resume = runs.has_checkpoint(runs.run_dir_for(overrides["model_name"]))
        if resume:  # what started the run is in its saved configs and weights
            preset, base_run = None, None
            overrides.pop("init_from", None)
    if resume and overwrite:
        raise TrainingError("--resume continues a run and --overwrite deletes it: give one of them")
    if resume and (base_run or preset or "init_from" in overrides):
        raise TrainingError("--resume continues a run with its own configs and weights: drop --config/--preset/"
                            "--init_from (to branch off a run, start a new one with --config=RUN --model_name=NEW)")
    base = None
    if resume:  # the run's own configs, with any overrides on top (e.g. a larger --max_iters)
        if not overrides.get("model_name"):
            raise TrainingError("--resume needs --model_name=NAME of the run in trained/ to continue")
        base_run = runs.resolve_run(overrides["model_name"])
    if base_run is not None:
        model_cfg, train_cfg = runs.load_configs(runs.resolve_run(base_run))
        base = (model_cfg.to_dict(), train_cfg.to_dict())
        if not resume:
            base[1]["model_name"] = None  # a new run needs its own name
    model_cfg, train_cfg = build_configs(overrides, preset, base)
    if train_cfg.init_from is not None and not resume:  # the architecture is the source's
        from machinery.interop import init_from
        given = set(overrides) | set(PRESETS.get(preset, {})) | set(base[0] if base else {})
        given = {RENAMED_FIELDS.get(k, k) for k in given} & MODEL_FIELDS
        model_cfg = init_from.model_config(train_cfg.init_from, {k: getattr(model_cfg, k) for k in given})
    if model_cfg.vocab_len is None:  # the tokenizer decides
        model_cfg = dataclasses.replace(model_cfg, vocab_len=get_tokenizer(model_cfg.tokenizer).vocab_len)
    if train_cfg.model_name is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        train_cfg = dataclasses.replace(train_cfg, model_name=f"{preset or 'custom'}_{stamp}")
    run_dir = runs.run_dir_for(train_cfg.model_name)  # refuses links
    if auto and not resume and run_dir.exists():  # this very run, killed before its first checkpoint
        overwrite = runs.restartable(run_dir, model_cfg, train_cfg)
    return model_cfg, train_cfg, run_dir, resume, overwrite


# --- the run ---------------------------------------------------------------------------------------------
def train(model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: Path, resume: bool = False,
          overwrite: bool = False) -> dict:
    """Train into run_dir; returns the last log row with best_val. An existing run_dir is continued with
    resume=True, replaced only with overwrite=True, and otherwise refused."""
    run_dir = Path(run_dir)
    with stopping.on_signals(run_dir) as stop:  # Ctrl-C, SIGTERM, SIGUSR1: checkpoint and stop (stopping.py)
        machine = set_up(train_cfg)
        choose_cpu_threads(machine)
        lock = runs.RunLock(run_dir) if machine.is_main else contextlib.nullcontext()
        try:
            with lock:  # one process per run folder, for the whole run
                return _train_locked(model_cfg, train_cfg, run_dir, resume, overwrite, machine, stop)
        finally:
            distributed.shutdown()


@dataclass
class Run:
    """What the loop's parts share, built once at the start of a run."""
    dir: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    machine: Machine
    data: Data
    model: torch.nn.Module        # the plain Model: its weights are what is saved
    train_model: torch.nn.Module  # the same model as trained: wrapped for several processes, compiled
    log: RunLog
    progress: Progress
    tracker: Tracker
    bos_id: int
    mfu_per_token_s: float        # tokens/s times this is the model FLOPs utilization


def _train_locked(model_cfg, train_cfg, run_dir, resume, overwrite, machine, stop) -> dict:
    checkpoint = runs.check_run_folder(run_dir, model_cfg, train_cfg, resume, overwrite)  # refusals change nothing
    tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.vocab_len)
    tracker = make_tracker(train_cfg.tracker) if machine.is_main else Tracker()  # a missing package fails early
    data = load_data(model_cfg, train_cfg, machine, tokenizer)
    model = build_model(model_cfg, train_cfg, machine)
    saved = load_checkpoint(checkpoint, model) if checkpoint else None  # weights before sharding
    if saved is None and train_cfg.init_from is not None:
        from machinery.interop import init_from
        init_from.load_weights(model, train_cfg.init_from)
        machine.say(f"starting from the weights of {train_cfg.init_from}")
    train_model, optimizers = prepare_training(model, train_cfg, machine)
    state = restore(saved, model, optimizers, data.batches, machine) if saved else RunState()
    schedule_note = None
    if saved:  # a new max_iters changes the rest of the schedule as resume_schedule says; saved with the run
        train_cfg, schedule_note = resumed_schedule(runs.load_configs(run_dir)[1], train_cfg, state.step)
    probe_memory(train_model, model, optimizers, data.batches, train_cfg, machine)  # too big: one line, no folder
    stop.defer(machine.dist)  # the run folder is written from here on: a signal now waits for a step boundary
    if machine.is_main:  # replace (--overwrite), describe, start the tracker; a failed new run leaves no folder
        runs.open_run_folder(run_dir, model_cfg, train_cfg, resume, overwrite, lambda: tracker.start(
            run_dir, {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}, state.step if resume else None))
        provenance.record(run_dir, machine.device, machine.dist.world_size, state.step if resume else None,
                          machine.say)  # the code, versions and machine: provenance.json; never fatal
    log = RunLog.resume(run_dir / "log_data.csv", state.step) if resume else RunLog(run_dir / "log_data.csv")
    curve_path = run_dir / "train_loss.csv"  # the training-loss curve: a row per log_interval line
    curve = TrainLossLog.resume(curve_path, state.step) if resume else TrainLossLog(curve_path)
    T, world_size = model_cfg.max_seq_len, machine.dist.world_size
    tokens_per_step = train_cfg.micro_batch_size * train_cfg.grad_accum_steps * T * world_size
    machine.say(f"{'resuming ' if saved else ''}{run_dir.name}"
                f"{f' from step {state.step} ({checkpoint})' if saved else ''}: "
                f"{model.get_num_params() / 1e6:.2f}M parameters, {machine.device.type} {str(machine.dtype)[6:]}, "
                f"{world_size} process(es), {tokens_per_step:,} tokens/step, "
                f"{len(data.train_tokens):,} train / {len(data.val_tokens):,} val tokens")
    machine.say(f"precision: {machine.dtype_reason}")  # and, on a CPU, the thread count
    if schedule_note:
        machine.say(schedule_note)
    progress = Progress(run_dir.name, state.step, state.tokens, train_cfg.max_iters, train_cfg.log_interval,
                        enabled=machine.is_main, curve=curve)
    flops_per_token = model.flops_per_token(T)
    with torch.random.fork_rng(devices=[]):  # measuring the peak must not move the dropout stream
        mfu_per_token_s = flops_per_token / (peak_flops(machine.device.type, machine.dtype) * world_size)
    run = Run(run_dir, model_cfg, train_cfg, machine, data, model, train_model, log, progress, tracker,
              tokenizer.bos_id, mfu_per_token_s)
    def checkpoint():  # the curve first: a resume from this checkpoint then has every point up to it
        if machine.is_main:
            curve.save()
        save_resumable(run_dir, state, model, optimizers, data.batches, machine)

    cost.reset_peak_memory(machine.device)  # peak_memory_mb: the training loop's
    try:
        for step in range(state.step, train_cfg.max_iters):
            if stop.agreed():  # a signal arrived: keep this step's work in a checkpoint and stop
                raise stop.after_saving(state.step, checkpoint)
            start = time.perf_counter()
            result = train_step(step, train_model, optimizers, data.batches, train_cfg, machine.device,
                                machine.dtype)
            state.add_step(result.loss, tokens_per_step, time.perf_counter() - start)
            progress.step_done(state.step, result.loss, result.lr, state.tokens)
            if state.step % train_cfg.eval_interval == 0 or state.step == train_cfg.max_iters:
                evaluate_and_log(run, state, result)
            if state.step % train_cfg.checkpoint_interval == 0 or state.step == train_cfg.max_iters:
                checkpoint()
    except NonFiniteStep as e:
        raise TrainingError(f"the run stopped: {e}, so the update was not applied. {recovery_advice(run_dir)}") \
            from None
    except RuntimeError as e:
        op = nondeterministic_op(e) if train_cfg.deterministic else None
        if op is None:
            raise
        raise TrainingError(nondeterministic_message(op, machine.device, stopping.kept(run_dir))) from None
    finally:
        progress.close()
        tracker.finish()
        if machine.is_main:
            curve.save()
    if machine.is_main and log.rows:
        plot_training_curves(log.rows, run_dir / "training_curves.png", title=run_dir.name, train_rows=curve.rows)
        cost.write_summary(run_dir, log.rows, flops_per_token, machine.device)
    machine.say(f"done: {run_dir} (best val loss {state.best_val:.4f})")
    return {"best_val": state.best_val, **(log.rows[-1] if log.rows else {})}


def evaluate_and_log(run: Run, state: RunState, result: StepResult) -> None:
    """Validation loss, one row of log_data.csv (and the tracker), and model.safetensors when the loss is the best
    so far."""
    run.progress.evaluating(state.step, run.train_cfg.eval_batches)
    val_loss = evaluate(run.train_model, run.data.val_tokens, run.model_cfg.max_seq_len, run.train_cfg, run.machine,
                        run.bos_id)
    train_loss, tokens_per_sec = state.close_interval()
    row = dict(step=state.step, tokens=state.tokens, elapsed_s=round(state.elapsed_s, 3),
               tokens_per_sec=round(tokens_per_sec, 1),
               train_loss=distributed.mean_across_ranks(train_loss, run.machine.dist).item(), val_loss=val_loss,
               perplexity=math.exp(min(val_loss, 50)), lr=result.lr, grad_norm=float(result.grad_norm),
               mfu=round(tokens_per_sec * run.mfu_per_token_s, 5), wall_s=round(state.wall_time(), 3),
               peak_memory_mb=round(distributed.max_across_ranks(cost.peak_memory_mb(run.machine.device),
                                                                 run.machine.dist, run.machine.device), 1))
    if run.machine.is_main:
        run.log.append(row)
        run.tracker.log(row)
    improved = val_loss < state.best_val
    if improved:
        state.best_val = val_loss
        save_best_weights(run.dir, run.model, run.machine)
    run.progress.evaluated(row, improved)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args is not None:
            train(*args)
    except (TrainingError, ValueError, FileNotFoundError, HubUnreachableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except stopping.Stopped as e:  # what was kept and how to continue (machinery/run/stopping.py)
        if e.message:
            print(f"\n{e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted before the run began: nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
