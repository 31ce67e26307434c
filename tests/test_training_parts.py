"""The training loop's parts: LR schedule, optimizer groups, Muon, device and dtype choice, run log."""
from __future__ import annotations

import math

import pytest
import torch

import tools
from config import ModelConfig, TrainConfig
from machinery.run import device as devices
from machinery.run.run_log import RunLog
from modules.model import Model
from training.optim import build_optimizers, set_lr, split_params
from training.schedule import lr_at


def schedule(**kw) -> list[float]:
    cfg = TrainConfig(**{**dict(max_iters=100, warmup_iters=10, lr_init=0.0, lr_max=1.0, lr_min=0.1), **kw})
    return tools.lr_schedule(cfg)


@pytest.mark.parametrize("anneal_type", ["cos", "lin", "wsd"])
def test_schedule_warms_up_then_anneals_to_lr_min(anneal_type):
    lrs = schedule(anneal_type=anneal_type)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # never rises after warmup
    assert lrs[-1] < 0.2 and min(lrs[10:]) >= 0.1 - 1e-12  # the last step is one step short of lr_min
    assert lr_at(100, TrainConfig(max_iters=100, warmup_iters=10, lr_max=1.0, lr_min=0.1)) == 0.1


def test_schedule_shapes():
    cos, lin, wsd = (schedule(anneal_type=a) for a in ("cos", "lin", "wsd"))
    midpoint = 10 + 45
    assert cos[midpoint] == pytest.approx(0.55, abs=1e-9)           # cosine halfway: (max+min)/2
    assert lin[midpoint] == pytest.approx(0.55, abs=1e-9)
    assert wsd[midpoint] == 1.0 and wsd[80] == 1.0 and wsd[95] < 0.5  # stable, then a late decay
    assert cos[30] > lin[30]                                          # cosine stays high longer


def test_warm_restarts_and_flat_tail():
    lrs = schedule(num_restarts=1, T_mult=2.0, final_flat_iters=10)
    # annealing spans 80 steps: cycles of 80/3 and 160/3 steps; the lr jumps back up at the restart
    restart = 10 + math.ceil(80 / 3)
    assert lrs[restart] > lrs[restart - 1] + 0.5
    assert lrs[-10:] == [0.1] * 10


def test_no_weight_decay_on_norms_biases_embeddings():
    model = Model(ModelConfig(vocab_len=64, dim=32, num_layers=2, num_q_heads=4, linear_bias=True, norm_bias=True,
                              pos_enc_type="learnable", tie_embeddings=False))
    matrices, embeddings, other = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 and "embedding" not in names[id(p)] and "lm_head" not in names[id(p)] for p in matrices)
    assert {names[id(p)] for p in embeddings} == {"token_embedding.weight", "pos_embedding.weight", "lm_head.weight"}
    assert all(p.dim() == 1 for p in other)  # norm weights/biases and linear biases
    assert len(matrices) + len(embeddings) + len(other) == len(list(model.parameters()))
    (opt,) = build_optimizers(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decays[id(p)] == 0.1 for p in matrices)
    assert all(decays[id(p)] == 0.0 for p in embeddings + other)


