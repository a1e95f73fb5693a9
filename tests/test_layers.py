import torch
from torch import nn

from offline_mbrl.models.layers import BatchedLinear, BatchedMLP, member_generators, relu_


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


def test_bf16_relu_is_exact_and_keeps_its_integer_trick_out_of_compiled_graphs():
    """Eager bf16 ReLU clamps the int16 bit pattern; traced, it must be a plain clamp:
    inductor turned every kernel fused with the bit cast into a scalar loop."""
    x = torch.tensor([[-2.5, -0.0, 0.0, 1e-30, 3.0, -1e-30]]).bfloat16()
    expected = x.float().clamp_min(0.0).bfloat16()
    assert torch.equal(relu_(x.clone()), expected)
    assert not torch.signbit(relu_(x.clone())).any()  # -0.0 becomes +0.0 too

    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(lambda t: relu_(t * 1.0), backend=capture, fullgraph=True)
    assert torch.equal(compiled(x), expected)
    node_args = [arg for g in graphs for node in g.graph.nodes for arg in node.args]
    assert graphs and torch.int16 not in node_args


def test_products_that_would_leave_a_thread_idle_are_split_and_give_the_same_result():
    """7 groups on 2 threads, without autograd: 6 in one batched product, the 7th on its
    own, with the same values."""
    from offline_mbrl.models import layers

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(7, 300, 128, generator=gen)
        weight = torch.randn(7, 128, 130, generator=gen)
        bias = torch.randn(7, 1, 130, generator=gen)
        assert layers._unbalanced_on_threads(x, weight)
        with torch.no_grad():
            out = layers.affine(x, weight, bias)
        torch.testing.assert_close(out, torch.baddbmm(bias, x, weight), rtol=1e-5, atol=1e-4)
        # Balanced counts, bf16 and small products stay one batched product.
        assert not layers._unbalanced_on_threads(x[:6], weight[:6])
        assert not layers._unbalanced_on_threads(x.bfloat16(), weight.bfloat16())
        assert not layers._unbalanced_on_threads(x[:, :100], weight)

        # Training keeps one batched product, which autograd records.
        out = layers.affine(x, weight.clone().requires_grad_(), bias)
        assert out.grad_fn is not None and "Baddbmm" in type(out.grad_fn).__name__
    finally:
        torch.set_num_threads(threads)


def test_explicit_backward_matches_autograd_with_narrow_first_and_last_layers():
    """The transposed products for few inputs (first layer) and few outputs (last)."""
    torch.manual_seed(0)
    mlp = BatchedMLP(2, 5, 3, (40, 40))
    x = torch.randn(2, 9, 5, requires_grad=True)
    grad_out = torch.randn(2, 9, 3)
    out, inputs = mlp.forward_saving_inputs(x.detach())
    torch.testing.assert_close(out, mlp(x.detach()))
    grads, grad_in = mlp.backward(inputs, grad_out, input_rows=slice(0, 9))
    (mlp(x) * grad_out).sum().backward()
    for param, grad in zip(mlp.parameters(), grads, strict=True):
        torch.testing.assert_close(grad, param.grad, rtol=1e-5, atol=1e-6)
    assert grad_in is not None and x.grad is not None
    torch.testing.assert_close(grad_in, x.grad, rtol=1e-5, atol=1e-6)
