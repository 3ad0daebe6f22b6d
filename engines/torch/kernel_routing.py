"""Run a torch stage module with mattrt's custom ops (kernels/torch_ops.py) in place of the
PyTorch code they replace, without touching model code.

Two mechanisms, each the least intrusive one for its kind of call:

1. `torch.nn.functional.max_unpool2d` is a torch function: a `TorchFunctionMode` (entered only
   around the engine's own forward calls) sees every call of it, wherever in the module tree it
   is made, and sends it to `torch.ops.mattrt.max_unpool2d` (the CuPy kernel on CUDA tensors,
   the deterministic eager implementation on CPU ones). Calls the op does not cover (not 4-D,
   dtypes other than float32/float16, other devices) go to PyTorch unchanged and are counted
   as fallbacks.
2. AlphaNet's `attention_pool2d` / `attention_unpool2d` are plain Python functions (built from
   exp, avg_pool2d and interpolate), invisible to any torch mode. For every submodule of the
   engine's *own copy* of the stage whose class `forward` reads one of those functions as a
   global name, the copy gets an instance `forward`: the same code object bound to a copy of
   its module's globals in which those names are the custom ops. Nothing global changes (the
   model module, the class and other engines keep the original functions), the substitution
   is an identity match on the function objects (a renamed or rewritten function is simply
   not substituted: the call counts show it), and helper functions called from `forward` keep
   their own globals.

`KernelRouting.calls` counts the routed calls per op and `fallbacks` the calls left to
PyTorch, so engines and benchmarks report what actually ran.
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from mattrt.errors import InputError
from mattrt.kernels import torch_ops  # noqa: F401  (registers torch.ops.mattrt.*)
from mattrt.models import alphanet

_UNPOOL_DTYPES = (torch.float32, torch.float16)
_INDEX_DTYPES = (torch.int64, torch.int32)


def python_substitutions() -> dict[Callable[..., Any], str]:
    """Plain-Python functions of the models that a mattrt custom op replaces: function -> op name."""

    return {alphanet.attention_pool2d: "attention_pool2d", alphanet.attention_unpool2d: "attention_unpool2d"}


def unpool_output_size(x: torch.Tensor, kernel_size, stride, padding, output_size) -> tuple[int, int]:
    """F.max_unpool2d's output height and width (PyTorch's rule and its range check)."""
    kernel = _pair(kernel_size)
    step = _pair(stride if stride is not None else kernel_size)
    pad = _pair(padding)
    default = [(int(x.shape[-2 + d]) - 1) * step[d] + kernel[d] - 2 * pad[d] for d in range(2)]
    if output_size is None:
        return default[0], default[1]
    size = [int(v) for v in output_size]
    if len(size) == 4:
        size = size[2:]
    if len(size) != 2:
        raise InputError(f"max_unpool2d: output_size must have 2 (or 4) elements, got {list(output_size)}")
    for d in range(2):
        if not default[d] - step[d] < size[d] < default[d] + step[d]:
            raise InputError(
                f"max_unpool2d: output_size {size} is invalid for input {tuple(x.shape)}: each size must lie "
                f"strictly between {[default[i] - step[i] for i in range(2)]} and {[default[i] + step[i] for i in range(2)]}"
            )
    return size[0], size[1]


def _code_names(code: types.CodeType) -> set[str]:
    """Global names a code object and the code nested in it (comprehensions, lambdas) may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class _Router(TorchFunctionMode):
    def __init__(self, routing: "KernelRouting"):
        super().__init__()
        self.routing = routing

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_unpool2d:
            return self.routing.max_unpool2d(*args, **kwargs)
        return func(*args, **kwargs)


class KernelRouting:
    """The routing of one engine's module copy; see the module docstring."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.substituted: list[str] = []  # "<class>.forward: name, name" per rebound forward

    # -- 1. torch functions, through the mode ---------------------------------------------------
    def mode(self) -> TorchFunctionMode:
        """A fresh mode to enter around one forward call (modes are not re-entrant)."""
        return _Router(self)

    def max_unpool2d(self, input, indices, kernel_size, stride=None, padding=0, output_size=None):
        routable = (
            isinstance(input, torch.Tensor)
            and isinstance(indices, torch.Tensor)
            and input.ndim == 4
            and input.dtype in _UNPOOL_DTYPES
            and indices.dtype in _INDEX_DTYPES
            and indices.shape == input.shape
            and input.device.type in ("cpu", "cuda")
            and indices.device == input.device
        )
        if not routable:
            self.fallbacks["max_unpool2d"] += 1
            return F.max_unpool2d(input, indices, kernel_size, stride, padding, output_size)
        height, width = unpool_output_size(input, kernel_size, stride, padding, output_size)
        self.calls["max_unpool2d"] += 1
        return torch.ops.mattrt.max_unpool2d(input, indices, height, width)

    # -- 2. plain-Python functions, through the copy's forwards ---------------------------------
    def _routed(self, name: str) -> Callable[..., torch.Tensor]:
        op = getattr(torch.ops.mattrt, name)

        def routed(*args, **kwargs):
            self.calls[name] += 1
            return op(*args, **kwargs)

        routed.__name__ = routed.__qualname__ = f"mattrt_{name}"
        return routed

    def attach(self, module: torch.nn.Module) -> "KernelRouting":
        """Rebind, on this module tree (the engine's own copy), every forward that reads a
        substitutable function. Returns self."""
        table = python_substitutions()
        for submodule in module.modules():
            forward = getattr(type(submodule), "forward", None)
            if not isinstance(forward, types.FunctionType) or "forward" in vars(submodule):
                continue
            globals_ = forward.__globals__
            replace = {
                name: self._routed(table[globals_[name]])
                for name in sorted(_code_names(forward.__code__))
                if name in globals_ and _is_key(table, globals_[name])
            }
            if not replace:
                continue
            rebound_globals = dict(globals_)
            rebound_globals.update(replace)
            rebound = types.FunctionType(forward.__code__, rebound_globals, forward.__name__, forward.__defaults__,
                                         forward.__closure__)
            rebound.__kwdefaults__ = forward.__kwdefaults__
            rebound.__qualname__ = forward.__qualname__
            rebound.__doc__ = forward.__doc__
            submodule.forward = types.MethodType(rebound, submodule)
            entry = f"{type(submodule).__qualname__}.forward: {', '.join(replace)}"
            if entry not in self.substituted:
                self.substituted.append(entry)
        return self

    def describe(self) -> str:
        parts = ["F.max_unpool2d -> mattrt::max_unpool2d (torch function mode)"]
        parts += [f"{entry} -> mattrt ops" for entry in self.substituted]
        return "; ".join(parts)


def _is_key(table: dict, value: Any) -> bool:
    try:
        return value in table
    except TypeError:  # unhashable globals
        return False


__all__ = ["KernelRouting", "python_substitutions", "unpool_output_size"]
