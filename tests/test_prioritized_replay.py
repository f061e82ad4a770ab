"""TorchRL's prioritized replay needs its C++ extension (segment trees); it must load here.

With torch 2.13 the extension fails to load and these buffers raise at construction, so this
test guards the torch/torchrl pin in pyproject.toml.
"""

import torch
from tensordict import TensorDict
from torchrl.data import (
    LazyTensorStorage,
    PrioritizedReplayBuffer,
    TensorDictPrioritizedReplayBuffer,
)


def test_segment_tree_extension_loads():
    from torchrl._torchrl import MinSegmentTreeFp32, SumSegmentTreeFp32

    tree = SumSegmentTreeFp32(8)
    tree[torch.arange(8)] = torch.arange(8, dtype=torch.float32)
    assert tree.query(0, 8) == 28.0
    assert MinSegmentTreeFp32(4) is not None


def test_prioritized_buffer_samples_by_priority():
    torch.manual_seed(0)
    rb = TensorDictPrioritizedReplayBuffer(
        alpha=1.0, beta=1.0, storage=LazyTensorStorage(16), batch_size=256
    )
    rb.extend(TensorDict({"x": torch.arange(16)}, batch_size=[16]))
    priority = torch.full((16,), 1e-6)
    priority[3] = 1.0
    rb.update_tensordict_priority(
        TensorDict({"index": torch.arange(16), "td_error": priority}, batch_size=[16])
    )
    sample = rb.sample()
    assert (sample["x"] == 3).float().mean() > 0.99
    assert "priority_weight" in sample.keys()


def test_plain_prioritized_replay_buffer():
    rb = PrioritizedReplayBuffer(alpha=0.7, beta=0.5, storage=LazyTensorStorage(10))
    rb.extend(torch.arange(10))
    data, info = rb.sample(4, return_info=True)
    assert data.shape == (4,)
    assert set(info) == {"priority_weight", "index"}
