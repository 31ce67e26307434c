"""LoggingModule and @log_io: switch on logging to print every tensor flowing through the model.

    model.enable_logging()          # every @log_io method prints its inputs (by name) and outputs
    model(input_ids)
    model.enable_logging(False)

Disabled, the wrapper costs one attribute check per call: nothing measurable on a training step.
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

_depth = 0  # nesting level of logged calls, for indentation


def describe(value, nested: bool = False) -> str:
    """One line per value: a tensor's shape, dtype, device and range; an object's public attributes."""
    if isinstance(value, torch.Tensor):
        text = f"Tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')} {value.device.type}"
        if value.dtype == torch.bool:  # a mask: how much of it is True
            text += f" {int(value.sum())}/{value.numel()} True"
        elif value.numel() and not value.dtype.is_complex:
            v = value.detach()
            text += f" min={v.min().item():.4g} max={v.max().item():.4g}"
        return text
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v, nested) for v in value) + ")"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, nn.Module) or not hasattr(value, "__dict__"):
        return type(value).__name__
    # e.g. AttentionInputs or a KVCache: what it carries; inside another object, only its plain numbers
    public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
    if nested:
        public = {k: v for k, v in public.items() if isinstance(v, (bool, int, float, str))}
    return f"{type(value).__name__}({', '.join(f'{k}={describe(v, nested=True)}' for k, v in public.items())})"


def log_io(method):
    """Decorate a LoggingModule method to print its inputs, by parameter name, and its outputs while
    logging is enabled."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.logging_enabled:
            return method(self, *args, **kwargs)
        global _depth
        pad = "  " * _depth
        name = f"{type(self).__name__}.{method.__name__}"
        print(f"{pad}> {name}")
        arguments = signature.bind(self, *args, **kwargs).arguments  # the ones passed, by name
        for key, arg in list(arguments.items())[1:]:  # [0] is self
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
