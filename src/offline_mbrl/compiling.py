"""``--compile``: the population update and the rollout step as compiled graphs.

The eager path is the reference; compiled functions compute the same thing (up to float
rounding, see ``tests/test_compile.py``). The SAC update compiles its losses, forward and
backward (AOTAutograd), with its random draws, and keeps the optimizer step eager. On CUDA
the mode is ``reduce-overhead``, which captures each function as a CUDA graph and replays
it, removing the per-kernel launch cost that dominates small-network updates. On CPU
inductor fuses the elementwise work between the matrix products. In bf16 rollouts on CPU
the model's networks stay eager inside the compiled step
(``EnvironmentModel.eager_networks``), where oneDNN's bf16 products beat inductor's, and
only the work around them is compiled. Figures: ``benchmarks/README.md``.

Compiled code is cached per function and specialised on the agent and model objects:
a process that trains several populations one after another compiles again for each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from offline_mbrl.models.layers import BatchedMLP

F = TypeVar("F", bound=Callable[..., Any])


def compiler(device: torch.device) -> Callable[[F], F]:
    """``torch.compile`` with the mode for ``device`` and static shapes."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"

    def compile_fn(fn: F) -> F:
        compiled = torch.compile(fn, mode=mode, dynamic=False)
        if device.type != "cuda":
            return compiled  # type: ignore[return-value]

        def replay(*args: Any, **kwargs: Any) -> Any:
            # Each call is a new step: outputs of the previous replay are consumed by now.
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs)

        return replay  # type: ignore[return-value]

    return compile_fn


def eager_rollout_networks(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a compiled rollout step in ``dtype`` should run the model's networks eagerly.

    Only bf16 on CPU, where oneDNN's eager bf16 products between compiled graphs are
    faster than inductor's (benchmarks/README.md).
    """
    return device.type == "cpu" and dtype == torch.bfloat16


def compile_networks(module: torch.nn.Module, device: torch.device) -> None:
    """Compile the forward of every batched MLP inside ``module``, in place.

    For the parts that run through ``forward`` (behavioral cloning's update, evaluation);
    the forward methods are replaced rather than the modules wrapped, so state dict keys
    (and therefore checkpoints) are the same as in eager mode.
    """
    compile_fn = compiler(device)
    for sub in module.modules():
        if isinstance(sub, BatchedMLP):
            sub.forward = compile_fn(sub.forward)  # type: ignore[method-assign]
