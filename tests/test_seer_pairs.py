"""Parts composed in pairs: low-precision SAC + freeze, a compressed actor from a SEER split
encoder, and DeltaFrameStorage -> latent migration under a prefetching buffer."""

import pytest
import torch
from split_encoder_nets import sac_actor_and_critic
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.data import Categorical, ReplayBuffer
from torchrl.modules import MLP, QValueModule

from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor
from torchrl_seer.data import DeltaFrameStorage, LatentEncodeTransform, migrate_to_latent_replay
from torchrl_seer.modules import CURLPixelEncoder, DataEfficientAtariEncoder, LatentOrPixelFeatures
from torchrl_seer.objectives import LowPrecisionSACLoss
from torchrl_seer.trainers import freeze_encoder

SIZE = 25


def sac_batch(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    done = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "pixels": pixels,
            "action": torch.rand(n, 2, generator=gen) * 2 - 1,
            ("next", "pixels"): pixels.flip(-1),
            ("next", "reward"): torch.randn(n, 1, generator=gen),
            ("next", "done"): done,
            ("next", "terminated"): done,
        },
        [n],
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_sac_with_freeze_leaves_frozen_16_bit_copies_alone(dtype):
    torch.manual_seed(0)
    encoder = CURLPixelEncoder(3, image_size=SIZE, num_filters=8, feature_dim=16)
    actor, qvalue, spec = sac_actor_and_critic(encoder)
    loss = LowPrecisionSACLoss(
        actor, qvalue, dtype=dtype, num_qvalue_nets=2, action_spec=spec, alpha_init=0.1
    )
    stepper = loss.make_optimization_stepper(lr=1e-3)
    for step in range(2):
        stepper.optimize(loss(sac_batch(8, step)))
    report = freeze_encoder(
        encoder, modules=[actor, loss], optimizers=list(stepper.optimizers.values())
    )
    q_params = loss.qvalue_network_params
    frozen_keys = [k for k in q_params.keys(True, True) if "frozen_part" in k]
    assert frozen_keys and report.optimizer_states_dropped > 0
    assert all(q_params[k].dtype == dtype for k in frozen_keys)
    frozen = {k: q_params[k].clone() for k in frozen_keys}
    heads = {k: q_params[k].clone() for k in q_params.keys(True, True) if k not in frozen}
    frozen_ids = {id(q_params[k]) for k in frozen_keys}
    frozen_ids |= {id(p) for p in encoder.frozen_part.parameters()}
    for optimizer in stepper.optimizers.values():
        assert not any(id(p) in frozen_ids for g in optimizer.param_groups for p in g["params"])
        assert not any(id(p) in frozen_ids for p in optimizer.state)
    for step in range(2, 5):
        stepper.optimize(loss(sac_batch(8, step)))
    for key, value in frozen.items():
        assert torch.equal(q_params[key], value), key
        assert not q_params[key].requires_grad and q_params[key].grad is None
    assert any(not torch.equal(q_params[k], v) for k, v in heads.items())
    for param in loss.parameters():
        assert torch.isfinite(param).all()


def test_compressed_policy_from_a_split_encoder_policy_acts_like_the_learner():
    torch.manual_seed(0)
    encoder = DataEfficientAtariEncoder(4, screen_size=SIZE)
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder),
        TensorDictModule(
            MLP(in_features=64, out_features=3, num_cells=[32]),
            in_keys=["features"],
            out_keys=["action_value"],
        ),
        QValueModule(spec=Categorical(3)),
    )
    pixels = torch.randint(0, 256, (64, 4, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        reference = qnet(TensorDict(pixels=pixels, batch_size=[64]))
    for spec in ("bf16", "int8"):
        policy = CompressedPolicy(qnet, PolicyCompressor.from_spec(spec))
        policy.load_packet(PolicyCompressor.from_spec(spec).pack(qnet, version=3))
        out = policy(TensorDict(pixels=pixels, batch_size=[64]))
        assert out["policy_version"].tolist() == [3] * 64
        torch.testing.assert_close(
            out["action_value"].float(), reference["action_value"], atol=0.1, rtol=0.1
        )
        agreement = (out["action"] == reference["action"]).float().mean()
        assert agreement > 0.8, (spec, agreement)
    # after the freeze, the learner's split encoder still ships to the actor as one policy
    freeze_encoder(encoder)
    policy = CompressedPolicy(qnet, PolicyCompressor.from_spec("bf16"))
    policy.load_packet(PolicyCompressor.from_spec("bf16").pack(qnet, version=4))
    assert policy(TensorDict(pixels=pixels[:2], batch_size=[2]))["action"].shape == (2,)


def test_delta_frame_storage_migrates_to_latents_under_prefetch():
    frames = torch.randint(0, 256, (44, 1, SIZE, SIZE), dtype=torch.uint8)
    idx = torch.arange(40)
    obs = torch.cat([frames[idx + i] for i in range(4)], 1)
    nxt = torch.cat([frames[idx + i + 1] for i in range(4)], 1)
    done = torch.zeros(40, 1, dtype=torch.bool)
    data = TensorDict(
        {"pixels": obs, "id": idx, ("next", "pixels"): nxt, ("next", "done"): done}, [40]
    )
    rb = ReplayBuffer(
        storage=DeltaFrameStorage(32, frame_stack=4, num_threads=0), batch_size=8, prefetch=2
    )
    rb.extend(data[:20])
    for _ in range(3):  # the prefetch queue holds pixel batches
        assert rb.sample()["pixels"].shape == (8, 4, SIZE, SIZE)
    rb.extend(data[20:])  # wraps: ids 8..39 held
    encoder = DataEfficientAtariEncoder(4, screen_size=SIZE)
    report = migrate_to_latent_replay(
        rb, LatentEncodeTransform(encoder), budget_bytes=10**6, progress=False
    )
    assert report.num_migrated == 32
    stored = rb.storage.get(torch.arange(32))
    assert stored["id"].tolist() == list(range(8, 40))
    with torch.no_grad():
        torch.testing.assert_close(stored["latent"], encoder.frozen_part_forward(obs[8:]))
    # samples drawn after the migration are latent, whatever was queued before
    for _ in range(4):
        sample = rb.sample()
        assert "latent" in sample.keys() and sample["latent"].shape == (8, 64)
    rb.extend(data[:4])  # encoded on write, after the migrated rows
    assert report.latent_capacity > 36 and len(rb) == 36
    assert rb.storage.get(torch.arange(32, 36))["id"].tolist() == [0, 1, 2, 3]
