"""Several fused Adam optimizers stepped by one kernel call.

``torch.optim.Adam(fused=True)`` already updates all of one optimizer's parameters in
one kernel, but each ``step()`` also spends about 0.1 ms of Python on bookkeeping
(hooks, state checks, grouping by device), which is a few percent of a one-seed SAC
update on CPU. Once the optimizers have stepped once and their state exists,
:class:`GroupedAdam` calls the same kernel directly, once for all of them, on the very
state tensors the optimizers own: the update is bit-for-bit the optimizers' own, and
their state dicts, and so checkpoints, stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The kernel behind ``torch.optim.Adam(fused=True)``; private, hence the fallback below.
_fused_adam_kernel = torch._fused_adam_
_SAME = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused",
         "capturable", "differentiable", "decoupled_weight_decay")


@dataclass
class _State:
    params: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    steps: list[torch.Tensor]  # 0-d views of ``step_counts``, the optimizers' own "step"
    step_counts: torch.Tensor
    lr: float
    betas: tuple[float, float]
    eps: float


class GroupedAdam:
    """Step ``optimizers`` (fused ``torch.optim.Adam``) together.

    The first :meth:`step`, and the first after :meth:`reset`, goes through the
    optimizers' own ``step`` (which creates or checks their state); later ones are one
    kernel call. Optimizers the direct call does not cover (different hyperparameters
    between them, a tensor learning rate, weight decay, AMSGrad, not fused) always take
    their own path, as all do with ``direct=False`` (the reference of
    ``benchmarks/adam_step.py``).
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], direct: bool = True
                 ) -> None:
        self.optimizers = list(optimizers)
        self._state: _State | None = None
        # None: decide at the next step; False: always the optimizers' own step.
        self._direct: bool | None = None if direct else False

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One Adam step with ``grads``, in the optimizers' parameter order, one after
        the other."""
        state = self._state
        if state is not None:
            state.step_counts.add_(1)  # every parameter's step count, in one operator
            try:
                _fused_adam_kernel(state.params, list(grads), state.exp_avgs,
                                   state.exp_avg_sqs, [], state.steps, lr=state.lr,
                                   beta1=state.betas[0], beta2=state.betas[1],
                                   weight_decay=0.0, eps=state.eps, amsgrad=False,
                                   maximize=False, grad_scale=None, found_inf=None)
                return
            except (RuntimeError, TypeError):
                # A torch whose private kernel takes other arguments: the checks run
                # before anything is written, so the optimizers' own step takes over.
                state.step_counts.sub_(1)
                self._state, self._direct = None, False
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        for optimizer in self.optimizers:
            optimizer.step()
        for param in params:
            param.grad = None  # the direct path does not keep gradients either
        if self._direct is None:
            self._state = self._collect()
            self._direct = self._state is not None

    def reset(self) -> None:
        """Forget the optimizers' state tensors and hyperparameters, which the direct path
        reads once: call it after loading their state dicts or changing a learning rate."""
        self._state, self._direct = None, None

    def _collect(self) -> _State | None:
        groups = [g for o in self.optimizers for g in o.param_groups]
        first = groups[0]
        if (any(not isinstance(o, torch.optim.Adam) for o in self.optimizers)
                or any(g.get(k) != first.get(k) for g in groups for k in _SAME)
                or not first["fused"] or first["amsgrad"] or first["maximize"]
                or first["weight_decay"] or first["differentiable"]
                or first.get("decoupled_weight_decay") or isinstance(first["lr"], torch.Tensor)
                or isinstance(first["betas"][0], torch.Tensor)):
            return None
        params = [p for g in groups for p in g["params"]]
        states = [o.state[p] for o in self.optimizers for g in o.param_groups
                  for p in g["params"]]
        if any(not {"exp_avg", "exp_avg_sq", "step"} <= set(s) for s in states):
            return None
        # The per-parameter step counts become views of one tensor, still the optimizers'
        # own state: incrementing them all was one ``_foreach_add_`` over 21 tensors, about
        # 60 us on CPU, and is one ``add_`` now.
        step_counts = torch.stack([s["step"] for s in states])
        for k, s in enumerate(states):
            s["step"] = step_counts[k]
        return _State(params, [s["exp_avg"] for s in states],
                      [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                      step_counts, float(first["lr"]), tuple(first["betas"]),
                      float(first["eps"]))
