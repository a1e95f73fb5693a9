"""``--compile``: the population update and the rollout step as compiled graphs.

The eager path is the reference; compiled functions compute the same thing (up to float
rounding, see ``tests/test_compile.py``). On CUDA the mode is ``reduce-overhead``, which
captures each function as a CUDA graph and replays it, removing the per-kernel launch cost
that dominates small-network updates. On CPU inductor fuses the elementwise work between
the matrix products (measured on 2 cores, ``benchmarks/gpu_check.py --device cpu``: the
update 5.2 -> 4.0 ms at P = 1 and 24.5 -> 19.0 ms at P = 6, a float32 50k × 5 rollout
5.4 -> 4.1 s), at about 30 s of compilation per function. In bf16 rollouts on CPU the
model's networks stay eager inside the compiled step (``EnvironmentModel.eager_networks``)
and only the work around them is compiled (a step of six seeds' chunk: 16.4 -> 15.1 ms;
the whole step compiled: 17.1). A bf16 SAC update gains from compilation as a float32
one does (``benchmarks/sac_update.py``, 2026-12-01 14:57 UTC: P = 6 17.6 -> 14.1 ms, P = 1
7.3 -> 4.6 ms) since ``layers.relu_`` keeps its integer trick out of traced code; with
it, inductor made scalar loops of the fused kernels and the compiled update ran slower.

Compiled code is cached per function and specialised on the agent and model objects:
a process that trains several populations one after another compiles again for each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

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

    Only bf16 on CPU: there the compiled step ran 6% faster with oneDNN's eager bf16
    products between compiled graphs than with the networks inside them (a six-seed chunk
    on 2 cores; see benchmarks/README.md).
    """
    return device.type == "cpu" and dtype == torch.bfloat16


def compile_networks(module: torch.nn.Module, device: torch.device) -> None:
    """Compile the forward of every batched MLP inside ``module``, in place.

    For the parts that run through ``forward`` (behavioral cloning's update, evaluation);
    the forward methods are replaced rather than the modules wrapped, so state dict keys
    (and therefore checkpoints) are the same as in eager mode.
    """
    from offline_mbrl.models.layers import BatchedMLP

    compile_fn = compiler(device)
    for sub in module.modules():
        if isinstance(sub, BatchedMLP):
            sub.forward = compile_fn(sub.forward)  # type: ignore[method-assign]
