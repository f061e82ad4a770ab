"""Per-slot frame ids of observation and next-observation stacks, stored compactly.

A transition's ``2F`` frame ids (``F`` = frame stack) are, in the common case, the ids of
consecutive frames of one stream: the observation stack ``a, a, .., a, a+1, .., N`` (the
first frame repeated ``p`` times at an episode start, ``N`` the newest frame) and the next
stack the same shape ending at ``N + s`` (``s = 1`` for one-step transitions). Such a row
is stored as the newest id ``N`` (``int32``), the step ``s`` (``int8``) and both padding
counts packed in one ``uint8``: 6 bytes instead of ``8 F``.

Every other row (a frame reused out of order, a stack straddling two chunks whose ids are
not adjacent, a ``MultiStep`` next stack more than 127 frames ahead, a frame stack above
15) is an *exception*: its ``2F`` ids are kept verbatim in an exception table and the row
points at them. Reads rebuild each row's ids exactly; a row is stored compactly only when
the rebuild equals the ids written.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FrameIdTable"]

# padding codes above every packed pair of padding counts (at most 15 * 15 - 1 = 224)
_EXCEPTION = 254
_UNWRITTEN = 255
_MAX_COMPACT_STACK = 15


class FrameIdTable:
    """Frame ids of ``max_size`` rows of ``2F`` ids, as newest id + padding or verbatim.

    Args:
        max_size: number of rows (storage slots).

    Keyword Args:
        frame_stack: frames per stack ``F``.

    Examples:
        >>> import torch
        >>> table = FrameIdTable(4, frame_stack=3)
        >>> ids = torch.tensor([[7, 7, 8, 7, 8, 9], [3, 9, 4, 9, 4, 5]])
        >>> table.assign(torch.tensor([0, 2]), ids)
        >>> table.num_exceptions()  # the second row is not consecutive
        1
        >>> table.rows(torch.tensor([2, 0, 1]))
        tensor([[ 3,  9,  4,  9,  4,  5],
                [ 7,  7,  8,  7,  8,  9],
                [-1, -1, -1, -1, -1, -1]])
    """

    def __init__(self, max_size: int, *, frame_stack: int) -> None:
        self.max_size = int(max_size)
        self.frame_stack = int(frame_stack)
        self.newest = torch.full((self.max_size,), -1, dtype=torch.int32)
        self.next_step = torch.zeros(self.max_size, dtype=torch.int8)
        self.padding = torch.full((self.max_size,), _UNWRITTEN, dtype=torch.uint8)
        # rows [0, _num_exceptions) of `exceptions` were handed out; some may be dead
        self.exceptions = torch.empty((0, 2 * self.frame_stack), dtype=torch.int32)
        self._num_exceptions = 0

    # ------------------------------------------------------------------ reading
    def _expand(
        self, newest: torch.Tensor, step: torch.Tensor, padding: torch.Tensor
    ) -> torch.Tensor:
        """The ``[n, 2F]`` ids of compact rows (meaningless for other padding codes)."""
        stack = self.frame_stack
        last = torch.arange(stack) - (stack - 1)  # k - (F - 1)
        obs_pad = (padding % stack)[:, None]
        next_pad = (padding // stack)[:, None]
        obs = newest[:, None] + torch.maximum(last, obs_pad - (stack - 1))
        nxt = (newest + step)[:, None] + torch.maximum(last, next_pad - (stack - 1))
        return torch.cat([obs, nxt], 1)

    def rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Returns the ``int64`` ids ``[n, 2F]`` of rows ``slots`` (``-1`` where unwritten)."""
        newest = self.newest[slots].to(torch.int64)
        padding = self.padding[slots].to(torch.int64)
        ids = self._expand(newest, self.next_step[slots].to(torch.int64), padding)
        verbatim = padding == _EXCEPTION
        if bool(verbatim.any()):
            ids[verbatim] = self.exceptions[newest[verbatim]].to(torch.int64)
        ids[padding == _UNWRITTEN] = -1
        return ids

    def all_rows(self) -> torch.Tensor:
        """Returns the ids of every row (``-1`` where unwritten)."""
        return self.rows(torch.arange(self.max_size))

    def num_exceptions(self) -> int:
        """Number of written rows stored verbatim."""
        return int((self.padding == _EXCEPTION).sum())

    # ------------------------------------------------------------------ writing
    def assign(self, slots: torch.Tensor, ids: torch.Tensor) -> None:
        """Stores rows of ids.

        Args:
            slots: distinct ``int64`` rows ``[n]``.
            ids: non-negative frame ids ``[n, 2F]`` (any integer dtype within ``int32``).
        """
        stack = self.frame_stack
        ids = ids.to(torch.int64)
        newest = ids[:, stack - 1]
        step = ids[:, -1] - newest
        obs_pad = (ids[:, 1:stack] == ids[:, :1]).sum(1)
        next_pad = (ids[:, stack + 1 :] == ids[:, stack : stack + 1]).sum(1)
        padding = obs_pad + stack * next_pad
        compact = (self._expand(newest, step, padding) == ids).all(1)
        compact &= (step >= -128) & (step <= 127)
        if stack > _MAX_COMPACT_STACK:
            compact[:] = False
        # forget the old rows first, so that making room drops their verbatim ids
        self.padding[slots] = _UNWRITTEN
        newest = newest.clone()
        verbatim = ~compact
        count = int(verbatim.sum())
        if count:
            start = self._reserve(count)
            self.exceptions[start : start + count] = ids[verbatim].to(torch.int32)
            newest[verbatim] = torch.arange(start, start + count)
        self.newest[slots] = newest.to(torch.int32)
        self.next_step[slots] = torch.where(compact, step, 0).to(torch.int8)
        self.padding[slots] = torch.where(compact, padding, _EXCEPTION).to(torch.uint8)

    def _reserve(self, count: int) -> int:
        """Hands out ``count`` exception rows; drops dead rows and grows when full."""
        if self._num_exceptions + count > self.exceptions.shape[0]:
            live = torch.nonzero(self.padding == _EXCEPTION).flatten()
            needed = live.numel() + count
            capacity = self.exceptions.shape[0]
            if needed > capacity // 2:
                capacity = 2 * needed
            table = torch.empty((capacity, 2 * self.frame_stack), dtype=torch.int32)
            table[: live.numel()] = self.exceptions[self.newest[live].to(torch.int64)]
            self.newest[live] = torch.arange(live.numel(), dtype=torch.int32)
            self.exceptions = table
            self._num_exceptions = live.numel()
        start = self._num_exceptions
        self._num_exceptions += count
        return start

    def relocate(self, slots: torch.Tensor, capacity: int) -> torch.Tensor:
        """Keeps rows ``slots`` (in that order) as rows ``0..n-1`` of ``capacity`` rows.

        Args:
            slots: distinct ``int64`` rows, in the order they take.
            capacity: the new number of rows.

        Returns:
            The ``int64`` ids of the dropped rows (``-1`` where unwritten), flattened.
        """
        dropped = torch.ones(self.max_size, dtype=torch.bool)
        dropped[slots] = False
        dropped_ids = self.rows(torch.nonzero(dropped).flatten()).reshape(-1)
        count = slots.numel()
        newest = torch.full((int(capacity),), -1, dtype=torch.int32)
        next_step = torch.zeros(int(capacity), dtype=torch.int8)
        padding = torch.full((int(capacity),), _UNWRITTEN, dtype=torch.uint8)
        newest[:count] = self.newest[slots]
        next_step[:count] = self.next_step[slots]
        padding[:count] = self.padding[slots]
        self.newest, self.next_step, self.padding = newest, next_step, padding
        self.max_size = int(capacity)
        return dropped_ids

    def clear(self) -> None:
        """Forgets every row."""
        self.newest.fill_(-1)
        self.next_step.zero_()
        self.padding.fill_(_UNWRITTEN)
        self.exceptions = torch.empty((0, 2 * self.frame_stack), dtype=torch.int32)
        self._num_exceptions = 0

    def nbytes(self) -> int:
        """Bytes held: the compact rows and the allocated exception table."""
        tensors = (self.newest, self.next_step, self.padding, self.exceptions)
        return sum(t.numel() * t.element_size() for t in tensors)

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Returns copies of the compact rows, the exception rows handed out and the capacity.

        The exception rows are kept as they lie (rows no longer pointed at included) with the
        allocated capacity, so that a restored table holds the same bytes and makes room at
        the same writes as this one.
        """
        return {
            "newest": self.newest.clone(),
            "next_step": self.next_step.clone(),
            "padding": self.padding.clone(),
            "exceptions": self.exceptions[: self._num_exceptions].clone(),
            "exception_capacity": int(self.exceptions.shape[0]),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`.

        Raises:
            ValueError: a tensor has another shape or dtype than this table's, or a row
                points outside the exception table.
        """
        expected = {
            "newest": ((self.max_size,), torch.int32),
            "next_step": ((self.max_size,), torch.int8),
            "padding": ((self.max_size,), torch.uint8),
        }
        for name, (shape, dtype) in expected.items():
            value = state_dict[name]
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise ValueError(
                    f"checkpoint frame-id table {name!r} is {tuple(value.shape)} {value.dtype}, "
                    f"expected {shape} {dtype}"
                )
        exceptions = state_dict["exceptions"]
        if (
            exceptions.ndim != 2
            or exceptions.shape[1] != 2 * self.frame_stack
            or exceptions.dtype != torch.int32
        ):
            raise ValueError(
                f"checkpoint exception table is {tuple(exceptions.shape)} {exceptions.dtype}, "
                f"expected (n, {2 * self.frame_stack}) torch.int32"
            )
        pointers = state_dict["newest"][state_dict["padding"] == _EXCEPTION]
        if bool(((pointers < 0) | (pointers >= exceptions.shape[0])).any()):
            raise ValueError("checkpoint frame-id table points outside its exception table")
        self.newest = state_dict["newest"].clone()
        self.next_step = state_dict["next_step"].clone()
        self.padding = state_dict["padding"].clone()
        capacity = max(exceptions.shape[0], int(state_dict.get("exception_capacity", 0)))
        self.exceptions = torch.empty((capacity, 2 * self.frame_stack), dtype=torch.int32)
        self.exceptions[: exceptions.shape[0]] = exceptions
        self._num_exceptions = exceptions.shape[0]

    def load_verbatim(self, table: torch.Tensor) -> None:
        """Restores from a ``[max_size, 2F]`` ``int32`` table of ids (``-1`` rows unwritten).

        Raises:
            ValueError: the table has another shape or dtype.
        """
        if tuple(table.shape) != (self.max_size, 2 * self.frame_stack) or table.dtype != (
            torch.int32
        ):
            raise ValueError(
                f"checkpoint index table {tuple(table.shape)} {table.dtype} does not match "
                f"({self.max_size}, {2 * self.frame_stack}) torch.int32"
            )
        self.clear()
        written = torch.nonzero((table >= 0).all(1)).flatten()
        self.assign(written, table[written])
