"""Everything a run carries from one step to the next besides the weights and the optimizers, in one
object: a checkpoint saves it whole and --resume restores it whole, so resume is exact (kill -9 included)."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch


@dataclass
class RunState:
    step: int = 0              # optimizer steps done
    tokens: int = 0            # training tokens seen, all processes together
    elapsed_s: float = 0.0     # training time up to the last evaluation (evaluations excluded)
    wall_s: float = 0.0        # wall-clock time of the earlier sessions (a saved state: up to the save; see wall_time)
    best_val: float = math.inf  # best validation loss so far: model.safetensors holds those weights
    # since the last evaluation (a checkpoint may fall between two evaluations)
    interval_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # sum of step losses
    interval_losses: list = field(default_factory=list)  # every process's interval_loss, in a checkpoint
    interval_steps: int = 0
    interval_tokens: int = 0
    interval_s: float = 0.0
    data: list = field(default_factory=list)  # each process's position in its training batches
    rng: dict = field(default_factory=dict)   # torch's random state (dropout), captured at the checkpoint

    def __post_init__(self):
        self._session_start = time.perf_counter()  # this session's clock: a restored state starts it anew

    def wall_time(self) -> float:
        """Wall-clock seconds of the run so far: the earlier sessions' and this one's, evaluations included."""
        return self.wall_s + time.perf_counter() - self._session_start

    def add_step(self, loss: torch.Tensor, tokens: int, seconds: float) -> None:
        if self.interval_loss.device != loss.device:
            self.interval_loss = self.interval_loss.to(loss.device)
        self.interval_loss += loss
        self.step += 1
        self.tokens += tokens
        self.interval_steps += 1
        self.interval_tokens += tokens
        self.interval_s += seconds

    def close_interval(self) -> tuple[torch.Tensor, float]:
        """(mean training loss, tokens/s) since the last evaluation; starts the next interval."""
        mean_loss = self.interval_loss / max(self.interval_steps, 1)
        tokens_per_sec = self.interval_tokens / max(self.interval_s, 1e-9)
        self.elapsed_s += self.interval_s
        self.interval_loss = torch.zeros((), device=self.interval_loss.device)
        self.interval_steps, self.interval_tokens, self.interval_s = 0, 0, 0.0
        return mean_loss, tokens_per_sec

    def capture_rng(self, device: torch.device) -> None:
        self.rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            self.rng["cuda"] = torch.cuda.get_rng_state(device)

    def restore_rng(self, device: torch.device) -> None:
        if self.rng:
            torch.set_rng_state(self.rng["torch"])
            if device.type == "cuda" and "cuda" in self.rng:
                torch.cuda.set_rng_state(self.rng["cuda"], device)

    def to_dict(self) -> dict:
        """Tensors, numbers, lists and dicts only: it loads back with torch.load(weights_only=True)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["interval_loss"] = self.interval_loss.detach().cpu()
        out["wall_s"] = self.wall_time()  # a resume continues the clock from the save
        return out

    @classmethod
    def from_dict(cls, saved: dict) -> "RunState":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"step", "tokens", "data"} - saved.keys()
        if missing:
            raise ValueError(f"the checkpoint's run state lacks {sorted(missing)}: it is not from train.py")
        return cls(**{k: v for k, v in saved.items() if k in names})
