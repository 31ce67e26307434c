"""One step of bench/gpu_check.py, in a process of its own (a crash, a hung compile or fragmented GPU memory
ends with it): python -m bench.gpucheck.section '<settings as JSON>' (gpu_check.py writes the settings)."""
from __future__ import annotations

import importlib
import json
import sys

from bench.gpucheck import plan
from bench.gpucheck.context import Context, configure_compiler
from bench.gpucheck.record import Recorder

MODULES = {"env": "env_info", "tests": "cuda_tests", "train": "train_speed", "decode": "decode_speed",
           "run": "resume_run", "attention": "attention_speed"}  # imported only for their own step


def main(argv: list[str] | None = None) -> int:
    settings = json.loads((sys.argv[1:] if argv is None else argv)[0])
    section = settings["section"]
    configure_compiler()
    ctx = Context(section=section, smoke=settings["smoke"], deadline=settings["deadline"],
                  recorder=Recorder(settings["results"], settings["base"]),
                  sizes=plan.sizes(settings["smoke"], section),
                  compile_backend=settings["compile_backend"], measured_peak_flops=settings.get("measured_peak_flops"))
    importlib.import_module(f"bench.gpucheck.{MODULES[section]}").run(ctx, tuple(settings["items"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
