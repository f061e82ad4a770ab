"""Frame-id index of stacked observations, with repeats proven by exact equality.

A transition holds an observation stack ``o_0 .. o_{F-1}`` and a next-observation stack
``n_0 .. n_{F-1}`` (``F`` = frame stack). :class:`FrameStackIndex` keeps, per storage slot,
the ``2F`` frame ids of those frames in a
:class:`~torchrl_seer.data.frame_id_table.FrameIdTable` (the newest id and padding counts
when the frames are consecutive in their stream, the ids verbatim otherwise), and the frames
themselves once each in a :class:`~torchrl_seer.data.chunked_frame_pool.ChunkedFramePool`.

A frame reuses the id of another only when both are proven bit-identical:

* ``o_k == o_{k-1}`` (stack padding at an episode start);
* ``n_k == o_{k+1}`` (the next stack is the observation stack shifted by one);
* ``n_{F-1} == n_{F-2}`` (or ``n_0 == o_0`` when ``F == 1``);
* the whole stack ``o`` equals the next stack ``n`` of a *predecessor* transition, found by a
  fingerprint of its newest frame among the earlier rows of the batch and the last
  transition of each open stream, then verified frame by frame;
* any other frame equals an earlier frame of the batch or a frame of an open stream's last
  stack, found by its fingerprint and verified (``MultiStep`` next stacks, static screens).

Everything else is stored anew, so the index never returns data that was not written. The
true final next observation of a terminated or truncated step is its own ``n_{F-1}``.

New frames go to the open chunk of their *stream*: the chain of transitions linked by
predecessors. A stream whose last transition is done becomes an orphan whose chunk the
next episode start adopts, so consecutive episodes of one environment share chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchrl_seer.data.chunked_frame_pool import ChunkedFramePool
from torchrl_seer.data.frame_codecs import FrameCodec
from torchrl_seer.data.frame_id_table import FrameIdTable

__all__ = ["FrameStackIndex"]

_INT32_MAX = 2**31 - 1
# words of the newest frame hashed to find predecessor candidates (a strided sample)
_FINGERPRINT_WORDS = 128


@dataclass(eq=False)
class _Stream:
    """An open chunk and the last next-stack written to it (the *tail*)."""

    slot: int = -1
    tail_ids: torch.Tensor | None = None
    tail_words: torch.Tensor | None = None
    tail_fingerprint: int | None = None
    last_used: int = 0
    ended: bool = False


def _fingerprint(frame_words: Any) -> int:
    """Hash of a strided sample of one frame's words: finds candidates, proves nothing."""
    stride = max(1, frame_words.shape[-1] // _FINGERPRINT_WORDS)
    return hash(frame_words[::stride].tobytes())


def _words(frames: torch.Tensor) -> torch.Tensor:
    """Views ``[B, F, *frame_shape]`` frames as ``[B, F, words]`` for fast exact comparison."""
    flat = frames.reshape(*frames.shape[:2], -1)
    return flat.view(torch.int64) if flat.shape[-1] % 8 == 0 else flat


def _match_equal_frames(
    parent: torch.Tensor,
    external: torch.Tensor,
    obs_words: Any,
    next_words: Any,
    streams: Sequence[_Stream],
) -> None:
    """Points each frame still to be stored at a proven-equal frame already at hand.

    Catches the repeats the stack relations above do not: a ``MultiStep`` next stack (the
    observation ``n`` steps later) shares all but its newest frame with the previous row's
    next stack, a batch's first stacks share frames with the open streams' last stacks, and
    static screens repeat whole frames. Candidates are earlier frames of the batch and the
    frames of the streams' last stacks, found by fingerprint; each is proven by an exact
    comparison. Edits ``parent`` (earlier position) or ``external`` (stored id) in place.
    """
    stack = obs_words.shape[1]
    seen: dict[int, tuple[int, int, Any]] = {}  # fingerprint -> (position or -1, id, words)
    for stream in streams:
        if stream.tail_ids is not None and stream.tail_words is not None:
            tail_words = stream.tail_words.numpy()
            for frame_id, words in zip(stream.tail_ids.tolist(), tail_words, strict=True):
                seen.setdefault(_fingerprint(words), (-1, frame_id, words))
    roots = torch.nonzero((parent == torch.arange(parent.numel())) & (external < 0))
    for position in roots.flatten().tolist():
        row, col = divmod(position, 2 * stack)
        words = obs_words[row, col] if col < stack else next_words[row, col - stack]
        key = _fingerprint(words)
        earlier = seen.get(key)
        if earlier is not None and np.array_equal(earlier[2], words):
            if earlier[0] >= 0:
                parent[position] = earlier[0]
            else:
                external[position] = earlier[1]
        else:
            seen[key] = (position, -1, words)


class FrameStackIndex:
    """Per-slot frame ids of observation and next-observation stacks.

    Args:
        max_size: number of storage slots.
        frame_shape: the shape of one frame.

    Keyword Args:
        frame_stack: frames per stack ``F``.
        codec: the chunk codec.
        chunk_len: frames per chunk.
        max_streams: bound on open streams; the least recently used beyond it are sealed.
        cache_bytes: bound on the decoded-chunk cache.
        num_threads: decoding threads.
        device: where :meth:`read` returns frames.
        device_cache_bytes: bound on the decoded chunks kept on ``device``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.data.frame_codecs import make_frame_codec
        >>> index = FrameStackIndex(
        ...     8, (4, 4), frame_stack=2, codec=make_frame_codec("zstd"), chunk_len=4
        ... )
        >>> f = torch.arange(4, dtype=torch.uint8).view(4, 1, 1).expand(4, 4, 4)
        >>> obs = torch.stack([f[[0, 0]], f[[0, 1]], f[[1, 2]]])  # 3 steps of 2-frame stacks
        >>> nxt = torch.stack([f[[0, 1]], f[[1, 2]], f[[2, 3]]])
        >>> index.write(torch.arange(3), obs, nxt, torch.zeros(3, dtype=torch.bool))
        >>> index.num_frames()
        4
        >>> back_obs, back_next = index.read(torch.arange(3))
        >>> bool((back_obs == obs).all() and (back_next == nxt).all())
        True
    """

    def __init__(
        self,
        max_size: int,
        frame_shape: Sequence[int],
        *,
        frame_stack: int,
        codec: FrameCodec,
        chunk_len: int = 64,
        max_streams: int = 64,
        cache_bytes: int = 4 * 2**20,
        num_threads: int = 0,
        device: torch.device | str = "cpu",
        device_cache_bytes: int = 0,
    ) -> None:
        self.max_size = int(max_size)
        self.frame_stack = int(frame_stack)
        self.max_streams = int(max_streams)
        self.pool = ChunkedFramePool(
            frame_shape,
            codec=codec,
            chunk_len=chunk_len,
            cache_bytes=cache_bytes,
            num_threads=num_threads,
            device=device,
            device_cache_bytes=device_cache_bytes,
        )
        self.table = FrameIdTable(self.max_size, frame_stack=self.frame_stack)
        self._streams: list[_Stream] = []
        self._tick = 0

    # ------------------------------------------------------------------ writing
    def write(
        self,
        slots: torch.Tensor,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        done: torch.Tensor,
    ) -> None:
        """Stores a batch of transitions' stacks at storage slots.

        Args:
            slots: ``int64`` storage slots ``[B]`` (a repeated slot keeps its last row).
            obs: observation stacks ``[B, F, *frame_shape]``, contiguous ``uint8``.
            next_obs: next-observation stacks, same shape.
            done: ``[B]`` flags ending each row's episode.
        """
        self._tick += 1
        num_rows, stack = obs.shape[0], self.frame_stack
        width = 2 * stack
        obs_frames = obs.reshape(num_rows * stack, -1)
        next_frames = next_obs.reshape(num_rows * stack, -1)

        obs_words, next_words = _words(obs), _words(next_obs)
        pred_row, pred_stream = self._find_predecessors(obs_words, next_words)

        # Each frame position points at an earlier position holding the same frame.
        pos = torch.arange(num_rows * width).view(num_rows, width)
        parent = pos.clone()
        external = torch.full((num_rows, width), -1, dtype=torch.int64)
        # exact comparisons in NumPy: single-threaded, no intra-op thread synchronisation
        obs_np, next_np = obs_words.numpy(), next_words.numpy()
        if stack > 1:
            # stack padding: only rows whose stack no predecessor provides
            fresh = [i for i, p in enumerate(pred_row) if p < 0 and i not in pred_stream]
            padded = np.zeros((num_rows, stack - 1), dtype=bool)
            padded[fresh] = (obs_np[fresh, 1:] == obs_np[fresh, :-1]).all(2)
            same = torch.from_numpy(padded)
            parent[:, 1:stack] = torch.where(same, pos[:, : stack - 1], parent[:, 1:stack])
            same = torch.from_numpy((next_np[:, :-1] == obs_np[:, 1:]).all(2))
            parent[:, stack:-1] = torch.where(same, pos[:, 1:stack], parent[:, stack:-1])
            same = torch.from_numpy((next_np[:, -1] == next_np[:, -2]).all(1))
        else:
            same = torch.from_numpy((next_np[:, 0] == obs_np[:, 0]).all(1))
        parent[:, -1] = torch.where(same, pos[:, -2], parent[:, -1])
        rows = torch.tensor([i for i, p in enumerate(pred_row) if p >= 0], dtype=torch.int64)
        if rows.numel():
            preds = torch.tensor([pred_row[i] for i in rows.tolist()], dtype=torch.int64)
            parent[rows, :stack] = pos[preds, stack:]
        for row, stream in pred_stream.items():
            parent[row, :stack] = pos[row, :stack]
            external[row, :stack] = stream.tail_ids  # type: ignore[assignment]
        parent = parent.view(-1)
        external = external.view(-1)
        _match_equal_frames(parent, external, obs_np, next_np, self._streams)
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped

        row_streams = self._assign_streams(pred_row, pred_stream, done)

        # Allocate the new frames, grouped by stream, in time order.
        is_new = (parent == torch.arange(parent.numel())) & (external < 0)
        new_pos = torch.nonzero(is_new).flatten()
        ids = external.clone()
        to_seal: list[int] = []
        if new_pos.numel():
            stream_ids = {id(s): n for n, s in enumerate(dict.fromkeys(row_streams))}
            owner = torch.tensor([stream_ids[id(s)] for s in row_streams], dtype=torch.int64)
            order = torch.argsort(owner[new_pos // width], stable=True)
            new_pos = new_pos[order]
            new_rows, new_cols = new_pos // width, new_pos % width
            from_obs = new_cols < stack
            frames = torch.empty((new_pos.numel(), obs_frames.shape[1]), dtype=torch.uint8)
            frames[from_obs] = obs_frames[new_rows[from_obs] * stack + new_cols[from_obs]]
            frames[~from_obs] = next_frames[
                new_rows[~from_obs] * stack + new_cols[~from_obs] - stack
            ]
            frames = frames.view(-1, *self.pool.frame_shape)
            owners = owner[new_rows].tolist()
            streams = list(dict.fromkeys(row_streams))
            start = 0
            while start < len(owners):
                stream = streams[owners[start]]
                stop = start
                while stop < len(owners) and owners[stop] == owners[start]:
                    stop += 1
                ids[new_pos[start:stop]] = self._append(stream, frames[start:stop], to_seal)
                start = stop
        ids = ids[parent].view(num_rows, width)

        self._commit(slots, ids, next_words, row_streams, done, to_seal)

    def _find_predecessors(
        self, obs_words: torch.Tensor, next_words: torch.Tensor
    ) -> tuple[list[int], dict[int, _Stream]]:
        """Finds, per row, an earlier row or a stream tail whose next stack equals its stack.

        Candidates come from a fingerprint of the newest frame; each is then proven by an
        exact comparison of the whole stack.
        """
        num_rows = obs_words.shape[0]
        newest_obs = obs_words[:, -1].numpy()
        newest_next = next_words[:, -1].numpy()
        tails = {
            s.tail_fingerprint: (s, s.tail_words)
            for s in self._streams
            if s.tail_fingerprint is not None and s.tail_words is not None
        }
        latest: dict[int, int] = {}
        pred_row = [-1] * num_rows
        pred_stream: dict[int, _Stream] = {}
        for row in range(num_rows):
            key = _fingerprint(newest_obs[row])
            earlier = latest.get(key)
            if earlier is not None and torch.equal(obs_words[row], next_words[earlier]):
                pred_row[row] = earlier
            else:
                tail = tails.get(key)
                if tail is not None and torch.equal(obs_words[row], tail[1]):
                    pred_stream[row] = tail[0]
            latest[_fingerprint(newest_next[row])] = row
        return pred_row, pred_stream

    def _assign_streams(
        self, pred_row: list[int], pred_stream: dict[int, _Stream], done: torch.Tensor
    ) -> list[_Stream]:
        """Gives each row the stream of its predecessor, or an orphaned or new stream."""
        row_streams: list[_Stream] = []
        orphans = [s for s in self._streams if s.ended]
        for row, (earlier, is_done) in enumerate(zip(pred_row, done.tolist(), strict=True)):
            if earlier >= 0:
                stream = row_streams[earlier]
            elif row in pred_stream:
                stream = pred_stream[row]
            else:
                stream = self._adopt_orphan(orphans)
            stream.ended = bool(is_done)
            if stream.ended:
                orphans.append(stream)
            stream.last_used = self._tick
            row_streams.append(stream)
        return row_streams

    def _adopt_orphan(self, orphans: list[_Stream]) -> _Stream:
        """Returns the latest stream whose episode ended (still ended), or a new stream."""
        while orphans:
            candidate = orphans.pop()
            if candidate.ended:
                return candidate
        stream = _Stream()
        self._streams.append(stream)
        return stream

    def _append(self, stream: _Stream, frames: torch.Tensor, to_seal: list[int]) -> torch.Tensor:
        parts = []
        start = 0
        while start < frames.shape[0]:
            if stream.slot < 0 or self.pool.space(stream.slot) == 0:
                if stream.slot >= 0:
                    to_seal.append(stream.slot)
                stream.slot = self.pool.open_chunk()
                if (stream.slot + 1) * self.pool.chunk_len > _INT32_MAX:
                    raise RuntimeError("frame ids exceed the int32 range of the index table")
            take = min(self.pool.space(stream.slot), frames.shape[0] - start)
            parts.append(self.pool.append(stream.slot, frames[start : start + take]))
            start += take
        return torch.cat(parts)

    def _commit(
        self,
        slots: torch.Tensor,
        ids: torch.Tensor,
        next_words: torch.Tensor,
        row_streams: list[_Stream],
        done: torch.Tensor,
        to_seal: list[int],
    ) -> None:
        """Writes the table rows and stream tails, then moves the reference counts."""
        stack = self.frame_stack
        keep = torch.arange(slots.numel())
        unique_slots, inverse = torch.unique(slots, return_inverse=True)
        if unique_slots.numel() != slots.numel():
            keep = torch.full((unique_slots.numel(),), -1, dtype=torch.int64).scatter_reduce(
                0, inverse, keep, reduce="amax"
            )
        target = slots[keep]
        new_refs = [ids[keep].reshape(-1)]
        old_refs = [self.table.rows(target).reshape(-1)]
        last_row = {id(s): row for row, s in enumerate(row_streams)}
        for stream in {id(s): s for s in row_streams}.values():
            row = last_row[id(stream)]
            if stream.tail_ids is not None:
                old_refs.append(stream.tail_ids)
            if bool(done[row]):
                stream.tail_ids = stream.tail_words = stream.tail_fingerprint = None
            else:
                stream.tail_ids = ids[row, stack:].clone()
                stream.tail_words = next_words[row].clone()
                stream.tail_fingerprint = _fingerprint(stream.tail_words[-1].numpy())
                new_refs.append(stream.tail_ids)
        self.table.assign(target, ids[keep])
        self.pool.incref(torch.cat(new_refs))
        self.pool.decref(torch.cat(old_refs))
        for slot in to_seal:
            self.pool.seal(slot)
        self._bound_streams()
        self.pool.release_encoder()

    def _bound_streams(self) -> None:
        if len(self._streams) <= self.max_streams:
            return
        self._streams.sort(key=lambda s: s.last_used)
        excess = len(self._streams) - self.max_streams
        for stream in self._streams[:excess]:
            self._close(stream)
        self._streams = self._streams[excess:]

    def _close(self, stream: _Stream) -> None:
        if stream.tail_ids is not None:
            self.pool.decref(stream.tail_ids)
        stream.tail_ids = stream.tail_words = stream.tail_fingerprint = None
        if stream.slot >= 0:
            self.pool.seal(stream.slot)
            stream.slot = -1

    def flush(self) -> None:
        """Seals every open chunk and forgets the stream tails."""
        for stream in self._streams:
            self._close(stream)
        self._streams = []
        self.pool.release_encoder()

    def relocate(self, slots: torch.Tensor, capacity: int) -> None:
        """Keeps the rows of ``slots`` (in that order) in rows ``0..n-1`` of ``capacity`` rows.

        The frames of dropped rows lose their references (chunks nobody uses are freed).

        Args:
            slots: distinct ``int64`` slots, in the order they take.
            capacity: the new number of slots.
        """
        self.pool.decref(self.table.relocate(slots, capacity))
        self.max_size = int(capacity)

    # ------------------------------------------------------------------ reading
    def read(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the observation and next-observation stacks of storage slots.

        Args:
            slots: ``int64`` slots ``[n]``, all written.

        Returns:
            Two ``uint8`` tensors ``[n, F, *frame_shape]``, on the pool's device.
        """
        ids = self.table.rows(slots)
        if bool((ids < 0).any()):
            raise IndexError("reading a storage slot that was never written")
        obs, next_obs = self.pool.gather([ids[:, : self.frame_stack], ids[:, self.frame_stack :]])
        return obs, next_obs

    def num_frames(self) -> int:
        """Number of distinct frame ids referenced by the table."""
        ids = self.table.all_rows()
        return int(torch.unique(ids[ids >= 0]).numel())

    def nbytes(self) -> int:
        """Bytes held: table, frame pool (payloads, open chunks, cache) and stream tails."""
        tails = sum(
            s.tail_words.numel() * s.tail_words.element_size() + s.tail_ids.numel() * 8
            for s in self._streams
            if s.tail_ids is not None and s.tail_words is not None
        )
        return self.table.nbytes() + self.pool.nbytes() + tails

    def clear(self) -> None:
        """Forgets every frame."""
        self._streams = []
        self.table.clear()
        self.pool.clear()

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Returns the frame-id table, the encoded chunks and the open streams.

        A stream is saved as its open chunk's slot, the frame ids of its tail and its
        bookkeeping; the tail's frames are in the chunks already.
        """
        streams = [
            {
                "slot": stream.slot,
                "tail_ids": (
                    stream.tail_ids.clone()
                    if stream.tail_ids is not None
                    else torch.zeros(0, dtype=torch.int64)
                ),
                "last_used": stream.last_used,
                "ended": stream.ended,
            }
            for stream in self._streams
        ]
        state = {
            "table": self.table.state_dict(),
            "pool": self.pool.state_dict(),
            "streams": streams,
            "tick": self._tick,
        }
        self.pool.release_encoder()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`: the table, the chunks (open ones open) and the streams.

        The restored index holds the same bytes as the saved one and continues its streams:
        the next writes share frames with the last ones saved, exactly as they would have
        without the checkpoint. A state dict without streams (checkpoint formats 2 and 3)
        restores every chunk sealed and restarts the streams empty. A ``"table"`` given as one
        ``[max_size, 2F]`` ``int32`` tensor of ids (the layout of checkpoint format 2) is
        converted.
        """
        table = FrameIdTable(self.max_size, frame_stack=self.frame_stack)
        if isinstance(state_dict["table"], torch.Tensor):
            table.load_verbatim(state_dict["table"])
        else:
            table.load_state_dict(state_dict["table"])
        saved_streams = state_dict.get("streams", [])
        tails = [entry["tail_ids"].to(torch.int64) for entry in saved_streams]
        self.pool.load_state_dict(
            state_dict["pool"], references=torch.cat([table.all_rows().reshape(-1), *tails])
        )
        streams = []
        for entry, tail_ids in zip(saved_streams, tails, strict=True):
            slot = int(entry["slot"])
            if slot >= 0 and not self.pool.is_open(slot):
                raise ValueError(f"corrupted checkpoint: stream chunk {slot} is not open")
            stream = _Stream(
                slot=slot, last_used=int(entry["last_used"]), ended=bool(entry["ended"])
            )
            if tail_ids.numel():
                (frames,) = self.pool.gather([tail_ids.view(1, -1)])
                stream.tail_ids = tail_ids.clone()
                stream.tail_words = _words(frames.cpu())[0].clone()
                stream.tail_fingerprint = _fingerprint(stream.tail_words[-1].numpy())
            streams.append(stream)
        self.pool.clear_cache()
        self._streams = streams
        self._tick = int(state_dict.get("tick", 0))
        self.table = table
