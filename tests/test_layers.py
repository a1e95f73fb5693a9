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
