"""Saving and restoring a recipe's whole state: models, optimizers, hooks, replay buffers, RNGs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torchrl.data import ReplayBuffer

from torchrl_seer.trainers.helpers.seeding import get_rng_state, set_rng_state

__all__ = ["FrameSegment", "RunCheckpointer", "frame_segments"]

_STATE_FILE = "state.pt"


class FrameSegment(NamedTuple):
    """Collector frames ``[start, stop)`` collected by one collector, seeded with ``seed``."""

    start: int
    stop: int
    seed: int


def frame_segments(
    total_frames: int, interval: int, *, start: int = 0, seed: int = 0
) -> Iterator[FrameSegment]:
    """Splits a run into checkpoint intervals, each collected by a fresh, freshly seeded collector.

    A checkpoint is taken at the end of every segment. Each segment starts new episodes with
    the seed ``seed + 10_000 * index``, so a run resumed from a checkpoint collects exactly
    what an uninterrupted run collects (TorchRL collectors cannot save an environment in the
    middle of an episode). Choose ``interval`` much longer than an episode.

    Args:
        total_frames (int): collector frames of the whole run.
        interval (int): collector frames between checkpoints; ``0`` makes one segment.

    Keyword Args:
        start (int, optional): frames already collected (a resumed run). Defaults to ``0``.
        seed (int, optional): the run's seed. Defaults to ``0``.

    Yields:
        :class:`FrameSegment` tuples.

    Examples:
        >>> from torchrl_seer.trainers.helpers import frame_segments
        >>> [tuple(s) for s in frame_segments(250, 100, start=100, seed=1)]
        [(100, 200, 10001), (200, 250, 20001)]
    """
    if interval <= 0:
        if start < total_frames:
            yield FrameSegment(start, total_frames, seed)
        return
    while start < total_frames:
        stop = min((start // interval + 1) * interval, total_frames)
        yield FrameSegment(start, stop, seed + 10_000 * (start // interval))
        start = stop


class RunCheckpointer:
    """Writes and reads one checkpoint folder of a run, replaced atomically at every save.

    A checkpoint holds the collector frames reached, the ``state_dict()`` of every object in
    ``state`` (models, optimizers, loss scalers, hooks, exploration modules, ...), every replay
    buffer (through ``ReplayBuffer.dumps``, so our storages' checkpointers are used), the
    generators of python, numpy and torch, the TorchRL logger's state, and ``extra`` (any
    picklable record, e.g. the report's data).

    Objects are restored in the order of ``state``, then the replay buffers: put a
    :class:`~torchrl_seer.trainers.FreezeEncoderHook` before the optimizers it edits, and
    restore it before its replay buffer (a frozen hook first installs the latent storage).

    Args:
        directory (str or Path): the checkpoint folder (created at the first save).

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> from torchrl_seer.trainers.helpers import RunCheckpointer
        >>> net = torch.nn.Linear(2, 2)
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(10))
        >>> _ = rb.extend(TensorDict({"obs": torch.arange(4)}, [4]))
        >>> ckpt = RunCheckpointer(tempfile.mkdtemp())
        >>> ckpt.save(4, state={"net": net}, replay_buffers={"replay": rb}, extra={"note": 1})
        >>> net2, rb2 = torch.nn.Linear(2, 2), ReplayBuffer(storage=LazyTensorStorage(10))
        >>> saved = ckpt.load(state={"net": net2}, replay_buffers={"replay": rb2})
        >>> saved["frames"], saved["extra"], len(rb2)
        (4, {'note': 1}, 4)
        >>> bool((net2.weight == net.weight).all())
        True
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def exists(self) -> bool:
        """Whether a complete checkpoint is there."""
        return (self.directory / _STATE_FILE).is_file()

    def save(
        self,
        frames: int,
        *,
        state: Mapping[str, Any],
        replay_buffers: Mapping[str, ReplayBuffer] | None = None,
        extra: Any = None,
        logger: Any = None,
    ) -> None:
        """Writes the checkpoint (into a temporary folder, then renamed over the last one).

        Args:
            frames (int): collector frames reached.

        Keyword Args:
            state (mapping): name -> object with ``state_dict()``.
            replay_buffers (mapping, optional): name -> replay buffer.
            extra (optional): any picklable record.
            logger (optional): a TorchRL logger whose ``state_dict()`` is saved.
        """
        tmp = self.directory.with_name(self.directory.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, rb in (replay_buffers or {}).items():
            rb.dumps(tmp / f"replay_buffer_{name}")
        payload = {
            "frames": int(frames),
            "state": {name: obj.state_dict() for name, obj in state.items()},
            "rng": get_rng_state(),
            "extra": extra,
            "logger": logger.state_dict() if logger is not None else None,
        }
        torch.save(payload, tmp / _STATE_FILE)
        old = self.directory.with_name(self.directory.name + ".old")
        if self.directory.exists():
            self.directory.rename(old)
        tmp.rename(self.directory)
        if old.exists():
            shutil.rmtree(old)

    def read(self) -> dict[str, Any]:
        """The saved payload (frames, state dicts, RNG states, extra, logger state)."""
        if not self.exists():
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        return torch.load(self.directory / _STATE_FILE, weights_only=False)

    def load(
        self,
        *,
        state: Mapping[str, Any],
        replay_buffers: Mapping[str, ReplayBuffer] | None = None,
    ) -> dict[str, Any]:
        """Restores every object, the replay buffers and the generators; returns the payload.

        Keyword Args:
            state (mapping): name -> object with ``load_state_dict()``; the names saved.
            replay_buffers (mapping, optional): name -> replay buffer to ``loads`` into.

        Returns:
            The payload: ``frames``, ``extra`` and ``logger`` among others.

        Raises:
            KeyError: the checkpoint lacks one of the names asked for.
        """
        payload = self.read()
        missing = [name for name in state if name not in payload["state"]]
        missing += [
            f"replay_buffer_{name}"
            for name in replay_buffers or {}
            if not (self.directory / f"replay_buffer_{name}").is_dir()
        ]
        if missing:
            raise KeyError(f"the checkpoint in {self.directory} has no {missing}.")
        for name, obj in state.items():
            obj.load_state_dict(payload["state"][name])
        for name, rb in (replay_buffers or {}).items():
            rb.loads(self.directory / f"replay_buffer_{name}")
        set_rng_state(payload["rng"])
        return payload
