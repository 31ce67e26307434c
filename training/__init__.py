"""The training loop's parts: run folders and checkpoints, optimizers, LR schedule, devices, distributed."""
