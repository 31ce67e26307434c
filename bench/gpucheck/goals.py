"""The goals the GPU figures are held to (the follow-up issue's), judged from a check's lines, and the summary
table gpu_check.py prints last. On --smoke the values are shown but not judged: CPU figures of tiny shapes
say nothing about a GPU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _ok(rows: list[dict], section: str, items: tuple[str, ...], variant: str | None = None) -> list[dict]:
    return [r for r in rows if r["section"] == section and r["item"] in items and r["status"] == "ok"
            and (variant is None or r.get("variant") == variant)]


def _best(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else None


def _all_true(rows: list[dict], key: str) -> bool | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return all(values) if values else None


def _tests_pass(rows: list[dict]) -> bool | None:
    found = [r for r in rows if r["section"] == "tests" and r["status"] in ("ok", "error")
             and r["passed"] + r["failed"] + r["errors"] > 0]  # all skipped (no GPU): nothing measured
    return None if not found else all(r["failed"] == 0 and r["errors"] == 0 for r in found)


@dataclass(frozen=True)
class Goal:
    name: str
    target: float | bool   # a number: the value must reach it; True: the value must be True
    value: Callable[[list[dict]], float | bool | None]
    unit: str = ""

    def verdict(self, value, smoke: bool) -> str:
        if value is None:
            return "not measured"
        if smoke:
            return "smoke: not judged"
        return "pass" if (value is True if self.target is True else value >= self.target) else "MISS"


GOALS = (
    Goal("gpt2_124M ctx 1024 MFU (bf16, compiled)", 0.50,
         lambda rows: _best(_ok(rows, "train", ("gpt2_124M",), "ours"), "mfu")),
    Goal("gpt2_124M tokens/s over the nanoGPT-style reference", 1.30,
         lambda rows: _best(_ok(rows, "train", ("gpt2_124M",), "ours"), "speedup_vs_reference"), "x"),
    Goal("llama_1B ctx 2048 MFU (largest micro-batch)", 0.40,
         lambda rows: _best(_ok(rows, "train", ("llama_1B", "llama_1B_ac")), "mfu")),
    Goal("decode batch 1: compiled / CUDA-graph step over eager", 2.0,
         lambda rows: _best(_ok(rows, "decode", ("b1_cuda_graphs", "b1_compiled")), "speedup_vs_eager"), "x"),
    Goal("decode: every variant gives the eager tokens", True,
         lambda rows: _all_true(_ok(rows, "decode", ("b1_cuda_graphs", "b1_compiled", "b64_cuda_graphs",
                                                     "b64_compiled")), "tokens_identical")),
    Goal("resume after SIGKILL exact in float32", True, lambda rows: _all_true(
        [r for r in rows if r["section"] == "run" and r["item"] == "float32" and r["status"] in ("ok", "error")],
        "exact")),
    Goal("resume in bf16 within tolerance", True, lambda rows: next(
        (r["status"] == "ok" for r in rows if r["section"] == "run" and r["item"] == "bfloat16"
         and r["status"] in ("ok", "error") and r.get("max_loss_diff") is not None), None)),
    Goal("tests/test_cuda.py pass", True, _tests_pass),
)


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}{unit}" if abs(value) < 1000 else f"{value:,.0f}{unit}"
    return f"{value}{unit}"


def note(row: dict) -> str:
    """A few words on a line, by section."""
    s = row["section"]
    if row["status"] != "ok":
        return (row.get("error") or "")[:90]
    if s == "env":
        return (f"{row['gpu']}: bf16 matmul {_fmt(row['matmul_tflops'])} TFLOP/s (datasheet "
                f"{_fmt(row['datasheet_tflops'])}), copy {_fmt(row['copy_gb_per_s'])} GB/s")
    if s == "tests":
        return f"{row['passed']} passed, {row['failed']} failed, {row['errors']} errors, {row['skipped']} skipped"
    if s == "train":
        extra = f", x{row['speedup_vs_reference']} ref" if row.get("speedup_vs_reference") else ""
        return (f"B={row['micro_batch']} T={row['seq_len']} first step {_fmt(row['first_step_s'])} s, "
                f"{row['graph_breaks']} graph breaks{extra}")
    if s == "decode":
        return (f"batch {row['batch']}, x{_fmt(row['speedup_vs_eager'])} eager, identical "
                f"{_fmt(row['tokens_identical'])}, first call {_fmt(row['first_call_s'])} s")
    if s == "run":
        return (f"killed at {row['killed_at_step']}, resumed from {row['resumed_from_step']}, exact "
                f"{_fmt(row['exact'])}, loss {_fmt(row['loss_first'])} -> {_fmt(row['loss_last'])}")
    if s == "attention":
        return f"{row['passes']} {_fmt(row['ms_per_call'])} ms, max diff vs SDPA {_fmt(row['max_abs_diff_vs_sdpa'])}"
    return ""


def summary(rows: list[dict], smoke: bool) -> str:
    """The table of every line of the check, then each goal with its value and verdict."""
    head = f"{'section':<10}{'item':<16}{'variant':<10}{'status':<9}{'tokens/s':>12}{'MFU':>8}{'mem MB':>10}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['section']:<10}{r['item']:<16}{(r.get('variant') or '-'):<10}{r['status']:<9}"
                     f"{_fmt(r.get('tokens_per_sec')):>12}{_fmt(r.get('mfu')):>8}{_fmt(r.get('peak_memory_mb')):>10}"
                     f"  {note(r)}")
    lines += ["", f"{'goal':<58}{'target':>10}{'measured':>12}  verdict", "-" * 92]
    for goal in GOALS:
        value = goal.value(rows)
        target = "yes" if goal.target is True else f">= {goal.target:g}{goal.unit}"
        lines.append(f"{goal.name:<58}{target:>10}{_fmt(value, goal.unit):>12}  {goal.verdict(value, smoke)}")
    return "\n".join(lines)
