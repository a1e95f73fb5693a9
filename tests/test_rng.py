import torch

from offline_mbrl.rng import PopulationRNG


def test_member_stream_does_not_depend_on_population():
    population = PopulationRNG([3, 7, 11], stream=2)
    single = PopulationRNG([7], stream=2)
    for _ in range(3):
        assert torch.equal(population.normal(4, 5)[1], single.normal(4, 5)[0])
        assert torch.equal(population.randint(1000, 9)[1], single.randint(1000, 9)[0])


def test_streams_and_seeds_differ():
    a = PopulationRNG([0, 1]).uniform(100)
    b = PopulationRNG([0, 1], stream=1).uniform(100)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, b)


def test_ranges_and_moments():
    rng = PopulationRNG([0, 1])
    u = rng.uniform(50_000)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    z = rng.normal(50_000)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    k = rng.randint(torch.tensor([3, 1000]), 20_000)
    assert set(k[0].unique().tolist()) == {0, 1, 2}
    assert k[1].min() >= 0 and k[1].max() < 1000


def test_state_round_trip():
    rng = PopulationRNG([4, 5])
    rng.normal(3)
    state = rng.state_dict()
    expected = rng.normal(6)
    restored = PopulationRNG([0, 0])
    restored.load_state_dict(state)
    assert torch.equal(restored.normal(6), expected)


def test_block_draws_are_addressable_in_any_chunking():
    rng = PopulationRNG([3, 7])
    draw = rng.reserve(2)
    whole = rng.block_normal(draw, 0, 10, 4)
    parts = torch.cat([rng.block_normal(draw, 0, 3, 4),
                       rng.block_normal(torch.tensor(draw), torch.tensor(3), 7, 4)], dim=1)
    assert torch.equal(whole, parts)
    assert torch.equal(PopulationRNG([7]).block_normal(draw, 2, 3, 4)[0], whole[1, 2:5])
    assert not torch.equal(rng.block_normal(draw + 1, 0, 10, 4), whole)
    k = rng.block_randint(draw, 0, 5000, 5)
    assert set(k.unique().tolist()) == {0, 1, 2, 3, 4}


def test_reserve_moves_the_counter_past_the_block():
    a, b = PopulationRNG([1]), PopulationRNG([1])
    a.reserve(3)
    for _ in range(3):
        b.uniform(1)
    assert torch.equal(a.uniform(5), b.uniform(5))
