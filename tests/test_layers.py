import torch
from torch import nn

from offline_mbrl.models.layers import BatchedLinear, BatchedMLP, member_generators


def test_batched_linear_equals_separate_linears():
    torch.manual_seed(0)
    layer = BatchedLinear(3, 4, 5)
    x = torch.randn(3, 7, 4)
    out = layer(x)
    for g in range(3):
        ref = nn.Linear(4, 5)
        with torch.no_grad():
            ref.weight.copy_(layer.weight[g].T)
            ref.bias.copy_(layer.bias[g, 0])
        torch.testing.assert_close(out[g], ref(x[g]), rtol=0, atol=1e-6)


def test_hand_made_weights_exact():
    layer = BatchedLinear(2, 2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[1.0], [2.0]], [[-1.0], [0.5]]]))
        layer.bias.copy_(torch.tensor([[[0.5]], [[1.0]]]))
    x = torch.tensor([[[1.0, 1.0]], [[2.0, 4.0]]])
    assert layer(x).flatten().tolist() == [3.5, 1.0]


def test_member_init_independent_of_population():
    a = BatchedMLP(3, 4, 2, (8, 8))
    a.reset_parameters(member_generators([5, 6, 7], salt=1))
    b = BatchedMLP(1, 4, 2, (8, 8))
    b.reset_parameters(member_generators([6], salt=1))
    for la, lb in zip(a.linears(), b.linears(), strict=True):
        assert torch.equal(la.weight[1], lb.weight[0])
        assert torch.equal(la.bias[1], lb.bias[0])
    # Different salts give different networks for the same seed.
    c = BatchedMLP(1, 4, 2, (8, 8))
    c.reset_parameters(member_generators([6], salt=2))
    assert not torch.equal(c.linears()[0].weight, b.linears()[0].weight)


def test_init_bounds_match_nn_linear():
    layer = BatchedLinear(2, 100, 3)
    bound = 1 / 10
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound


def test_mixed_precision_forward_is_differentiable_and_close_to_float32():
    torch.manual_seed(0)
    mlp = BatchedMLP(2, 5, 3, (40, 40))
    x = torch.randn(2, 9, 5)
    out = mlp(x, torch.bfloat16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mlp(x), rtol=0.05, atol=0.02)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in mlp.parameters())


def test_narrow_products_equal_plain_ones():
    """The transposed product for few outputs gives what ``x @ W + b`` does."""
    from offline_mbrl.models import layers

    x, weight, bias = torch.randn(3, 300, 64), torch.randn(3, 64, 2), torch.randn(3, 1, 2)
    torch.testing.assert_close(layers.affine(x, weight, bias), x @ weight + bias,
                               rtol=1e-5, atol=1e-5)


def test_bf16_relu_without_gradients_equals_torch_relu():
    """The eager bf16 ReLU of the rollouts' networks (an integer clamp of the bit patterns)
    gives torch's values on every kind of input, and differentiable inputs still train."""
    from offline_mbrl.models.layers import ReLU

    x = torch.tensor([-3.0, -0.0, 0.0, 1e-30, -1e-30, 2.5, -1e38, float("inf"),
                      -float("inf")]).bfloat16()
    with torch.no_grad():
        out = ReLU()(x.clone())
    assert out.dtype == torch.bfloat16
    assert out.float().tolist() == torch.relu(x).float().tolist()
    w = x.float().requires_grad_(True)
    ReLU()(w.bfloat16() * 1.0).float().sum().backward()
    assert w.grad is not None and w.grad.tolist() == (x.float() > 0).float().tolist()
