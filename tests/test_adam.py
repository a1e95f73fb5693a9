"""GroupedAdam steps several fused Adam optimizers exactly as their own step() would."""

import pytest
import torch

from offline_mbrl.agents import adam
from offline_mbrl.agents.adam import GroupedAdam


def make(lr=(1e-3, 1e-3), **kwargs):
    g = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 4, generator=g)),
         torch.nn.Parameter(torch.randn(4, generator=g))]
    b = [torch.nn.Parameter(torch.randn(2, 2, generator=g))]
    options = {"fused": True, **kwargs}
    return a + b, [torch.optim.Adam(a, lr=lr[0], **options),
                   torch.optim.Adam(b, lr=lr[1], **options)]


def gradients(step, params):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def reference_steps(n, **kwargs):
    params, optimizers = make(**kwargs)
    for step in range(n):
        for p, grad in zip(params, gradients(step, params), strict=True):
            p.grad = grad
        for optimizer in optimizers:
            optimizer.step()
    return params, optimizers


@pytest.mark.parametrize("kwargs", [{}, {"lr": (1e-3, 3e-4)}, {"fused": False},
                                    {"weight_decay": 0.1}])
def test_grouped_steps_equal_the_optimizers_own_bit_for_bit(kwargs):
    # The last three are not covered by the direct call and take the optimizers' path.
    expected, expected_optimizers = reference_steps(5, **kwargs)
    params, optimizers = make(**kwargs)
    grouped = GroupedAdam(optimizers)
    for step in range(5):
        grouped.step(gradients(step, params))
    for p, q in zip(params, expected, strict=True):
        assert torch.equal(p, q)
    for optimizer, reference in zip(optimizers, expected_optimizers, strict=True):
        for p, q in zip(optimizer.param_groups[0]["params"],
                        reference.param_groups[0]["params"], strict=True):
            state, ref = optimizer.state[p], reference.state[q]
            assert torch.equal(state["step"], ref["step"])
            assert torch.equal(state["exp_avg"], ref["exp_avg"])
            assert torch.equal(state["exp_avg_sq"], ref["exp_avg_sq"])


def test_direct_call_after_the_first_step_and_after_reset():
    params, optimizers = make()
    grouped = GroupedAdam(optimizers)
    calls = []
    original = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", counting_step)
        for step in range(3):
            grouped.step(gradients(step, params))
        assert len(calls) == 2  # the first step only, once per optimizer
        # Loading state replaces the state tensors: the next step goes through step() again.
        for optimizer in optimizers:
            optimizer.load_state_dict(optimizer.state_dict())
        grouped.reset()
        grouped.step(gradients(3, params))
        grouped.step(gradients(4, params))
        assert len(calls) == 4
    expected, _ = reference_steps(5)
    for p, q in zip(params, expected, strict=True):
        assert torch.equal(p, q)


def test_a_kernel_that_refuses_the_call_hands_over_to_the_optimizers(monkeypatch):
    # Another torch version's private kernel may take other arguments.
    params, optimizers = make()
    grouped = GroupedAdam(optimizers)
    grouped.step(gradients(0, params))

    def refuse(*args, **kwargs):
        raise TypeError("_fused_adam_() got an unexpected keyword argument")

    monkeypatch.setattr(adam, "_fused_adam_kernel", refuse)
    for step in range(1, 5):
        grouped.step(gradients(step, params))
    monkeypatch.undo()
    expected, _ = reference_steps(5)
    for p, q in zip(params, expected, strict=True):
        assert torch.equal(p, q)
