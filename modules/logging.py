"""LoggingModule and @log_io: switch on logging to print every tensor flowing through the model.

    model.enable_logging()          # every @log_io method prints its inputs and outputs
    model(input_ids)
    model.enable_logging(False)

Disabled, the wrapper costs one attribute check per call: nothing measurable on a training step.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

_depth = 0  # nesting level of logged calls, for indentation


def describe(value) -> str:
    """One line per value: name-free description of a tensor (shape, dtype, device, range) or other object."""
    if isinstance(value, torch.Tensor):
        text = f"Tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')} {value.device.type}"
        if value.numel() and (value.is_floating_point() or not value.dtype.is_complex):
            v = value.detach()
            text += f" min={v.min().item():.4g} max={v.max().item():.4g}"
        return text
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    return type(value).__name__


def log_io(method):
    """Decorate a LoggingModule method to print its inputs and outputs while logging is enabled."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.logging_enabled:
            return method(self, *args, **kwargs)
        global _depth
        pad = "  " * _depth
        name = f"{type(self).__name__}.{method.__name__}"
        print(f"{pad}> {name}")
        for i, arg in enumerate(args):
            print(f"{pad}    in  arg{i}: {describe(arg)}")
        for key, arg in kwargs.items():
            if arg is not None:
                print(f"{pad}    in  {key}: {describe(arg)}")
        _depth += 1
        try:
            out = method(self, *args, **kwargs)
        finally:
            _depth -= 1
        print(f"{pad}< {name} out: {describe(out)}")
        return out
    return wrapper


class LoggingModule(nn.Module):
    """nn.Module with a switch for @log_io printing (off by default)."""

    def __init__(self):
        super().__init__()
        self.logging_enabled = False

    def enable_logging(self, enabled: bool = True) -> "LoggingModule":
        for module in self.modules():
            if isinstance(module, LoggingModule):
                module.logging_enabled = enabled
        return self
