"""AsyncDistiller: distils a smaller actor from the learner's policy without blocking the learner.

A background thread trains a *student* policy with
:class:`~torchrl_seer.objectives.DistillationLoss` on the states of recent batches, against a
private copy of the learner's policy (the *teacher*), which the learner refreshes when it hands
over a batch. Every few student updates the thread measures KL(teacher‖student) on the most
recent states; a student within the bound is *published*: the thread swaps a frozen copy of it
into the :class:`~torchrl_seer.collectors.Distill` step that :attr:`AsyncDistiller.step` holds.
Pipelines that start with that step ship the latest published student to the actors.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs.utils import exploration_type, set_exploration_type

from torchrl_seer.collectors.compression_steps import Distill
from torchrl_seer.collectors.divergence import policy_divergence
from torchrl_seer.objectives.distillation import DistillationLoss

__all__ = ["AsyncDistiller"]


class AsyncDistiller:
    """Trains a student actor in a background thread and publishes it when it is close enough.

    The learner calls :meth:`observe` with each batch and its current policy (a copy of the
    states and of the weights is taken: the learner never waits for the student's training).
    The thread samples ``batch_size`` states among the ``capacity`` most recent ones, takes one
    optimiser step on the distillation loss, and every ``check_every`` steps measures
    KL(teacher‖student) on the ``probe_size`` most recent states. Unpaced, the thread trains
    as fast as it can and takes a core of its own; with ``updates_per_batch=n`` it takes at
    most ``n`` steps per observed batch (unused steps carry over) and then sleeps until the
    next batch, which bounds its share of the CPU when it shares cores with the learner and
    the actors. A student whose KL is at most
    ``kl_bound`` (use the Monitor's bound) is published to :attr:`step`.

    Ship it through the compression ladder: make ``PolicyCompressor([distiller.step, ...])`` a
    level of the :class:`~torchrl_seer.collectors.CompressionMonitor`, which then steps the
    actors up to the student when it stays within its recovery bound and back down when it
    diverges. Before the first publication :attr:`step` holds the untrained student, whose
    divergence keeps the Monitor off that level.

    Threads: TorchRL and tensordict keep the exploration type (``set_exploration_type``) in one
    process-wide variable that every loss's ``forward`` and a ``ProbabilisticActor``'s
    ``get_dist`` set and restore. The thread sets it nowhere: it computes its losses outside the
    loss-call context (:meth:`~torchrl_seer.objectives.DistillationLoss.losses`) and reads both
    policies' distributions with
    :func:`~torchrl_seer.modules.distributions.policy_distribution`, so a policy acting in
    another thread of the process keeps its mode. Teacher or student policies that are not a
    deterministic network followed by one probabilistic module are read through their own
    ``get_dist``, which may set that mode for the duration of a call.

    Args:
        teacher: the learner's probabilistic policy (it is copied, never modified).
        student: the smaller probabilistic policy to train (same input keys); the thread trains
            this object.

    Keyword Args:
        kl_bound (float): publication bound on KL(teacher‖student), in nats.
        lr (float): the student's Adam learning rate. Defaults to ``1e-3``.
        batch_size (int): states per student update. Defaults to ``256``.
        capacity (int): most recent states kept. Defaults to ``4096``.
        check_every (int): student updates between divergence checks. Defaults to ``20``.
        probe_size (int): most recent states a check measures. Defaults to ``256``.
        seed (int): seed of the thread's state sampling. Defaults to ``0``.
        updates_per_batch (int, optional): student steps allowed per :meth:`observe` call;
            ``None`` (the default) trains without pause.

    Examples:
        >>> import time
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor
        >>> from torchrl_seer.collectors import PolicyCompressor
        >>> def actor(width):
        ...     return ProbabilisticActor(
        ...         TensorDictModule(MLP(in_features=4, out_features=2, num_cells=[width]),
        ...                          in_keys=["observation"], out_keys=["logits"]),
        ...         in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> teacher = actor(64)
        >>> distiller = AsyncDistiller(teacher, actor(8), kl_bound=0.05, check_every=5)
        >>> distiller.start()
        >>> distiller.observe(TensorDict(observation=torch.randn(512, 4), batch_size=[512]),
        ...                   teacher)
        >>> deadline = time.monotonic() + 60
        >>> while distiller.publications == 0 and time.monotonic() < deadline:
        ...     time.sleep(0.05)
        >>> distiller.stop()
        >>> distiller.publications > 0 and distiller.published_kl <= 0.05
        True
        >>> PolicyCompressor([distiller.step]).spec()
        'distill'
    """

    def __init__(
        self,
        teacher: TensorDictModuleBase,
        student: TensorDictModuleBase,
        *,
        kl_bound: float,
        lr: float = 1e-3,
        batch_size: int = 256,
        capacity: int = 4096,
        check_every: int = 20,
        probe_size: int = 256,
        seed: int = 0,
        updates_per_batch: int | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("capacity", capacity),
                            ("check_every", check_every), ("probe_size", probe_size)):  # fmt: skip
            if value < 1:
                raise ValueError(f"AsyncDistiller: {name} must be >= 1, got {value}")
        if updates_per_batch is not None and updates_per_batch < 1:
            raise ValueError(
                f"AsyncDistiller: updates_per_batch must be >= 1 or None, got {updates_per_batch}"
            )
        if kl_bound <= 0:
            raise ValueError(f"AsyncDistiller: kl_bound must be > 0, got {kl_bound}")
        self.teacher = copy.deepcopy(teacher).eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.student = student
        self.loss = DistillationLoss(self.teacher, student)
        self.optimizer = torch.optim.Adam(student.parameters(), lr=lr)
        self.kl_bound = kl_bound
        self.batch_size = batch_size
        self.check_every = check_every
        self.probe_size = probe_size
        self.step = Distill(self._frozen_student())
        self.updates = 0
        self.publications = 0
        self.published_kl = float("nan")
        self.last_kl = float("nan")
        self.capacity = capacity
        self.updates_per_batch = updates_per_batch
        self._allowed_updates = 0  # steps left before the next batch (paced threads only)
        self._in_keys = list(teacher.in_keys)
        self._batches: deque[TensorDictBase] = deque()  # flat batches of states, oldest first
        self._held = 0
        self._lock = threading.Lock()
        self._new_data = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._generator = torch.Generator().manual_seed(seed)
        self._thread: threading.Thread | None = None

    def _frozen_student(self) -> TensorDictModuleBase:
        frozen = copy.deepcopy(self.student).eval()
        for param in frozen.parameters():
            param.requires_grad_(False)
        return frozen

    def observe(self, batch: TensorDictBase, teacher: TensorDictModuleBase) -> None:
        """Hands the thread a batch's states and the learner's current weights.

        Args:
            batch: transitions of any batch shape with the policy's input keys.
            teacher: the learner's policy (its weights are copied into the private teacher).

        Raises:
            RuntimeError: if the thread stopped on an error (re-raised here).
        """
        self._raise_if_failed()
        states = batch.select(*self._in_keys).reshape(-1).clone()
        with self._lock:
            self._batches.append(states)
            self._held += states.numel()
            while self._held - self._batches[0].numel() >= self.capacity:
                self._held -= self._batches.popleft().numel()
            if self.updates_per_batch is not None:
                self._allowed_updates += self.updates_per_batch
            with torch.no_grad():
                for mine, theirs in zip(
                    self.teacher.parameters(), teacher.parameters(), strict=True
                ):
                    mine.copy_(theirs)
        self._new_data.set()

    def start(self) -> None:
        """Starts the background thread (a daemon: it never keeps the process alive)."""
        if self._thread is not None:
            raise RuntimeError("AsyncDistiller.start() was already called")
        self._exploration_type = exploration_type()
        self._thread = threading.Thread(target=self._run, name="AsyncDistiller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread and waits for it; re-raises an error it stopped on."""
        self._stop.set()
        self._new_data.set()
        if self._thread is not None:
            self._thread.join()
            # undo what an interleaving of this thread's and the learner's contexts left behind
            set_exploration_type(self._exploration_type).__enter__()
        self._raise_if_failed()

    def stats(self) -> dict[str, Any]:
        """Student updates, publications, and the last measured and last published KL."""
        return {
            "updates": self.updates,
            "publications": self.publications,
            "last_kl": self.last_kl,
            "published_kl": self.published_kl,
        }

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("the AsyncDistiller thread stopped on an error") from self._error

    def _held_states(self) -> TensorDictBase | None:
        with self._lock:
            return torch.cat(list(self._batches)) if self._batches else None

    def _sample(self) -> TensorDictBase | None:
        states = self._held_states()
        if states is None:
            return None
        return states[torch.randint(states.numel(), (self.batch_size,), generator=self._generator)]

    def _may_update(self) -> bool:
        """Takes one step from the pace's allowance; clears the wake-up event when none is left."""
        with self._lock:
            if self.updates_per_batch is None:
                return True
            if self._allowed_updates > 0:
                self._allowed_updates -= 1
                return True
            # observe() adds steps under the lock, then sets the event; stop() sets the stop
            # flag, then the event: never clear a wake-up that stop() already sent
            if not self._stop.is_set():
                self._new_data.clear()
            return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._may_update():
                    self._new_data.wait()
                    continue
                states = self._sample()
                if states is None:
                    self._new_data.wait()
                    continue
                with self._lock:  # the learner refreshes the teacher's weights under this lock
                    # not self.loss(states): a loss's forward sets the process-wide
                    # exploration type, which races with the learner thread's losses
                    loss = sum(self.loss.losses(states).values())
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.updates += 1
                if self.updates % self.check_every == 0:
                    self._check()
        except BaseException as error:  # re-raised in the learner by observe()/stop()
            self._error = error

    def _check(self) -> None:
        states = self._held_states()
        assert states is not None  # checks follow updates, which need states
        probe = states[-self.probe_size :]
        with self._lock:
            kl = policy_divergence(self.teacher, self.student, probe)["kl"]
        self.last_kl = kl
        if kl <= self.kl_bound:
            self.step.student = self._frozen_student()  # one reference swap: packs see either
            self.published_kl = kl
            self.publications += 1
