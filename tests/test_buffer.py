import torch

from offline_mbrl.data.buffer import DatasetSampler, PopulationBuffer, TransitionLayout
from offline_mbrl.rng import PopulationRNG


def rows(P, n, start=0):
    base = torch.arange(start, start + n, dtype=torch.float32)
    return base.view(1, n, 1).expand(P, n, 5).clone() + torch.arange(P).view(P, 1, 1) * 100


def test_pack_unpack():
    layout = TransitionLayout(obs_dim=2, act_dim=1)
    packed = layout.pack(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]]), torch.tensor([4.0]),
                         torch.tensor([[5.0, 6.0]]), torch.tensor([True]))
    assert packed.tolist() == [[1, 2, 3, 4, 5, 6, 1]]
    out = layout.unpack(packed)
    assert out["reward"].tolist() == [4.0] and out["terminated"].tolist() == [1.0]
    assert out["next_obs"].tolist() == [[5.0, 6.0]]


def test_wrap_around_keeps_newest():
    buffer = PopulationBuffer(2, 4, TransitionLayout(1, 1))
    buffer.add(rows(2, 3, 0))
    buffer.add(rows(2, 3, 3))  # 6 rows into capacity 4: rows 2..5 remain
    assert buffer.size.tolist() == [4, 4] and buffer.position.tolist() == [2, 2]
    assert sorted(buffer.data[0, :4, 0].tolist()) == [2, 3, 4, 5]
    ordered = buffer.state_dict()["rows"]
    assert ordered[0, :, 0].tolist() == [2, 3, 4, 5]
    assert ordered[1, :, 0].tolist() == [102, 103, 104, 105]


def test_more_rows_than_capacity():
    buffer = PopulationBuffer(1, 3, TransitionLayout(1, 1))
    buffer.add(rows(1, 7))
    assert buffer.state_dict()["rows"][0, :, 0].tolist() == [4, 5, 6]


def test_masked_add_per_member():
    buffer = PopulationBuffer(2, 5, TransitionLayout(1, 1))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    buffer.add(rows(2, 3), mask)
    assert buffer.size.tolist() == [2, 1]
    assert buffer.data[0, :2, 0].tolist() == [0, 2]
    assert buffer.data[1, 0, 0].item() == 102


def test_sample_only_filled_rows_and_state_round_trip():
    buffer = PopulationBuffer(2, 10, TransitionLayout(1, 1))
    buffer.add(rows(2, 3))
    batch = buffer.sample(500, PopulationRNG([0, 1]))
    assert batch.shape == (2, 500, 5)
    assert set(batch[0, :, 0].tolist()) == {0, 1, 2}
    assert set(batch[1, :, 0].tolist()) == {100, 101, 102}
    restored = PopulationBuffer(2, 10, TransitionLayout(1, 1))
    restored.load_state_dict(buffer.state_dict())
    assert torch.equal(restored.state_dict()["rows"], buffer.state_dict()["rows"])


def test_dataset_sampler_gathers_per_member():
    data = torch.arange(20, dtype=torch.float32).view(10, 2)
    batch = DatasetSampler(data).sample(7, PopulationRNG([0, 1, 2]))
    assert batch.shape == (3, 7, 2)
    assert torch.equal(batch[..., 1], batch[..., 0] + 1)


def test_checkpointed_buffer_holds_its_filled_rows_only(tmp_path):
    """A checkpoint of a few rows of a large preallocated buffer is small: the saved
    tensors do not carry the buffer's whole storage (``torch.save`` writes storages)."""
    from offline_mbrl.checkpoint import load_checkpoint, save_checkpoint

    buffer = PopulationBuffer(2, 200_000, TransitionLayout(1, 1))  # 2 x 200k x 5 floats: 8 MB
    buffer.add(rows(2, 3))
    empty = PopulationBuffer(2, 200_000, TransitionLayout(1, 1))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"ordered": buffer.state_dict(), "member": buffer.member_state(1),
                           "empty": empty.state_dict(), "empty_member": empty.member_state(0),
                           "view": buffer.data[:, :3]})
    assert path.stat().st_size < 20_000
    loaded = load_checkpoint(path)
    assert loaded["member"]["rows"][:, 0].tolist() == [100, 101, 102]
    assert loaded["view"].tolist() == buffer.data[:, :3].tolist()
    assert loaded["empty"]["rows"].shape == (2, 0, 5)
