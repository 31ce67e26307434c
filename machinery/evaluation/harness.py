"""lm-evaluation-harness on runs: each run goes through its cached Hugging Face export into the harness's
model (lm_eval_model.py: one bos, texts scored as model_comparison.py scores them), the tasks run, and each
task's result is saved into the run folder (results.py). lm_eval is optional: pip install "lm_eval[hf]".
"""
from __future__ import annotations

import datetime
import difflib
import logging
from pathlib import Path

from machinery.evaluation import results as saved
from machinery.evaluation.exports import cached_export, export_key
from machinery.run import runs

TASKS_DIR = Path(__file__).parent / "tasks"
BUNDLED_TASK = "tinystories_bpb"  # offline: the bundled validation stories
INSTALL = 'pip install "lm_eval[hf]"'


def require_lm_eval():
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401 (needs the [hf] extra: accelerate)
    except ImportError as e:
        raise ValueError(f"evaluation needs lm-evaluation-harness ({e.name} is missing): {INSTALL}") from None
    return lm_eval


def task_manager(tasks: list[str] | None = None):
    """The harness's tasks plus the bundled ones in tasks/; only the bundled ones when `tasks` names no other
    (indexing the harness's thousands of task files takes seconds)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager
    bundled_only = tasks is not None and set(tasks) <= {p.stem for p in TASKS_DIR.glob("*.yaml")}
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=not bundled_only)


def check_tasks(tasks: list[str], manager) -> None:
    """A ValueError naming the first unknown task, with close matches, before any model is loaded."""
    if not tasks:
        raise ValueError(f"name at least one task: --tasks={BUNDLED_TASK} (offline) or e.g. --tasks=hellaswag")
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else " `lm_eval ls tasks` lists them."
            raise ValueError(f"unknown task {task!r}.{hint}")


def harness_model(export_dir: Path, max_length: int, device: str = "cpu", batch_size: int = 16):
    """The harness's model for an export: float32 as trained, windows of the run's context length."""
    require_lm_eval()
    from machinery.evaluation.lm_eval_model import TemplateGPTLM
    return TemplateGPTLM(pretrained=str(export_dir), device=device, batch_size=batch_size, dtype="float32",
                         max_length=max_length)


class _NoCustomDatasetHint(logging.Filter):
    """The harness tells every task with its own loader (ours) how to pass it options: none are needed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def run_tasks(lm, tasks: list[str], manager, limit: int | None = None, num_fewshot: int | None = None) -> dict:
    """lm_eval.simple_evaluate's output for an LM object (no per-sample logs)."""
    lm_eval = require_lm_eval()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines would bury the table
    task_logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _NoCustomDatasetHint) for f in task_logger.filters):
        task_logger.addFilter(_NoCustomDatasetHint())
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=False)


def records_of(output: dict, weights_key: str, limit: int | None) -> list[dict]:
    """One record per task (groups' subtasks included) from simple_evaluate's output."""
    import lm_eval
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = []
    for task, task_results in output["results"].items():
        metrics, stderr = saved.metrics_of(task_results)
        records.append({
            "task": task, "metrics": metrics, "stderr": stderr,
            "n_samples": output.get("n-samples", {}).get(task), "num_fewshot": output.get("n-shot", {}).get(task),
            "version": output.get("versions", {}).get(task), "limit": limit, "weights_key": weights_key,
            "model": "machinery/evaluation/lm_eval_model.py:TemplateGPTLM on the run's export",
            "lm_eval_version": lm_eval.__version__, "date": date,
        })
    return records


def evaluate_run(run: str | Path, tasks: list[str], manager=None, limit: int | None = None,
                 num_fewshot: int | None = None, batch_size: int = 16, device: str = "cpu",
                 save: bool = True, cache_root: str | Path | None = None) -> tuple[dict, list[dict]]:
    """Run `tasks` on `run`; returns (simple_evaluate's output, the records saved to <run>/eval/<task>.json)."""
    manager = manager or task_manager(tasks)
    check_tasks(tasks, manager)
    run_dir = runs.resolve_run(run)
    model_cfg, _ = runs.load_configs(run_dir)
    export_dir = cached_export(run_dir, cache_root)
    key = export_key(run_dir)
    lm = harness_model(export_dir, model_cfg.max_seq_len, device, batch_size)
    output = run_tasks(lm, tasks, manager, limit, num_fewshot)
    records = records_of(output, key, limit)
    if save:
        for record in records:
            saved.save_result(run_dir, record)
    return output, records
