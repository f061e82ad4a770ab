"""AsyncDistiller: a student trained in a background thread, published only within the bound."""

import json
import re
import threading
import time

import pytest
import tensordict.nn.probabilistic as tensordict_probabilistic
import torch
from _recipes import run_recipe
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.envs.utils import ExplorationType, exploration_type, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

from torchrl_seer.collectors import (
    AsyncDistiller,
    CompressedPolicy,
    PolicyCompressor,
    policy_divergence,
)
from torchrl_seer.modules.distributions import policy_distribution


def actor(width, n_actions=2, seed=0):
    torch.manual_seed(seed)
    return ProbabilisticActor(
        TensorDictModule(MLP(in_features=4, out_features=n_actions, num_cells=[width]),
                         in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"], distribution_class=torch.distributions.Categorical,
    )  # fmt: skip


def sharpen(policy, scale=20.0):
    """A confident teacher: far from a fresh student."""
    with torch.no_grad():
        policy.module[0].module[-1].weight.mul_(scale)


def states(n=512, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return TensorDict(observation=torch.randn(n, 4, generator=generator), batch_size=[n])


def wait_for(condition, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_student_is_published_once_within_the_bound_and_ships_through_the_pipeline():
    teacher = actor(64)
    sharpen(teacher, 5.0)
    student = actor(16, seed=1)
    batch = states()
    initial = policy_divergence(teacher, student, batch)["kl"]
    distiller = AsyncDistiller(teacher, student, kl_bound=0.05 * initial, lr=1e-2, check_every=5)
    first = distiller.step.student
    distiller.start()
    distiller.observe(batch, teacher)
    wait_for(lambda: distiller.publications > 0)
    distiller.stop()
    assert distiller.publications > 0 and distiller.updates >= 5
    published = distiller.step.student
    assert published is not first and published is not student  # a frozen copy
    assert not any(p.requires_grad for p in published.parameters())
    assert policy_divergence(teacher, published, batch[-256:])["kl"] <= 0.05 * initial
    # the published student is what a pipeline starting with the step ships to the actors
    compressor = PolicyCompressor([distiller.step, *PolicyCompressor.from_spec("int8").steps])
    worker = CompressedPolicy(teacher, PolicyCompressor())
    worker.load_packet(compressor.pack(teacher, version=1))
    expected = CompressedPolicy(published, PolicyCompressor.from_spec("int8"))
    torch.testing.assert_close(worker(batch.clone())["logits"], expected(batch.clone())["logits"])


def test_student_outside_the_bound_is_never_published():
    teacher = actor(64)
    sharpen(teacher)
    distiller = AsyncDistiller(teacher, actor(2, seed=1), kl_bound=1e-9, check_every=2)
    first = distiller.step.student
    distiller.start()
    distiller.observe(states(), teacher)
    wait_for(lambda: distiller.updates >= 10)
    distiller.stop()
    assert distiller.updates >= 10 and distiller.publications == 0
    assert distiller.step.student is first and distiller.last_kl > 1e-9


def test_a_paced_thread_takes_at_most_its_steps_per_batch_and_then_sleeps():
    teacher = actor(16)
    distiller = AsyncDistiller(teacher, actor(4, seed=1), kl_bound=1e-9, updates_per_batch=3)
    distiller.start()
    distiller.observe(states(), teacher)
    wait_for(lambda: distiller.updates >= 3)
    time.sleep(0.3)  # time for many unpaced steps
    assert distiller.updates == 3
    distiller.observe(states(seed=1), teacher)
    distiller.observe(states(seed=2), teacher)
    wait_for(lambda: distiller.updates >= 9)
    time.sleep(0.3)
    distiller.stop()
    assert distiller.updates == 9


def test_stopping_a_paced_thread_that_waits_for_a_batch_never_hangs():
    teacher = actor(8)
    for _ in range(20):  # stop() races with the thread going back to sleep
        distiller = AsyncDistiller(teacher, actor(4, seed=1), kl_bound=1e-9, updates_per_batch=1)
        distiller.start()
        distiller.observe(states(64), teacher)
        stopper = threading.Thread(target=distiller.stop)
        stopper.start()
        stopper.join(timeout=30)
        assert not stopper.is_alive()
        assert distiller.updates <= 1


def test_an_unpaced_thread_keeps_training_on_the_states_it_holds():
    teacher = actor(16)
    distiller = AsyncDistiller(teacher, actor(4, seed=1), kl_bound=1e-9)
    distiller.start()
    distiller.observe(states(), teacher)
    wait_for(lambda: distiller.updates >= 20)
    distiller.stop()
    assert distiller.updates >= 20


def test_observe_copies_the_teacher_weights():
    teacher = actor(8)
    distiller = AsyncDistiller(teacher, actor(8, seed=1), kl_bound=0.1)
    sharpen(teacher)
    assert not torch.equal(
        distiller.teacher.module[0].module[-1].weight, teacher.module[0].module[-1].weight
    )
    distiller.observe(states(8), teacher)  # the thread is not started: nothing trains
    assert torch.equal(
        distiller.teacher.module[0].module[-1].weight, teacher.module[0].module[-1].weight
    )
    assert distiller.teacher is not teacher


def test_an_error_in_the_thread_is_raised_in_the_learner():
    teacher = actor(8)
    distiller = AsyncDistiller(teacher, actor(8, n_actions=3), kl_bound=0.1)  # 3 != 2 actions
    distiller.start()
    distiller.observe(states(), teacher)
    with pytest.raises(RuntimeError, match="AsyncDistiller thread stopped on an error"):
        wait_for(lambda: distiller._error is not None)
        distiller.stop()


def tanh_normal_actor(seed=0):
    torch.manual_seed(seed)
    network = torch.nn.Sequential(
        MLP(in_features=4, out_features=4, num_cells=[16]), NormalParamExtractor()
    )
    net = TensorDictModule(network, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(net, in_keys=["loc", "scale"], distribution_class=TanhNormal)


@pytest.mark.parametrize(
    "policy", [actor(8), tanh_normal_actor()], ids=["categorical", "tanh_normal"]
)
def test_policy_distribution_is_get_dist_without_setting_the_exploration_type(policy, monkeypatch):
    batch = states(16)
    expected = policy.get_dist(batch.clone())
    mode_changes = []
    set_mode = tensordict_probabilistic._interaction_type.set_mode
    monkeypatch.setattr(
        tensordict_probabilistic._interaction_type,
        "set_mode",
        lambda mode: mode_changes.append(mode) or set_mode(mode),
    )
    dist = policy_distribution(policy, batch)
    assert mode_changes == []
    assert list(batch.keys()) == ["observation"]  # the input is not written to
    actions = expected.sample()
    torch.testing.assert_close(dist.log_prob(actions), expected.log_prob(actions))


def test_policy_distribution_asks_other_policies_and_refuses_non_probabilistic_ones():
    class OwnDistribution(torch.nn.Module):
        def get_dist(self, tensordict):
            return torch.distributions.Categorical(logits=tensordict["observation"])

    dist = policy_distribution(OwnDistribution(), states(4))
    torch.testing.assert_close(dist.logits, states(4)["observation"].log_softmax(-1))
    with pytest.raises(TypeError, match="Linear has no get_dist: expected a probabilistic"):
        policy_distribution(torch.nn.Linear(4, 2), states(4))


def test_the_thread_never_changes_the_exploration_type_another_thread_acts_in(monkeypatch):
    teacher = actor(32)
    sharpen(teacher)
    distiller = AsyncDistiller(teacher, actor(8, seed=1), kl_bound=1e-9, check_every=2)
    threads_setting_the_mode = set()
    set_mode = tensordict_probabilistic._interaction_type.set_mode

    def recording_set_mode(mode):
        threads_setting_the_mode.add(threading.current_thread().name)
        set_mode(mode)

    monkeypatch.setattr(tensordict_probabilistic._interaction_type, "set_mode", recording_set_mode)
    with set_exploration_type(ExplorationType.RANDOM):
        distiller.start()
        distiller.observe(states(), teacher)
        wait_for(lambda: distiller.updates >= 20)
        assert exploration_type() is ExplorationType.RANDOM
        distiller.stop()
    assert distiller.updates >= 20 and distiller.last_kl is not None  # it trained and checked
    assert "AsyncDistiller" not in threads_setting_the_mode


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        AsyncDistiller(actor(8), actor(4), kl_bound=0.1, batch_size=0)
    with pytest.raises(ValueError, match="updates_per_batch must be >= 1 or None, got 0"):
        AsyncDistiller(actor(8), actor(4), kl_bound=0.1, updates_per_batch=0)
    with pytest.raises(ValueError, match="kl_bound must be > 0"):
        AsyncDistiller(actor(8), actor(4), kl_bound=0.0)


def test_impala_recipe_distils_a_student_in_the_background(tmp_path, capsys):
    report = run_recipe(
        "accerl_impala", "accerl.compression=int8", "accerl.distill_width=8",
        "collector.workers=0", "network.width=32", "collector.total_frames=1024",
        "collector.frames_per_batch=128", "accerl.monitor_every=1", "accerl.compare=false",
        "accerl.distill_updates_per_batch=2", "logger.backend=null",
        f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    (run,) = json.loads((report.parent / "report.json").read_text())["runs"]
    assert run["frames"] == 1024
    levels = {"distill+int8", "int8", "bf16", "fp32"}
    assert run["final_pipeline"] in levels
    assert all({e["from"], e["to"]} <= levels for e in run["monitor_events"])
    updates = re.search(r"distillation: \{'updates': (\d+)", capsys.readouterr().out)
    assert updates is not None and 0 < int(updates.group(1)) <= 2 * 1024 // 128  # paced
    assert run["distillation"]["updates"] == int(updates.group(1))
    assert len(run["monitor_history"]) == 1024 // 128  # one Monitor check per batch


def test_distillation_refuses_checkpoints_and_a_bad_pace(tmp_path):
    with pytest.raises(ValueError, match=r"accerl\.distill_width cannot be combined"):
        run_recipe(
            "accerl_impala", "accerl.distill_width=8", "checkpoint.interval=512",
            f"logger.output_dir={tmp_path}",
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"accerl\.distill_updates_per_batch must be > 0"):
        run_recipe(
            "accerl_impala", "accerl.distill_width=8", "accerl.distill_updates_per_batch=0",
            f"logger.output_dir={tmp_path}",
        )  # fmt: skip
