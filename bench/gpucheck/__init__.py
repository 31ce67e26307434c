"""bench/gpu_check.py's sections, one module each, run one per process by section.py; record.py writes
their JSON lines, plan.py holds every size (the GPU's and --smoke's), goals.py judges the results."""