def test_muon_trains_matrices_and_adamw_the_rest():
    torch.manual_seed(0)
    model = Model(ModelConfig(vocab_len=64, dim=32, num_layers=2, num_q_heads=4, max_seq_len=16))
    cfg = TrainConfig(optimizer="muon", lr_max=3e-3, muon_lr=0.02)
    muon, adamw = build_optimizers(model, cfg, torch.device("cpu"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    set_lr([muon, adamw], cfg.lr_max / 2, cfg)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.01) and adamw.param_groups[0]["lr"] == pytest.approx(1.5e-3)
    x = torch.randint(0, 64, (8, 16))
    losses = []
    for _ in range(15):
        _, loss = model(x, x)
        loss.backward()
        for opt in (muon, adamw):
            opt.step()
            opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


def test_missing_devices_are_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            devices.pick_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS is not available"):
            devices.pick_device("mps")
    assert devices.pick_device("cpu").type == "cpu"


def test_bfloat16_autocast_runs_a_training_step_on_cpu():
    model = Model(ModelConfig(vocab_len=64, dim=32, num_layers=1, num_q_heads=4, max_seq_len=16))
    x = torch.randint(0, 64, (2, 16))
    with devices.autocast(torch.device("cpu"), torch.bfloat16):
        logits, loss = model(x, x)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # loss computed in float32
    loss.backward()
    assert model.token_embedding.weight.grad.dtype == torch.float32    # weights stay float32


def test_run_log_resume_drops_rows_after_the_checkpoint(tmp_path):
    log = RunLog(tmp_path / "log.csv")
    for step in (10, 20, 30):
        log.append(dict(step=step, tokens=step * 8, elapsed_s=1.0, tokens_per_sec=2.0, train_loss=0.1 + step,
                        val_loss=0.3, perplexity=1.3, lr=1e-3, grad_norm=0.5, mfu=0.01, wall_s=2.0, peak_memory_mb=9.0))
    resumed = RunLog.resume(tmp_path / "log.csv", up_to_step=20)
    assert [int(r["step"]) for r in resumed.rows] == [10, 20]
    assert float(resumed.rows[0]["train_loss"]) == 10.1  # repr(float) round-trips exactly


def test_unimplemented_choices_are_clear_errors():
    from training.optim import optimizer_builder
    from training.schedule import anneal_shape
    with pytest.raises(ValueError, match="optimizer='lion'.*OPTIMIZER_BUILDERS"):
        optimizer_builder("lion")
    with pytest.raises(ValueError, match="anneal_type='exp'.*ANNEAL_SHAPES"):
        anneal_shape("exp")


def test_run_state_saves_and_restores_whole(tmp_path):
    """Every field survives a checkpoint round trip through torch.load(weights_only=True)."""
    import dataclasses

    from machinery.run.run_state import RunState
    state = RunState(step=7, tokens=896, elapsed_s=1.5, wall_s=10.0, best_val=2.25, interval_steps=3,
                     interval_tokens=384, interval_s=0.5, data=[{"position": 4, "rng": {"state": 1}}])
    state.add_step(torch.tensor(2.0), tokens=128, seconds=0.25)
    state.capture_rng(torch.device("cpu"))
    torch.save({**state.to_dict(), "optimizers": []}, tmp_path / "state.pt")
    saved_at = state.wall_time()
    back = RunState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert 10.0 < back.wall_s <= saved_at and back.wall_time() >= back.wall_s  # the clock goes on from the save
    for f in dataclasses.fields(RunState):
        if f.name == "wall_s":
            continue
        a, b = getattr(state, f.name), getattr(back, f.name)
        assert torch.equal(a, b) if f.name == "interval_loss" else (
            torch.equal(a["torch"], b["torch"]) if f.name == "rng" else a == b), f.name
    loss, tokens_per_sec = back.close_interval()
    assert float(loss) == 0.5 and tokens_per_sec == 512 / 0.75 and back.interval_steps == 0
    assert back.elapsed_s == 2.25


# --- the schedule when --resume changes max_iters -------------------------------------------------------
def resumed(mode: str, step: int, max_iters: int = 200, **kw):
    from training.schedule import resumed_schedule
    saved = TrainConfig(max_iters=100, warmup_iters=10, lr_init=0.0, lr_max=1.0, lr_min=0.1, **kw)
    return saved, *resumed_schedule(saved, TrainConfig(**{**saved.to_dict(), "max_iters": max_iters,
                                                         "resume_schedule": mode}), step)


def test_resume_stretch_stretches_the_rest_and_says_how_the_lr_jumps():
    saved, cfg, note = resumed("stretch", 100)
    assert cfg.final_flat_iters == 0 and cfg.decay_restart_step is None
    stretched = 0.1 + 0.45 * (1 + math.cos(math.pi * 90 / 190))  # step 100 is 90 of the 190 annealing steps
    assert lr_at(100, saved) == 0.1 and lr_at(100, cfg) == pytest.approx(stretched)  # back up the longer cosine
    assert note.startswith("schedule: max_iters 100 -> 200, resume_schedule='stretch'")
    assert f"the lr at step 100 goes from 1.00e-01 to {stretched:.2e}" in note and "extend_tail" in note


@pytest.mark.parametrize("step", [60, 100])
def test_resume_extend_tail_keeps_the_decay_and_holds_lr_min(step):
    saved, cfg, note = resumed("extend_tail", step)
    assert cfg.final_flat_iters == 100
    assert [lr_at(s, cfg) for s in range(100)] == [lr_at(s, saved) for s in range(100)]  # the decay as it was
    assert all(lr_at(s, cfg) == 0.1 for s in range(100, 200))
    assert f"the decay still ends at step 100, then lr_min=1.00e-01 until step 200; the lr at step {step} stays" in note
    with pytest.raises(ValueError, match="extend_tail.*would cut it"):
        resumed("extend_tail", 60, max_iters=80)
    _, shorter, _ = resumed("extend_tail", 60, max_iters=90, final_flat_iters=20)  # only the flat tail shrinks
    assert shorter.final_flat_iters == 10 and lr_at(75, shorter) == lr_at(75, TrainConfig(
        max_iters=100, warmup_iters=10, lr_init=0.0, lr_max=1.0, lr_min=0.1, final_flat_iters=20))


def test_resume_restart_decay_decays_from_the_current_lr():
    saved, cfg, note = resumed("restart_decay", 60)
    start = lr_at(60, saved)
    assert (cfg.decay_restart_step, cfg.decay_restart_lr) == (60, start)
    lrs = [lr_at(s, cfg) for s in range(60, 200)]
    assert lrs[0] == start and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0.1  # no jump, smooth
    assert lr_at(200, cfg) == 0.1 and lr_at(130, cfg) == pytest.approx(0.1 + (start - 0.1) / 2)  # a cosine
    assert f"from {start:.2e} at step 60, a new cos decay to lr_min=1.00e-01 by step 200" in note
    _, finished, note = resumed("restart_decay", 100)  # a finished run is at lr_min: it stays there
    assert all(lr_at(s, finished) == 0.1 for s in range(100, 200)) and "--init_from" in note
    _, warming, _ = resumed("restart_decay", 5)  # stopped during warmup: warmup ends, then the new decay
    assert warming.decay_restart_step == 10 and lr_at(10, warming) == 1.0 and lr_at(7, warming) == lr_at(7, saved)


def test_resume_without_a_schedule_change_says_nothing():
    from training.schedule import resumed_schedule
    saved = TrainConfig(max_iters=100)
    assert resumed_schedule(saved, TrainConfig(max_iters=100, log_interval=5), 50) == (
        TrainConfig(max_iters=100, log_interval=5), None)
    _, note = resumed_schedule(saved, TrainConfig(max_iters=100, lr_max=2e-3), 50)
    assert note.startswith("schedule changed: the lr at step 50 goes from")


def test_restart_fields_are_set_together():
    with pytest.raises(ValueError, match="decay_restart_step"):
        TrainConfig(decay_restart_step=5)
    with pytest.raises(ValueError, match="decay_restart_lr"):
        TrainConfig(decay_restart_step=5, decay_restart_lr=1.0)  # above lr_max


def test_a_resume_to_another_length_keeps_the_warmup_of_the_run_so_far():
    from training.schedule import resumed_schedule
    resumed, _ = resumed_schedule(TrainConfig(max_iters=100), TrainConfig(max_iters=400), 50)
    assert resumed.warmup_steps == 10  # not 40: the run warmed up over its first 10 steps
